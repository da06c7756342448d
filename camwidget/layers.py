"""The layer catalogue: every module whose output is a feature map (N, C, H, W).

Layers are found by a real forward pass with hooks (see :mod:`camwidget.capture`),
never by guessing from class names, and listed in the order their outputs appear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .capture import Capture


@dataclass(frozen=True)
class LayerInfo:
    """One catalogued layer.

    ``name`` as in ``model.named_modules()``; ``kind`` the module's class name;
    ``shape`` (C, H, W) of its output for the current input; ``cam`` whether CAM
    applies here (the logits equal fc(GAP(output)) for the model's final nn.Linear).
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    cam: bool

    @property
    def label(self) -> str:
        """E.g. ``layer4.1 · BasicBlock · 512×7×7``."""
        return f"{self.name} · {self.kind} · {'×'.join(map(str, self.shape))}"


def catalogue(
    model: nn.Module, capture: Capture, known: dict[str, bool] | None = None
) -> list[LayerInfo]:
    """The layers of one forward pass, in the order their outputs appeared.

    ``known``: whether CAM applies, by layer name, from earlier passes (the structure
    decides it, not the image); layers not in it are checked and added to it.
    """
    known = {} if known is None else known
    classifier = final_linear(model, capture)
    applies: dict[int, bool] = {}  # by map: containers share their last module's map
    for name, activations in capture.activations.items():
        if name not in known and id(activations) not in applies:
            applies[id(activations)] = cam_applies(activations, capture.logits, classifier)
        known.setdefault(name, applies.get(id(activations), False))
    return [
        LayerInfo(
            name=name,
            kind=capture.kinds[name],
            shape=tuple(activations.shape[1:]),
            cam=known[name],
        )
        for name, activations in capture.activations.items()
    ]


def final_linear(model: nn.Module, capture: Capture) -> nn.Linear | None:
    """The last ``nn.Linear`` that ran in the captured forward, if any."""
    if capture.classifier is None:
        return None
    module = model.get_submodule(capture.classifier)
    return module if isinstance(module, nn.Linear) else None


@torch.no_grad()
def cam_applies(activations: Tensor, logits: Tensor, classifier: nn.Linear | None) -> bool:
    """Whether ``logits == classifier(GAP(activations))`` on this input, within tolerance.

    Checked in at least float32; the tolerance is relative to the largest logit, looser
    for 16-bit models.
    """
    if classifier is None or classifier.in_features != activations.shape[1]:
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


def default_layer(layers: list[LayerInfo]) -> str:
    """The last layer whose map has spatial size > 1 and is no larger than any map
    before it; the last layer if none is.

    The second condition skips an adaptive pool that upsamples a smaller map (VGG's
    7×7 average pool after 1×1 features at small inputs).
    """
    best, smallest = None, float("inf")
    for layer in layers:
        area = layer.shape[1] * layer.shape[2]
        if 1 < area <= smallest:
            best = layer.name
        smallest = min(smallest, area)
    return best or layers[-1].name
