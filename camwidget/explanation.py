"""What the engine hands out: an image made ready for the model, and an explanation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import images, methods, outputs, render
from .framing import Frame
from .labels import unnamed
from .targets import Box, Class, Region, Target, describe

#: Methods whose channel weights are the gradient averaged over the grid.
AVERAGING = ("gradcam", "xgradcam")


@dataclass(frozen=True)
class PreparedImage:
    """An image made ready for the model.

    ``inputs``: the model input (1, C, h, w); ``size``: (H, W) of the image, the size
    of every heatmap; ``notes``: what was done to the image on the way, in words;
    ``source``: the RGB array, or the input tensor itself; ``frame``: the part of the
    image the input covers, where a preprocess crops or pads it (None: all of it).
    """

    inputs: Tensor
    size: tuple[int, int]
    notes: tuple[str, ...] = ()
    source: np.ndarray | Tensor | None = field(default=None, repr=False)
    frame: Frame | None = None

    @cached_property
    def key(self) -> str:
        """A hash of ``inputs``, what the caches know the image by; computed when first
        asked for (a batch that caches nothing never pays for it, nor for the copy of a
        GPU tensor to the CPU that it needs)."""
        values = self.inputs.detach().to("cpu", torch.float32).contiguous()
        return hashlib.sha256(values.numpy().tobytes()).hexdigest()[:32]  # SHA-NI: fast

    @cached_property
    def rgb(self) -> np.ndarray:
        """uint8 (H, W, 3) at the image's own size: what the panel shows (a tensor
        input is shown as its min-max stretch)."""
        if isinstance(self.source, np.ndarray):
            return self.source
        return images.to_rgb(self.source if self.source is not None else self.inputs)


@dataclass(frozen=True)
class Explanation:
    """One explained (image, layer, target, method).

    ``raw``: the method's map (h', w') at feature resolution, as its paper defines it;
    ``size``: (H, W) of the image; ``target``: the class index for a class of a
    classifier, else the target itself (see :mod:`camwidget.targets`); ``score``: the
    target's value (a class's logit); ``label``: the target in words; ``probability``:
    a class's probability (the explainer's activation), None for other targets;
    ``timings``: milliseconds spent on this call in ``forward``, ``backward`` and
    ``map`` (0 where a cache answered); ``region``: for a region target, its mask (H, W)
    at the image's size; ``box``: for a box target, (x1, y1, x2, y2) in the image's
    pixels. Signed pixel-level methods: ``raw`` is the attribution summed over the
    colour channels, (h, w) at the model input's size; ``attribution`` the full
    (3, h, w) (None for the other methods). ``frame``: the part of the image the model
    saw, where its preprocess cropped or padded it (None: all of it); the heatmaps are
    0 beyond it. ``same_scores``: where every class of a classifier scored the same
    for this image (nothing tells them apart), the number of classes; else 0.
    """

    raw: np.ndarray
    size: tuple[int, int]
    layer: str
    target: int | Target
    method: str
    score: float
    label: str
    probability: float | None
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)
    region: np.ndarray | None = field(default=None, compare=False, repr=False)
    box: tuple[float, float, float, float] | None = None
    attribution: np.ndarray | None = field(default=None, compare=False, repr=False)
    frame: Frame | None = None
    same_scores: int = 0

    @property
    def index_text(self) -> str:
        """The class index to show beside ``label``, e.g. " (281)"; empty for a target
        that is no class, and for a class the label names by its index alone."""
        if not isinstance(self.target, int) or self.label == unnamed(self.target):
            return ""
        return f" ({self.target})"

    @property
    def title(self) -> str:
        """The method as its paper writes it, e.g. ``Grad-CAM``."""
        return methods.get(self.method).title

    @cached_property
    def heatmap(self) -> np.ndarray:
        """float32 (H, W) in [0, 1]: ``raw`` upsampled to the image's size, normalised."""
        return self.heatmap_at(self.size)

    def heatmap_at(self, size: tuple[int, int]) -> np.ndarray:
        """The heatmap at another (H, W), e.g. the panel's display size. A signed map
        (see :attr:`Method.signed`) shows its positive part, divided by its maximum (0
        stays 0)."""
        resized = render.upsample(self.raw, size, self.frame)
        if not methods.get(self.method).signed:
            return self._framed(render.normalise(resized))
        return self._framed(_by_largest(np.maximum(resized, 0.0)))

    @cached_property
    def heatmap_signed(self) -> np.ndarray:
        """float32 (H, W) in [-1, 1]: ``raw`` at the image's size divided by its largest
        magnitude, so that 0 stays 0 (negative evidence below, positive above)."""
        return self.heatmap_signed_at(self.size)

    def heatmap_signed_at(self, size: tuple[int, int]) -> np.ndarray:
        """The signed heatmap at another (H, W)."""
        return self._framed(_by_largest(render.upsample(self.raw, size, self.frame)))

    def _framed(self, heat: np.ndarray) -> np.ndarray:
        """``heat`` with 0 beyond the frame (where the model saw nothing)."""
        if self.frame is not None:
            heat[~render.inside(heat.shape, self.frame)] = 0.0
        return heat

    def legend(self, signed: bool = False) -> tuple[float | None, str]:
        """Where 0 lies on the colour legend (None: at its low end) and what its ends
        mean; ``signed``: a pixel-level map shown from -1 to 1."""
        method = methods.get(self.method)
        if signed:
            return 0.5, "against (blue) ← 0 → for the target (red)"
        if method.signed:
            return None, "0 (no evidence) → high positive evidence"
        if method.rectified:
            return None, "0 (no evidence) → high evidence"
        low, high = float(self.raw.min()), float(self.raw.max())
        if low < 0 < high:
            return -low / (high - low), "negative ← 0 → positive"
        return None, "low → high"

    @property
    def message(self) -> str | None:
        """A remark in words when the map shows nothing (no positive evidence, constant)."""
        raw, method = self.raw, methods.get(self.method)
        if not np.isfinite(raw).all():
            return f"the map at {self.layer} is not finite: the model produced NaN or inf"
        empty = method.rectified and raw.max() <= 0
        constant = raw.max() - raw.min() <= 1e-12 * max(abs(float(raw.max())), 1e-30)
        if self.same_scores and (empty or constant):
            return (
                f"all {self.same_scores} classes score the same ({self.score:.4g}) for this "
                "image, so no map can tell them apart: is the classifier trained? (a "
                "torchvision ViT built without weights starts its head at zero)"
            )
        if empty:
            said = (
                f"no positive evidence for {self.label!r} at {self.layer}: the "
                f"{method.title} map is zero everywhere"
            )
            if self.method not in AVERAGING:
                return said
            return (
                f"{said}. Its channel weights average the gradient over the grid, as "
                "for a global-average-pooling head; HiResCAM keeps each cell's own "
                "gradient (a network that flattens its maps is the usual case)"
            )
        if constant:
            return (
                f"the {method.title} map at {self.layer} is constant "
                f"({raw.shape[0]}×{raw.shape[1]} feature map): nothing to localise"
            )
        return None


