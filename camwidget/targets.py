"""What a map explains: a function of the model's output for one image.

A target is any callable ``f(output) -> scalar tensor``, where ``output`` is the model's
output for that one image, batch dimension removed: class logits (K,), dense class
scores (K, H, W), a detection dict (``boxes``, ``labels``, ``scores``) or an embedding
(D,). The built-ins below also carry a ``key`` (equal targets share cached gradients:
the same class, the same mask bytes) and a ``describe(label)`` for captions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .errors import CamwidgetError

Label = Callable[[int], str]
#: A target: the model's output for one image -> a scalar tensor.
Target = Callable[[object], Tensor]


def _digest(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    return hashlib.blake2b(data.tobytes() + str(data.shape).encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class Class:
    """The logit of class ``index`` (what an int target means for a classifier)."""

    index: int

    def __call__(self, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() != 1:
            raise CamwidgetError(
                f"Class({self.index}) explains class logits (K,); this model's output for "
                f"one image is {_shape(output)}: use targets.Region for dense outputs or "
                "targets.Box for detections"
            )
        return output[self.index]

    @property
    def key(self) -> Hashable:
        return ("class", self.index)

    def describe(self, label: Label) -> str:
        return label(self.index)


@dataclass(frozen=True, eq=False)
class Region:
    """For dense outputs (K, H, W): the sum of class ``index``'s scores over ``mask``.

    ``mask``: bool (h, w) at the output's size, or at the image's size (resized to the
    output's, nearest); None: the pixels where ``index`` is the predicted class
    (pytorch-grad-cam's ``SemanticSegmentationTarget``).
    """

    index: int
    mask: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.mask is None:
            return
        mask = np.asarray(self.mask.detach().cpu() if isinstance(self.mask, Tensor) else self.mask)
        if mask.ndim != 2 or mask.size == 0:
            raise CamwidgetError(
                f"a Region mask must be 2-D (H, W), at the output's size or the image's; "
                f"got shape {mask.shape}"
            )
        object.__setattr__(self, "mask", mask.astype(bool))

    def __call__(self, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() != 3:
            raise CamwidgetError(
                f"Region explains dense class scores (K, H, W); this model's output for one "
                f"image is {_shape(output)}"
            )
        return (output[self.index] * self.region(output)).sum()

    def region(self, output: Tensor) -> Tensor:
        """The mask (H, W) at the output's size, as a float tensor on its device."""
        height, width = output.shape[-2:]
        if self.mask is None:
            return (output.detach().argmax(dim=0) == self.index).to(output.dtype)
        mask = torch.from_numpy(self.mask).to(output.device, output.dtype)
        if mask.shape == (height, width):
            return mask
        aspect = (mask.shape[0] / mask.shape[1]) / (height / width)
        if not 0.97 <= aspect <= 1.03:
            raise CamwidgetError(
                f"a Region mask of {mask.shape[0]}×{mask.shape[1]} does not match the output's "
                f"{height}×{width} grid or an image of that shape"
            )
        resized = torch.nn.functional.interpolate(mask[None, None], size=(height, width))
        return resized[0, 0]

    @property
    def key(self) -> Hashable:
        return ("region", self.index, None if self.mask is None else _digest(self.mask))

    def describe(self, label: Label) -> str:
        where = "its predicted pixels" if self.mask is None else "the given region"
        return f"{label(self.index)} over {where}"


@dataclass(frozen=True)
class Box:
    """For detection outputs: score + IoU of the best detection of class ``label`` that
    overlaps ``box`` (x1, y1, x2, y2, in input pixels) by at least ``iou``; zero when none
    does (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``)."""

    label: int
    box: tuple[float, float, float, float]
    iou: float = 0.5

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in np.asarray(self.box, dtype=np.float64).ravel())
        if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
            raise CamwidgetError(f"a box is (x1, y1, x2, y2) with x2 > x1, y2 > y1; got {box}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "label", int(self.label))

    def __call__(self, output: dict) -> Tensor:
        if not isinstance(output, dict) or "boxes" not in output:
            raise CamwidgetError(
                f"Box explains detections (a dict with boxes, labels, scores); this model's "
                f"output for one image is {_shape(output)}"
            )
        import torchvision

        boxes, labels, scores = output["boxes"], output["labels"], output["scores"]
        target = torch.tensor([self.box], dtype=boxes.dtype, device=boxes.device)
        ious = torchvision.ops.box_iou(target, boxes)[0]
        ious = torch.where(labels == self.label, ious, torch.full_like(ious, -1.0))
        if not len(ious) or ious.max() < self.iou:
            return scores.sum() * 0.0  # no such detection: zero, still on the graph
        best = int(ious.argmax())
        return scores[best] + ious[best]

    @property
    def key(self) -> Hashable:
        return ("box", self.label, self.box, self.iou)

    def describe(self, label: Label) -> str:
        x1, y1, x2, y2 = (round(v) for v in self.box)
        return f"{label(self.label)} box ({x1}, {y1})–({x2}, {y2})"


@dataclass(frozen=True, eq=False)
class Similarity:
    """Cosine similarity of the output (an embedding) to ``reference`` (a tensor of the
    same size): which parts of this image make it look like the reference."""

    reference: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.reference, Tensor) or not self.reference.numel():
            raise CamwidgetError("Similarity needs a reference embedding: a non-empty tensor")
        object.__setattr__(self, "reference", self.reference.detach().flatten().float())

    def __call__(self, output: Tensor) -> Tensor:
        vector = output.flatten().float() if isinstance(output, Tensor) else None
        if vector is None or vector.numel() != self.reference.numel():
            raise CamwidgetError(
                f"Similarity compares embeddings of {self.reference.numel()} numbers; this "
                f"model's output for one image is {_shape(output)}"
            )
        reference = self.reference.to(vector.device)
        return torch.nn.functional.cosine_similarity(vector, reference, dim=0)

    @property
    def key(self) -> Hashable:
        return ("similarity", _digest(self.reference.cpu().numpy()))

    def describe(self, label: Label) -> str:
        return "similarity to the reference"


@dataclass(frozen=True)
class Contrast:
    """Class ``index`` against the classes ``others`` (Finer-CAM, Zhang et al., CVPR
    2025): sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9), p the softmax of the
    logits y (on the graph, as pytorch-grad-cam's ``FinerWeightedTarget``): what sets
    the class apart from the classes it is most alike."""

    index: int
    others: tuple[int, ...]
    alpha: float = 1.0

    def __post_init__(self) -> None:
        others = tuple(int(other) for other in self.others)
        if not others:
            raise CamwidgetError("Contrast needs at least one class to compare with")
        object.__setattr__(self, "others", others)
        object.__setattr__(self, "index", int(self.index))

    def __call__(self, output: Tensor) -> Tensor:
        logit = Class(self.index)(output)
        probabilities = torch.softmax(output, dim=-1)[list(self.others)]
        differences = logit - self.alpha * output[list(self.others)]
        return (probabilities * differences).sum() / (probabilities.sum() + 1e-9)

    @property
    def key(self) -> Hashable:
        return ("contrast", self.index, self.others, float(self.alpha))

    def describe(self, label: Label) -> str:
        return f"{label(self.index)} against {', '.join(map(label, self.others))}"


def most_alike(logits: Tensor, index: int, count: int = 3) -> tuple[int, ...]:
    """The ``count`` classes whose logits (K,) are nearest class ``index``'s."""
    distance = (logits.detach() - logits[index].detach()).abs()
    distance[index] = float("inf")
    order = torch.argsort(distance, stable=True)
    return tuple(int(i) for i in order[: min(count, len(logits) - 1)])


def key(target: Callable) -> Hashable:
    """What caches ``target`` by: its value for the built-ins, its identity otherwise."""
    return getattr(target, "key", ("callable", id(target)))


def describe(target: Callable, label: Label) -> str:
    """``target`` in words, for captions."""
    if hasattr(target, "describe"):
        return target.describe(label)
    return getattr(target, "__name__", type(target).__name__)


def _shape(output: object) -> str:
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"a {type(output).__name__}"
