"""Every image classifier torchvision offers, with random weights, at the smallest input it
accepts: layers catalogued, the default layer and three others explained with Grad-CAM,
every map finite, the model unchanged and hook-free afterwards.

The results are written to test-artifacts/compatibility.md (the README's table).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import HOOK_DICTS

from camwidget import CamwidgetError, Explainer

MODELS = torchvision.models.list_models(module=torchvision.models)
SIZES = (32, 64, 96, 128, 160, 224, 299)
# The heaviest (by parameters or FLOPs at their smallest input): marked slow, run in CI.
HEAVY = {
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "regnet_y_128gf",
    "regnet_y_32gf",
    "regnet_x_32gf",
    "regnet_y_16gf",
    "regnet_x_16gf",
    "efficientnet_v2_l",
    "convnext_large",
    "swin_v2_b",
    "swin_b",
    "maxvit_t",
    "vit_b_16",
    "wide_resnet101_2",
    "resnext101_64x4d",
    "resnext101_32x8d",
}
ROWS: dict[str, tuple] = {}


def fingerprint(model: torch.nn.Module) -> tuple:
    """Everything explain() must leave as it was, cheaply: a float64 sum and sum of
    squares per tensor, training flags, requires_grad, .grad presence, hook counts."""
    tensors = tuple(
        (k, float(v.double().sum()), float(v.double().square().sum()))
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    )
    return (
        tensors,
        tuple(m.training for m in model.modules()),
        tuple((p.requires_grad, p.grad is None) for p in model.parameters()),
        tuple(len(getattr(m, d)) for m in model.modules() for d in HOOK_DICTS if hasattr(m, d)),
    )


def smallest_input(model: torch.nn.Module) -> int:
    for size in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return size
        except Exception:
            continue
    raise AssertionError(f"no input size in {SIZES} works")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS]
)
def test_any_torchvision_classifier(name):
    start = time.perf_counter()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet / inception warn about their init
        model = torchvision.models.get_model(name, weights=None).eval()
    size = smallest_input(model)
    before = fingerprint(model)
    ex = Explainer(model)
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(1))
    default = ex.explain(image)
    layers = [layer.name for layer in ex.layers]
    spatial = [layer.name for layer in ex.layers if layer.shape[1] * layer.shape[2] > 1]
    others = [n for n in spatial if n != default.layer] or [n for n in layers if n != default.layer]
    picks = [others[int(i)] for i in np.linspace(0, len(others) - 1, 3)] if others else []
    for explanation in [default] + [
        ex.explain(image, layer=layer) for layer in dict.fromkeys(picks)
    ]:
        assert explanation.heatmap.shape == (size, size)
        assert np.isfinite(explanation.raw).all() and np.isfinite(explanation.heatmap).all()
    assert fingerprint(model) == before
    seconds = time.perf_counter() - start
    ROWS[name] = (len(layers), default.layer, size, len(dict.fromkeys(picks)) + 1, seconds)


def test_write_compatibility_table():
    """The README's compatibility table, from the run above (a report, not a check)."""
    from pathlib import Path

    if not ROWS:
        pytest.skip("no model was run")
    lines = [
        "| model | layers found | default layer | input | maps checked | status |",
        "|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        if name in ROWS:
            count, default, size, checked, seconds = ROWS[name]
            lines.append(
                f"| {name} | {count} | `{default}` | {size}×{size} | {checked} | "
                f"ok ({seconds:.1f} s) |"
            )
        else:
            lines.append(f"| {name} | | | | | not run or failed |")
    out = Path(__file__).resolve().parents[1] / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "compatibility.md").write_text("\n".join(lines) + "\n")


def test_a_model_with_token_outputs_only_is_explained_in_words():
    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(3, 8)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):
            tokens = self.embed(x.flatten(2).transpose(1, 2))  # (N, HW, C): 3-D
            return self.head(tokens.mean(1))

    with pytest.raises(CamwidgetError, match="no layer whose output is a 4-D feature map"):
        Explainer(Tokens()).explain(torch.zeros(3, 8, 8))
