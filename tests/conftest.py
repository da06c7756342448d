"""Shared fixtures: seeded torchvision models, a real photo, and model-state checks; and
the check that the tests leave no process of theirs running."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from camwidget import samples

# Hugging Face models are built from configs here: nothing may be downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)


#: Every process the tests start inherits this mark (servers, kernels, Ray, browsers).
MARK = "CAMWIDGET_TEST_RUN"
os.environ[MARK] = str(os.getpid())


def started_by_tests() -> dict[int, str]:
    """pid -> command line of each live process, other than this one, that carries this
    run's mark (Linux; elsewhere none are found)."""
    mark = f"{MARK}={os.getpid()}".encode()
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and mark in (proc / "environ").read_bytes().split(
                b"\0"
            ):
                found[int(proc.name)] = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, ValueError):  # ended meanwhile, or not ours to read
            continue
    return found


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """After every fixture has ended: fail the run if a process the tests started is
    still alive 10 s later (and end it)."""
    result = yield
    deadline = time.monotonic() + 10
    while (left := started_by_tests()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(
            f"{len(left)} processes started by the tests are still running:", red=True
        )
        for pid, command in left.items():
            reporter.write_line(f"  {pid}: {command[:200]}")
            with contextlib.suppress(OSError):  # it may have ended meanwhile
                os.kill(pid, signal.SIGKILL)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


def seeded(builder, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return builder(weights=None, **kwargs).eval()


@pytest.fixture(scope="session")
def resnet18() -> torch.nn.Module:
    return seeded(torchvision.models.resnet18)


@pytest.fixture(scope="session")
def vgg11() -> torch.nn.Module:
    return seeded(torchvision.models.vgg11)


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="session")
def photo_tensor(photo) -> torch.Tensor:
    """The photo at 224×224 with ImageNet normalisation, (3, 224, 224)."""
    rgb = np.asarray(photo.resize((224, 224)), dtype=np.float32) / 255.0
    rgb = (rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))


@dataclass
class ModelState:
    tensors: dict[str, torch.Tensor]
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    hooks: dict[tuple[str, str], int]
    grads: dict[str, bool]
    own_forwards: set[str]  # modules whose forward is an attribute of their own

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelState:
        return cls(
            tensors={k: v.detach().clone() for k, v in model.state_dict().items()},
            training={n: m.training for n, m in model.named_modules()},
            requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
            hooks={
                (n, d): len(getattr(m, d))
                for n, m in model.named_modules()
                for d in HOOK_DICTS
                if hasattr(m, d)
            },
            grads={n: p.grad is not None for n, p in model.named_parameters()},
            own_forwards={n for n, m in model.named_modules() if "forward" in vars(m)},
        )

    def assert_same(self, model: torch.nn.Module) -> None:
        now = ModelState.of(model)
        assert now.tensors.keys() == self.tensors.keys()
        for key, value in self.tensors.items():
            assert torch.equal(now.tensors[key], value), f"{key} changed"
        assert now.training == self.training
        assert now.requires_grad == self.requires_grad
        assert now.hooks == self.hooks
        assert now.grads == self.grads
        assert now.own_forwards == self.own_forwards


PHOTO_CLASSES = samples.FOLDER_CLASSES


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """A labelled folder (one sub-folder per class), each photo also turned and mirrored."""
    return samples.labelled_folder(tmp_path_factory.mktemp("photos"))


def on_page(view) -> tuple:
    """What a panel view's widgets hold for the page: the photo's, the map's and the
    marks' bytes, the colour filter and the style sheet (the opacity)."""
    images = (bytes(view.photo.value), bytes(view.map.value), bytes(view.marks.value))
    return (*images, view.colours.value, view.sheet.value)


def filter_palette(markup: str) -> np.ndarray:
    """The (256, 4) RGBA palette that a view's SVG filters apply (one filter, or a cut
    and a tint one after the other): their tables for R, G, B and the coverage, each
    value times 255."""
    import re

    tables = dict(re.findall(r'<feFunc([RGBA]) type="table" tableValues="([^"]+)"', markup))
    assert sorted(tables) == ["A", "B", "G", "R"], markup[:200]
    values = [tables[c].split() for c in "RGBA"]
    return np.rint(np.array(values, np.float64).T * 255)


def page_legend(view) -> np.ndarray:
    """The colour legend a browser shows for a view: its bar (a colorbar, or a grey
    ramp that the view's tint filter colours, as its style sheet says)."""
    import io

    bar = np.asarray(Image.open(io.BytesIO(bytes(view.bar.value))).convert("RGB"))
    if f"camwidget-bar {{filter: url(#{view.name}-tint)}}" not in view.sheet.value:
        return bar
    return filter_palette(view.colours.value)[bar[:, :, 0], :3].astype(np.uint8)


def page_picture(view, photo: np.ndarray | None = None) -> np.ndarray:
    """The picture a browser composes from a view's widgets: the photo (its JPEG, or
    ``photo``), the map (its levels as a grey PNG, coloured by the SVG filter's tables)
    over it at the sheet's opacity, the marks on top."""
    import io
    import re

    if photo is None:
        photo = np.asarray(Image.open(io.BytesIO(view.photo.value)).convert("RGB"))
    levels = np.asarray(Image.open(io.BytesIO(view.map.value)))  # grey: the map's levels
    layer = filter_palette(view.colours.value)[levels].astype(np.float32)
    alpha = float(re.search(r"opacity: ([0-9.]+)", view.sheet.value).group(1))
    weight = layer[:, :, 3:] / 255.0 * alpha
    out = photo.astype(np.float32) * (1.0 - weight) + layer[:, :, :3] * weight
    if view.marks.layout.display != "none":
        marks = np.asarray(Image.open(io.BytesIO(view.marks.value)).convert("RGBA"))
        out[marks[:, :, 3] == 255] = 255.0
    return np.rint(out).astype(np.uint8)


def assert_page_shows(view, expected: np.ndarray, photo: np.ndarray | None = None) -> None:
    """The view's picture is ``expected`` exactly, and so is what the page composes from
    the widgets (up to rounding): the photo sent is ``photo`` (default: the view's) as
    JPEG, the map and the marks over it compose ``expected``."""
    from camwidget import render

    photo = view.rgb if photo is None else photo
    np.testing.assert_array_equal(view.frame, expected)
    assert bytes(view.photo.value) == render.encode(photo, "jpeg")
    error = np.abs(page_picture(view, photo).astype(np.int16) - expected)
    assert error.max() <= 1, f"the page differs by up to {error.max()}"
