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
    expected = render.blend(np.asarray(photo), heatmap, "jet", 0.5)
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
    for args in (["--help"], ["render", "--help"], ["demo", "--help"]):
        result = run(*args)
        assert result.returncode == 0 and "usage: camwidget" in result.stdout
    assert "grace_hopper" in run("render", "--help").stdout


def test_demo_opens_jupyterlab_on_the_quickstart(monkeypatch):
    launched = {}

    def fake_call(command, cwd):
        launched.update(command=command, cwd=cwd)
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    assert cli.main(["demo", "--port", "8899"]) == 0
    command = launched["command"]
    assert command[:4] == [sys.executable, "-m", "jupyter", "lab"]
    assert command[4].endswith("notebooks/quickstart.ipynb") and "--port=8899" in command
    assert launched["cwd"].name == "notebooks"
