"""What a model wants as input when the user gives no ``preprocess``: its size (any, or
one fixed size) and its normalisation, read from the model where it declares them.

Sources, in order: timm's ``pretrained_cfg`` (``input_size``, ``fixed_input_size``,
``mean``, ``std``, ``interpolation``), a torchvision detector's own ``transform`` (it
resizes and normalises inside: pixels go in as [0, 1]), torchvision's ``image_size``
attribute (ViT), and otherwise ImageNet's mean and std at the image's own size. A model
that fails at the image's size but works at the size it was made for (the declared
``input_size``, a Hugging Face ``config.image_size``, else 224×224, then the small sizes
of classroom datasets: :data:`COMMON_SIZES`) is given that size (the
:class:`~camwidget.Explainer` learns it by trying). A model whose first convolution
takes one channel (an MNIST-style network) is given the photo's luminance, normalised by
ImageNet's mean and std averaged over the channels (as timm does for one channel).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Sizes tried, after the one a model was made for, when it fails at an image's own
#: size: MNIST's 28, CIFAR's 32, then other sizes models are often made for.
COMMON_SIZES = ((28, 28), (32, 32), (64, 64), (96, 96), (128, 128), (256, 256), (299, 299))
_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ModelInput:
    """``size`` (H, W) the model requires, or None for any size; ``preferred`` the size it
    was made for (tried first when it fails at an image's size); ``mean`` and ``std`` per
    channel (their number: ``channels``, 3 or 1); ``resample`` the PIL filter for
    resizing; ``source`` where these came from, in words."""

    size: tuple[int, int] | None = None
    preferred: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resample: str = "bilinear"
    source: str = "ImageNet mean/std at the image's own size"

    @property
    def channels(self) -> int:
        """How many channels the model takes: 3 (RGB) or 1 (the luminance)."""
        return len(self.mean)

    def at_size(self, size: tuple[int, int], source: str) -> ModelInput:
        """The same normalisation at one fixed ``size``."""
        return replace(self, size=size, preferred=size, source=source)

    def __call__(self, rgb: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) -> float tensor (1, C, h, w): resized to ``size`` if fixed,
        then normalised."""
        return self.normalise(self.pixels(rgb))[None]

    def pixels(self, rgb: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) -> uint8 tensor (C, h, w), resized to ``size`` if fixed; one
        channel: the luminance (ITU-R 601, as PIL's ``L``)."""
        if self.size is not None and rgb.shape[:2] != self.size:
            resized = Image.fromarray(rgb).resize(self.size[::-1], _RESAMPLING[self.resample])
            rgb = np.asarray(resized)
        if self.channels == 1:
            return torch.from_numpy(np.array(Image.fromarray(rgb).convert("L")))[None]
        return torch.from_numpy(np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1)))

    def normalise(self, pixels: Tensor) -> Tensor:
        """uint8 (..., C, h, w) -> float32 in [0, 1], normalised by ``mean`` and ``std``,
        on the pixels' device."""
        mean, std = (
            torch.tensor(v, device=pixels.device).view(-1, 1, 1) for v in (self.mean, self.std)
        )
        return (pixels.float() / 255.0 - mean) / std


def model_input(model: nn.Module) -> ModelInput:
    """What ``model`` declares about its input (see the module's docstring)."""
    found = _declared(model)
    if _channels(model) != 1 or found.channels == 1:
        return found
    mean, std = (sum(v) / len(v) for v in (found.mean, found.std))
    source = f"{found.source}; one channel: the photo's luminance"
    return replace(found, mean=(mean,), std=(std,), source=source)


def _channels(model: nn.Module) -> int:
    """The channels the model's first convolution takes (3 where it has none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if first is None else first.in_channels


def _declared(model: nn.Module) -> ModelInput:
    """What ``model`` declares about its input, for three channels."""
    config = getattr(model, "pretrained_cfg", None)
    if isinstance(config, Mapping) and config.get("input_size"):
        size = tuple(config["input_size"][-2:])
        resample = str(config.get("interpolation") or "bilinear")
        return ModelInput(
            size=size if config.get("fixed_input_size") else None,
            preferred=size,
            mean=tuple(config.get("mean") or IMAGENET_MEAN),
            std=tuple(config.get("std") or IMAGENET_STD),
            resample=resample if resample in _RESAMPLING else "bilinear",
            source="the model's pretrained_cfg (timm)",
        )
    transform = getattr(model, "transform", None)
    if hasattr(transform, "image_mean") and hasattr(transform, "image_std"):
        return ModelInput(
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            source="the model resizes and normalises inside (torchvision detection)",
        )
    image_size = getattr(model, "image_size", None)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
        return ModelInput(size, size, source="the model's image_size (torchvision)")
    size = _size(getattr(getattr(model, "config", None), "image_size", None))
    if size is not None:  # tried first where the image's own size fails
        return ModelInput(preferred=size, source="ImageNet mean/std; config.image_size (HF)")
    return ModelInput()


def _size(value: object) -> tuple[int, int] | None:
    """A Hugging Face config's ``image_size`` (an int, or (H, W)) as (H, W)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        return int(value[0]), int(value[1])
    return None
