"""Pretrained models that work offline: ``model, preprocess, labels = zoo.load(name)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..errors import CamwidgetError
from . import efficientnet_lite

_MODELS = {"efficientnet_lite0": (efficientnet_lite.load, efficientnet_lite.preprocess)}


def names() -> list[str]:
    """Names :func:`load` accepts."""
    return list(_MODELS)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, from torchvision's weights metadata (offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def load(name: str = "efficientnet_lite0") -> tuple[nn.Module, Callable[..., Tensor], list[str]]:
    """(model in eval mode, preprocess, labels) of the pretrained model ``name``."""
    if name not in _MODELS:
        raise CamwidgetError(f"unknown model {name!r}: choose one of {', '.join(_MODELS)}")
    build, preprocess = _MODELS[name]
    return build(), preprocess, imagenet_labels()
