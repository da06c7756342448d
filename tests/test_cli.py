"""The camwidget command: PNGs for a path, a sample and no argument; errors in one line."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camwidget import Explainer, cli, render, samples, zoo


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camwidget.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_render_default_writes_the_overlay_with_a_caption(tmp_path):
    result = run("render", "--out", str(tmp_path / "cam.png"))
    assert result.returncode == 0, result.stderr
    assert "military uniform" in result.stdout
    picture = np.asarray(Image.open(tmp_path / "cam.png"))
    photo = samples.load("grace_hopper")
    assert picture.shape[1] == photo.width and picture.shape[0] > photo.height
    model, preprocess, labels = zoo.load()
    heatmap = Explainer(model, preprocess, labels).explain(photo).heatmap
    expected = render.blend(np.asarray(photo), heatmap, "viridis", 0.5)  # the default
    assert np.abs(picture[: photo.height].astype(int) - expected).max() <= 1
    below = picture[photo.height : photo.height + 14]  # the panel's legend, as wide
    np.testing.assert_array_equal(below, render.legend("viridis", photo.width, 14))


def test_render_leaves_out_the_legend_when_told(tmp_path):
    out = tmp_path / "cam.png"
    assert (
        cli.main(["render", "chelsea", "--colormap", "magma", "--no-legend", "--out", str(out)])
        == 0
    )
    picture = np.asarray(Image.open(out))
    height = samples.load("chelsea").height
    assert (picture[height : height + 5] == 255).all()  # the caption's white margin at once
    out = tmp_path / "legend.png"
    assert cli.main(["render", "chelsea", "--colormap", "magma", "--out", str(out)]) == 0
    bar = np.asarray(Image.open(out))[height : height + 14]
    np.testing.assert_array_equal(bar, render.legend("magma", picture.shape[1], 14))
    assert np.asarray(Image.open(out)).shape[0] > picture.shape[0] + 14  # and its words


def test_render_a_path_and_a_sample_with_options(tmp_path):
    path = tmp_path / "cup.jpg"
    samples.load("coffee").save(path)
    out = tmp_path / "a.png"
    assert (
        cli.main(
            [
                "render",
                str(path),
                "--target",
                "cup",
                "--layer",
                "blocks.12",
                "--colormap",
                "viridis",
                "--alpha",
                "0.7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert Image.open(out).format == "PNG" and Image.open(out).width == 600
    out = tmp_path / "b.png"
    assert (
        cli.main(
            [
                "render",
                "chelsea",
                "--method",
                "cam",
                "--layer",
                "head",
                "--target",
                "285",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert Image.open(out).width == samples.load("chelsea").width


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "missing.jpg"], "'missing.jpg' is neither an image file nor a sample"),
        (["render", "dog"], "samples: grace_hopper, chelsea"),
        (["render", "--target", "unicornfish"], "unknown class 'unicornfish'"),
        (["render", "--target", "espres"], "ambiguous: it matches espresso maker (550)"),
        (["render", "--layer", "layer4"], "unknown layer 'layer4'"),
        (["render", "--method", "cam", "--layer", "blocks.3"], "CAM does not apply"),
        (["render", "--colormap", "rainbowz"], "unknown colormap 'rainbowz'"),
        (["render", "--out", "no/such/dir/x.png"], "folder no/such/dir does not exist"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_corrupt_image_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    result = run("render", "bad.png", cwd=tmp_path)
    assert result.returncode == 1 and "could not read" in result.stderr
    assert "Traceback" not in result.stderr


def test_argparse_errors_and_help():
    assert run("render", "--alpha", "lots").returncode == 2
    assert run("render", "--method", "magic").returncode == 2
    for args in (["--help"], ["render", "--help"], ["demo", "--help"], ["app", "--help"]):
        result = run(*args)
        assert result.returncode == 0 and "usage: camwidget" in result.stdout
    assert "grace_hopper" in run("render", "--help").stdout


def test_demo_opens_jupyterlab_on_a_copy_of_the_shipped_quickstart(monkeypatch, tmp_path):
    launched = {}

    def fake_serve(command, cwd):
        launched.update(command=command, cwd=cwd)
        return 0

    monkeypatch.setattr(cli, "_serve", fake_serve)
    folder = tmp_path / "lesson"
    assert cli.main(["demo", "--port", "8899", "--dir", str(folder)]) == 0
    command = launched["command"]
    assert command[:5] == [sys.executable, "-m", "jupyter", "lab", "quickstart.ipynb"]
    assert "--port=8899" in command and launched["cwd"] == folder
    shipped = cli.NOTEBOOKS / "quickstart.ipynb"
    assert (folder / "quickstart.ipynb").read_bytes() == shipped.read_bytes()
    (folder / "quickstart.ipynb").write_text("{}")  # the user's edits are kept
    cli.main(["demo", "--dir", str(folder)])
    assert (folder / "quickstart.ipynb").read_text() == "{}"


def _launched(monkeypatch, *args: str) -> dict:
    launched = {}

    def fake_serve(command, env):
        launched.update(command=command, env=env)
        return 0

    monkeypatch.setattr(cli, "_serve", fake_serve)
    assert cli.main(["app", *args]) == 0
    return launched


def test_app_serves_every_student_from_one_solara_process(monkeypatch):
    launched = _launched(
        monkeypatch, "--port", "9001", "--ip", "0.0.0.0", "--no-browser", "--idle", "2",
        "--model", "torchvision:resnet18", "--random-weights", "--slow-jobs", "3",
    )  # fmt: skip
    command, env = launched["command"], launched["env"]
    assert command[:3] == [sys.executable, "-m", "camwidget.widget.solara_server"]
    assert {"9001", "0.0.0.0"} <= set(command) and "--open" not in command
    assert env["SOLARA_KERNEL_CULL_TIMEOUT"] == "120s"
    assert env["CAMWIDGET_MODEL"] == "torchvision:resnet18"
    assert env["CAMWIDGET_RANDOM_WEIGHTS"] == "1" and env["CAMWIDGET_SLOW_JOBS"] == "3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet50"], "unknown model 'resnet50': give efficientnet_lite0"),
        (["--model", "torchvision:resnet5"], "torchvision has no model 'resnet5'"),
        (["--images", "/no/such/folder"], "--images /no/such/folder: no such folder"),
        (["--labels", "/no/such/labels.txt"], "--labels /no/such/labels.txt: cannot read it"),
        (["--sample", "nothing"], "no sample 'nothing'"),
    ],
)
def test_app_refuses_what_it_cannot_serve(args, message, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_serve", lambda command, env: pytest.fail("served"))
    assert cli.main(["app", *args]) == 1
    assert message in capsys.readouterr().err


def test_app_serves_the_shipped_notebook_with_voila(monkeypatch):
    launched = _launched(
        monkeypatch, "--server", "voila", "--port", "9001", "--ip", "0.0.0.0", "--no-browser"
    )
    command = launched["command"]
    assert command[:3] == [sys.executable, "-m", "voila"]
    assert (
        command[3] == str(cli.NOTEBOOKS / "app.ipynb")
        and cli.NOTEBOOKS.joinpath("app.ipynb").is_file()
    )
    assert {"--port=9001", "--Voila.ip=0.0.0.0", "--no-browser"} <= set(command)
    assert launched["env"]["CAMWIDGET_MODEL"] == "efficientnet_lite0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answered(url: str, log: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until ``url`` answers (its body read: Voila runs the page's notebook)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=120).read()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer: {log.read_text()}")


def _stopped_leaves_nothing(
    command: list[str], start_kernel, stop: int, tmp_path, kernels: bool = True
) -> None:
    """Start ``command``, have a kernel started (``start_kernel(port, log)``), send
    ``stop`` to the command's process: it, its server and the kernel are gone in 10 s
    (``kernels=False``: a server that runs no kernel processes)."""
    psutil = pytest.importorskip("psutil")
    port, log = _free_port(), tmp_path / "server.log"
    env = {**os.environ, "BROWSER": "true"}  # no browser is opened
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=tmp_path, stdout=out, stderr=out, env=env
        )
    family = [psutil.Process(process.pid)]
    try:
        start_kernel(port, log, process)
        family += family[0].children(recursive=True)
        started = [p for p in family if "ipykernel" in " ".join(p.cmdline())]
        assert bool(started) == kernels, f"kernel processes: {started}"
        process.send_signal(stop)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"still running: {[' '.join(p.cmdline())[:80] for p in alive]}"
    finally:  # whatever failed: nothing of it is left running
        with contextlib.suppress(psutil.NoSuchProcess):
            family += family[0].children(recursive=True)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("server", ["voila", "solara"])
def test_a_stopped_app_takes_its_server_and_kernels_along(stop, server, tmp_path):
    command = [sys.executable, "-m", "camwidget.cli", "app", "--no-browser", "--server", server]

    def served(port, log, process):  # Voila starts a kernel for the page and runs it
        _answered(f"http://127.0.0.1:{port}/", log, process)

    _stopped_leaves_nothing(command, served, stop, tmp_path, kernels=server == "voila")


def test_a_stopped_demo_takes_its_server_and_kernels_along(tmp_path):
    command = [sys.executable, "-m", "camwidget.cli", "demo", "--dir", str(tmp_path / "demo")]

    def kernel_started(port, log, process):
        _answered(f"http://127.0.0.1:{port}/api", log, process)  # no token needed
        token = re.search(r"token=([0-9a-f]+)", log.read_text())
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/kernels",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"token {token.group(1) if token else ''}"},
        )
        urllib.request.urlopen(request, timeout=60).read()
        time.sleep(2)  # the kernel's process is up

    _stopped_leaves_nothing(command, kernel_started, signal.SIGTERM, tmp_path)
