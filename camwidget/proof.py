"""Layouts proven, not guessed: a module's output is a feature map only where it lies on
a grid over the input at one stride at two input sizes of different aspect, with the
same channels. One shape pass at a second size per model settles what one size cannot:
(N, 56, 56, 64) is channels-last, not 56 channels on a 56×64 grid; a pooled (N, C, 1)
whose C happens to be a square is no token grid."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional

from . import layouts
from .capture import Capture, called, guarded
from .inputs import model_input


def other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A second input size, taller and narrower than ``size`` (multiples of 8)."""
    height, width = size
    return max(16, 8 * round(1.25 * height / 8)), max(16, 8 * round(0.75 * width / 8))


@torch.no_grad()
def output_shapes(model: nn.Module, inputs: Tensor) -> dict[str, tuple[int, ...]]:
    """The shape of each module's first output (a floating 3-D or 4-D tensor) on
    ``inputs``, from one forward without autograd."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, Tensor) and output.dim() in (3, 4):
                shapes.setdefault(name, tuple(output.shape))

        return record

    with guarded(model) as handles:
        handles.extend(
            module.register_forward_hook(hook(name))
            for name, module in model.named_modules()
            if name
        )
        called(model, inputs)
    return shapes


def prove(model: nn.Module, inputs: Tensor, capture: Capture) -> Mapping[str, str] | None:
    """What a second size says of ``capture``'s maps (a pass over ``inputs``; the second
    size is one image's pass): by layer name, the kind each is (of
    :data:`camwidget.layouts.KINDS`), or why it is no map; only where that differs from
    the capture. None where nothing can be proven: the
    model takes one input size, or resizes inside (no map follows the input)."""
    if model_input(model).size is not None:
        return None  # it declares one input size: there is no second
    if getattr(getattr(model, "transform", None), "image_mean", None) is not None:
        return None  # torchvision's detectors resize their input themselves
    sizes = (tuple(inputs.shape[-2:]), other_size(tuple(inputs.shape[-2:])))
    other = functional.interpolate(inputs[:1].detach(), size=sizes[1], mode="bilinear")
    try:
        shapes = output_shapes(model, other)
    except Exception:
        return None
    verdicts = {}
    for name, kept in capture.activations.items():
        layout = capture.layouts[name]
        if layout.kind == "custom":
            continue
        both = ((1, *kept.shape[1:]), shapes.get(name))  # one image of each size
        kind = both[1] and layouts.proven(both, sizes, 1, layout)
        verdicts[name] = kind or (
            f"its grid does not follow the input: {both[0]} for a {sizes[0][0]}×"
            f"{sizes[0][1]} input, {both[1]} for {sizes[1][0]}×{sizes[1][1]}"
        )
    if not any(verdict in layouts.KINDS for verdict in verdicts.values()):
        return None  # no map follows the input: it is resized inside
    return {
        name: verdict for name, verdict in verdicts.items() if verdict != capture.layouts[name].kind
    }
