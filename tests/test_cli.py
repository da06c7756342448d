"""The camwidget command: PNGs for a path, a sample and no argument; errors in one line."""

from __future__ import annotations

import subprocess
import sys

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

    def fake_call(command, cwd):
        launched.update(command=command, cwd=cwd)
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_call)
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


def test_app_serves_the_shipped_notebook_with_voila(monkeypatch):
    launched = {}

    def fake_call(command, env):
        launched.update(command=command, env=env)
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    assert cli.main(["app", "--port", "9001", "--ip", "0.0.0.0", "--no-browser"]) == 0
    command = launched["command"]
    assert command[:3] == [sys.executable, "-m", "voila"]
    assert (
        command[3] == str(cli.NOTEBOOKS / "app.ipynb")
        and cli.NOTEBOOKS.joinpath("app.ipynb").is_file()
    )
    assert {"--port=9001", "--Voila.ip=0.0.0.0", "--no-browser"} <= set(command)
    assert launched["env"]["CAMWIDGET_MODEL"] == "efficientnet_lite0"
