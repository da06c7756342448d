"""The compatibility matrices' harness: one model, random weights, a 224×224 photo (random
pixels, resized to the model's own input size where it takes only one)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from conftest import HOOK_DICTS

from camwidget import Explainer
from camwidget.layers import final_grid

SIZE = 224
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@dataclass
class Row:
    layers: int
    layouts: str
    default: str
    checked: int
    seconds: float


def with_live_head(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights, except that zero-initialised linear layers (ViT and Mixer heads)
    get small seeded ones: a head of zeros makes every gradient zero."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(0.0, 0.02, generator=generator)
    return model.eval()


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


def check(model: torch.nn.Module) -> Row:
    """Catalogue ``model`` at 224×224; its default layer must lie on the final grid and
    show something (a Grad-CAM map not all zero for one of the top-5 classes); the
    default and three layers spread over the depth are explained, every map finite; the
    model is left exactly as it was."""
    start = time.perf_counter()
    model = with_live_head(model)
    before = fingerprint(model)
    ex = Explainer(model)
    # pixels, not a tensor: the model's own input size and normalisation apply
    image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    default = ex.explain(image)
    layers = ex.layers
    assert default.layer in final_grid(layers), f"{default.layer} is not on the final grid"
    top = [index for index, _, _ in ex.predict(image, k=5)]
    assert any(ex.explain(image, target=t).raw.max() > 0 for t in top), (
        f"the default layer {default.layer} shows nothing for the top-5 classes"
    )
    spatial = [i.name for i in layers if i.shape[1] * i.shape[2] > 1 and i.name != default.layer]
    picks = list(dict.fromkeys(spatial[int(i)] for i in np.linspace(0, len(spatial) - 1, 3)))
    for explanation in [default, *(ex.explain(image, layer=name) for name in picks)]:
        assert explanation.heatmap.shape == (SIZE, SIZE)
        assert np.isfinite(explanation.raw).all() and np.isfinite(explanation.heatmap).all()
    assert fingerprint(model) == before
    counts = Counter(info.layout for info in layers)
    return Row(
        layers=len(layers),
        layouts=", ".join(f"{n} {kind}" for kind, n in counts.most_common()),
        default=ex.layer(default.layer).label,
        checked=len(picks) + 1,
        seconds=time.perf_counter() - start,
    )


def write_table(path: str, names: list[str], rows: dict[str, Row], failures: dict[str, str]):
    """A markdown table of the matrix, one line per model, with the reason for each
    model that does not work."""
    lines = [
        "| model | layers (layouts) | default layer | maps checked | status |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        if name in rows:
            row = rows[name]
            lines.append(
                f"| {name} | {row.layers} ({row.layouts}) | `{row.default}` | {row.checked} | "
                f"ok ({row.seconds:.1f} s) |"
            )
        else:
            lines.append(f"| {name} | | | | {failures.get(name, 'not run')} |")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / path).write_text("\n".join(lines) + "\n")
