"""The layer catalogue: every module whose output is a feature map, in any layout.

Layers are found by a real forward pass with hooks (see :mod:`camwidget.capture`),
never by guessing from class names, and listed in the order their outputs appear.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from . import capture as capture_
from .capture import Capture
from .errors import CamwidgetError


@dataclass(frozen=True)
class LayerInfo:
    """One catalogued layer.

    ``name`` as in ``model.named_modules()``; ``kind`` the module's class name;
    ``shape`` (C, h, w) of its map for the current input; ``cam`` whether CAM applies
    here (the logits equal fc(GAP(map)) for the model's final nn.Linear); ``layout``
    how the output lies on its grid: ``"nchw"``, ``"nhwc"``, ``"tokens"`` or
    ``"custom"`` (see :mod:`camwidget.layouts`).
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    cam: bool
    layout: str = "nchw"

    @property
    def label(self) -> str:
        """E.g. ``layer4.1 · BasicBlock · 512×7×7`` or
        ``blocks.11.norm1 · LayerNorm · tokens · 192×14×14``."""
        layout = "" if self.layout == "nchw" else f" · {self.layout}"
        return f"{self.name} · {self.kind}{layout} · {'×'.join(map(str, self.shape))}"


def catalogue(
    model: nn.Module, capture: Capture, known: dict[str, bool] | None = None
) -> list[LayerInfo]:
    """The layers of one forward pass, in the order their outputs appeared.

    ``known``: whether CAM applies, by layer name, from earlier passes (the structure
    decides it, not the image); layers not in it are checked and added to it.
    """
    known = {} if known is None else known
    classifier = final_linear(model, capture)
    maps = {name: capture.layouts[name].to_nchw(a) for name, a in capture.activations.items()}
    applies: dict[int, bool] = {}  # by map: containers share their last module's map
    for name, activations in capture.activations.items():
        if name not in known and id(activations) not in applies:
            applies[id(activations)] = cam_applies(maps[name], capture.logits, classifier)
        known.setdefault(name, applies.get(id(activations), False))
    return [
        LayerInfo(
            name=name,
            kind=capture.kinds[name],
            shape=tuple(maps[name].shape[1:]),
            cam=known[name],
            layout=capture.layouts[name].kind,
        )
        for name in capture.activations
    ]


def final_linear(model: nn.Module, capture: Capture) -> nn.Linear | None:
    """The last ``nn.Linear`` that ran in the captured forward, if any."""
    if capture.classifier is None:
        return None
    module = model.get_submodule(capture.classifier)
    return module if isinstance(module, nn.Linear) else None


@torch.no_grad()
def cam_applies(activations: Tensor, logits: Tensor | None, classifier: nn.Linear | None) -> bool:
    """Whether ``logits == classifier(GAP(activations))`` on this input, within tolerance
    (never for a model that is not a classifier: ``logits`` None).

    Checked in at least float32; the tolerance is relative to the largest logit, looser
    for 16-bit models.
    """
    if logits is None or classifier is None or classifier.in_features != activations.shape[1]:
        return False
    if classifier.out_features != logits.shape[1]:
        return False
    dtype = torch.promote_types(activations.dtype, torch.float32)
    pooled = activations.detach().to(dtype).mean(dim=(2, 3))
    weight = classifier.weight.detach().to(dtype)
    bias = None if classifier.bias is None else classifier.bias.detach().to(dtype)
    predicted = torch.nn.functional.linear(pooled, weight, bias)
    expected = logits.detach().to(dtype)
    tolerance = 1e-4 if logits.dtype in (torch.float32, torch.float64) else 3e-2
    scale = max(1.0, float(expected.abs().max()))
    return bool((predicted - expected).abs().max() <= tolerance * scale)


def final_grid(layers: list[LayerInfo]) -> list[str]:
    """The layers on the model's final grid, in execution order: the grid of the last
    map with spatial size > 1 that is no larger than the map before it (which skips an
    adaptive pool that upsamples a smaller map, as VGG's at small inputs); the last
    layer if no map has spatial size > 1."""
    areas = [layer.shape[1] * layer.shape[2] for layer in layers]
    for index in reversed(range(len(layers))):
        if areas[index] > 1 and (index == 0 or areas[index] <= areas[index - 1]):
            grid = layers[index].shape[1:]
            return [layer.name for layer in layers if layer.shape[1:] == grid]
    return [layers[-1].name]


def default_layer(layers: list[LayerInfo], capture: Capture, score: Callable[[], Tensor]) -> str:
    """The layer to show first.

    A model with a ``backbone`` (torchvision's segmentation and detection models): the
    last map of the backbone (of its ``body``, before a feature pyramid), which feeds
    every head and every pyramid level, so it explains any region or box. Otherwise the
    last layer on the final grid whose gradient of ``score()`` (the model's top answer)
    is not identically zero on the grid, and which is not the dense output itself (a
    segmentation head's class scores); the last one on it if all are. In a class-token
    ViT the last block's output reaches the logits only through the class token, so its
    grid has zero gradient: the default is then inside that block, at its first norm
    (``blocks.11.norm1``, ``ln_1``, ``layernorm_before``: where the field's guides point
    Grad-CAM, the tokens every projection of the attention reads) rather than at one of
    those projections. The backward goes only as deep as needed: the last 8 candidates,
    then 32, then all.
    """
    for prefix in ("backbone.body.", "backbone."):
        inside = [layer.name for layer in layers if layer.name.startswith(prefix)]
        if inside:
            return inside[-1]
    candidates = final_grid(layers)
    value = score()
    for depth in (8, 32, len(candidates)):
        names = candidates[-depth:]
        grads = capture_.backward(capture, value, names)
        for name in reversed(names):
            shown = capture.layouts[name].to_nchw(grads[name]).abs().amax() > 0
            if shown and not _is_output(capture, name):
                return _block_norm(layers, candidates, name) or name
        if depth >= len(candidates):
            break
    return candidates[-1]


def _is_output(capture: Capture, name: str) -> bool:
    """Whether the map of ``name`` is the model's dense output itself (a segmentation
    head's class scores: a map of them would only reweight the scores it explains)."""
    output, kept = capture.output, capture.activations[name]
    return (
        isinstance(output, Tensor)
        and output.dim() == 4
        and kept.shape == output.shape
        and torch.equal(kept.detach(), output.detach())
    )


def _block_norm(layers: list[LayerInfo], names: list[str], found: str) -> str | None:
    """Where ``found`` is a linear projection of tokens: the first layer norm of the
    block holding it (the nearest enclosing module that has one before it among
    ``names``), else None."""
    kinds = {layer.name: layer for layer in layers}
    if kinds[found].kind != "Linear" or kinds[found].layout != "tokens":
        return None
    before = names[: names.index(found)]
    parts = found.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        block = ".".join(parts[:depth]) + "."
        norms = [n for n in before if n.startswith(block) and kinds[n].kind == "LayerNorm"]
        if norms:
            return norms[0]
    return None


@dataclass(frozen=True)
class Listing:
    """A layer list and the pass it came from."""

    layers: list[LayerInfo]
    capture: Capture

    @cached_property
    def by_name(self) -> dict[str, LayerInfo]:
        return {info.name: info for info in self.layers}

    def find(self, name: str) -> LayerInfo:
        """The layer ``name``, or an error in words naming close matches."""
        if name in self.by_name:
            return self.by_name[name]
        skipped = self.capture.skipped
        if name in skipped:
            raise CamwidgetError(f"layer {name!r} is not offered: {skipped[name]}")
        names = list(self.by_name)
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise CamwidgetError(
            f"unknown layer {name!r}.{hint} The {len(names)} layers with a feature map "
            f"are: {', '.join(names)}"
        )


class Catalogues:
    """An explainer's layer lists: one per set of map names, shapes and layouts (another
    image of the same size reuses its list), whether CAM applies by layer (checked once),
    and the default layer by the model's final grid."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._cam: dict[str, bool] = {}
        self._latest: tuple[tuple, list[LayerInfo]] = ((), [])
        self._defaults: dict[tuple[str, ...], str] = {}

    def of(self, capture: Capture) -> list[LayerInfo]:
        """The layers of ``capture``: the latest list again where the pass kept the same
        maps at the same shapes, else a new list."""
        maps, layouts, kinds = capture.activations, capture.layouts, capture.kinds
        key = tuple((n, a.shape, layouts[n], kinds[n]) for n, a in maps.items())
        if key != self._latest[0]:
            self._latest = (key, catalogue(self.model, capture, self._cam))
        return self._latest[1]

    def default(self, listing: Listing, score: Callable[[], Tensor]) -> str:
        """:func:`default_layer` of ``listing``, found once per final grid."""
        key = tuple(final_grid(listing.layers))
        if key not in self._defaults:
            self._defaults[key] = default_layer(listing.layers, listing.capture, score)
        return self._defaults[key]