class Resolved(NamedTuple):
    """What :meth:`Explainer.resolve` makes of a request: the method and layer that will
    be shown, the target (a class index, a callable, or None: the model's top answer),
    and a remark in words where the method was replaced by its fallback."""

    method: str
    layer: str
    target: int | Target | None
    note: str | None


def _by_largest(values: np.ndarray) -> np.ndarray:
    """``values`` divided by their largest magnitude; all zeros where that is 0 or not
    finite."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    if not np.isfinite(largest) or largest <= 0.0:
        return np.zeros_like(values, dtype=np.float32)
    return (values / largest).astype(np.float32)


def explained(
    raw: np.ndarray,
    image: PreparedImage,
    output: Tensor | list[dict],
    row: int,
    where: tuple[str, str],
    target: Target,
    numbers: tuple[float, float | None],
    label: Callable[[int], str],
    timings: Mapping[str, float] | None = None,
) -> Explanation:
    """The explanation of row ``row`` of a pass whose ``output`` is on the CPU: ``where``
    is the (layer, method), ``numbers`` the row's score and probability, ``label`` names
    a class; a pixel-level ``raw`` (3, H, W) is kept as the attribution and summed over
    colour."""
    attribution = raw if raw.ndim == 3 else None
    raw = raw.sum(axis=0) if attribution is not None else raw
    if isinstance(target, Class) and isinstance(output, Tensor) and output.dim() == 2:
        shown, name = target.index, label(target.index)
    else:
        shown, name = target, describe(target, label)
    region = None
    if isinstance(target, Region):
        mask = target.region(outputs.one(output, row))
        region = render.upsample(mask.numpy(), image.size, image.frame) >= 0.5
        if image.frame is not None:
            region &= render.inside(image.size, image.frame)
    box = to_image(target.box, image) if isinstance(target, Box) else None
    return Explanation(
        raw=raw,
        size=image.size,
        layer=where[0],
        target=shown,
        method=where[1],
        score=numbers[0],
        label=name,
        probability=numbers[1],
        timings=dict(timings or {}),
        region=region,
        box=box,
        attribution=attribution,
        frame=image.frame,
        same_scores=_same_scores(output, row),
    )


def _same_scores(output: Tensor | list[dict], row: int) -> int:
    """The number of classes where every class of a classifier's ``output`` scores the
    same in ``row``, else 0."""
    if not (isinstance(output, Tensor) and output.dim() == 2 and output.shape[1] > 1):
        return 0
    scores = output[row]
    return len(scores) if bool((scores == scores[0]).all()) else 0


def to_image(box: tuple[float, ...], image: PreparedImage) -> tuple[float, ...]:
    """A box in pixels of the model's input -> in pixels of the image."""
    height, width = image.inputs.shape[-2:]
    frame = image.frame or Frame(0.0, 0.0, 1.0, 1.0)
    across = (image.size[1] * frame.left, image.size[1] * frame.width / width)
    down = (image.size[0] * frame.top, image.size[0] * frame.height / height)
    return tuple(
        start + float(v) * scale for v, (start, scale) in zip(box, (across, down) * 2, strict=True)
    )
