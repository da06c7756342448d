"""What a model returns, read without user code: the part to explain, of one of three
kinds.

- ``"logits"``: a tensor (N, K): class scores of a classifier (also an embedding (N, D),
  explained with :class:`camwidget.targets.Similarity`);
- ``"dense"``: a tensor (N, K, H, W): per-pixel class scores of a segmentation model;
- ``"detections"``: a list of N dicts with ``boxes`` (M, 4), ``labels`` (M,) and
  ``scores`` (M,), as torchvision's detection models return in eval mode.

Containers are opened as the common libraries use them: a tuple's or list's first
element, a mapping's ``logits`` or ``out`` (torchvision segmentation), an object's
``logits`` (Hugging Face). Query-based models of Hugging Face are read as their own
post-processing reads them: DETR-style ``logits`` (N, Q, K + 1) with ``pred_boxes``
(N, Q, 4) as detections (each query's best class, its probability, its box), and
Mask2Former/MaskFormer-style ``class_queries_logits`` with ``masks_queries_logits`` as
dense class scores (N, K, h, w) (the class probabilities times the mask probabilities,
summed over queries). Anything else needs ``Explainer(model, output=fn)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from .errors import CamwidgetError
from .targets import Box, Class, Region, Target

_HELP = (
    "camwidget explains class logits (N, K), dense class scores (N, K, H, W) or a list of "
    "detection dicts (boxes, labels, scores); give Explainer(model, output=fn) with fn "
    "picking one of those from the model's output"
)


#: ``select(output, size)``: the part of a model's output to explain, for inputs of
#: ``size`` (H, W).
Select = Callable[[object, tuple[int, int]], "Tensor | list[dict]"]


def select(output: object, size: tuple[int, int] | None = None) -> Tensor | list[dict]:
    """The part of a model's ``output`` to explain (see the module's docstring); ``size``
    (H, W) of the inputs puts DETR's boxes in their pixels."""
    found = output
    for _ in range(4):  # containers within containers, a few levels deep
        if isinstance(found, Tensor):
            return _tensor(found, output)
        if is_detections(found):
            return list(found)
        if _has(found, "logits", "pred_boxes"):
            return _queried_boxes(_get(found, "logits"), _get(found, "pred_boxes"), size)
        if _has(found, "class_queries_logits", "masks_queries_logits"):
            classes, masks = (_get(found, f"{n}_queries_logits") for n in ("class", "masks"))
            return _queried_masks(classes, masks)
        if isinstance(found, Mapping):
            found = found.get("logits", found.get("out"))
        elif isinstance(found, (tuple, list)) and found:
            found = found[0]
        elif hasattr(found, "logits"):
            found = found.logits
        else:
            break
    raise CamwidgetError(f"the model returned a {type(output).__name__}: {_HELP}")


def _has(found: object, *names: str) -> bool:
    return all(isinstance(_get(found, name), Tensor) for name in names)


def _get(found: object, name: str) -> object:
    return found.get(name) if isinstance(found, Mapping) else getattr(found, name, None)


def _queried_boxes(logits: Tensor, boxes: Tensor, size: tuple[int, int] | None) -> list[dict]:
    """DETR's queries as detection dicts, as ``post_process_object_detection`` reads
    them: the class of highest probability other than the last ("no object"), that
    probability as the score, the box (centre x, centre y, width, height as fractions of
    the input) as (x1, y1, x2, y2) in pixels of an input of ``size``."""
    if size is None:
        raise CamwidgetError("DETR's boxes are fractions of the input: its size is needed")
    scores, labels = logits.softmax(dim=-1)[..., :-1].max(dim=-1)
    centre_x, centre_y, width, height = boxes.unbind(dim=-1)
    rows, cols = size
    corners = (
        (centre_x - width / 2) * cols,
        (centre_y - height / 2) * rows,
        (centre_x + width / 2) * cols,
        (centre_y + height / 2) * rows,
    )
    boxes = torch.stack(corners, dim=-1)
    return [
        {"boxes": b, "labels": label, "scores": score}
        for b, label, score in zip(boxes, labels, scores, strict=True)
    ]


def _queried_masks(classes: Tensor, masks: Tensor) -> Tensor:
    """Mask2Former's queries as dense class scores (N, K, h, w), as its
    ``post_process_semantic_segmentation`` reads them: softmax over each query's classes
    without "no object", times the sigmoid of its mask, summed over the queries."""
    probabilities = classes.softmax(dim=-1)[..., :-1]
    return torch.einsum("nqk,nqhw->nkhw", probabilities, masks.sigmoid())


def _tensor(found: Tensor, output: object) -> Tensor:
    if found.dim() > 2 and all(size == 1 for size in found.shape[2:]):
        found = found.flatten(1)
    if found.dim() not in (2, 4) or not found.is_floating_point():
        raise CamwidgetError(
            f"the model's output has shape {tuple(found.shape)} ({found.dtype}): {_HELP}"
        )
    return found


def is_detections(output: object) -> bool:
    """Whether ``output`` is a list of detection dicts."""
    return (
        isinstance(output, (list, tuple))
        and bool(output)
        and all(isinstance(item, Mapping) and "boxes" in item for item in output)
    )


def kind(output: Tensor | list[dict]) -> str:
    """``"logits"``, ``"dense"`` or ``"detections"``."""
    if isinstance(output, list):
        return "detections"
    return "logits" if output.dim() == 2 else "dense"


def rows(output: Tensor | list[dict]) -> int:
    """How many images the output is for."""
    return len(output)


def one(output: Tensor | list[dict], row: int) -> Tensor | dict:
    """The output for image ``row``, batch dimension removed."""
    return output[row]


def activate(logits: Tensor, activation: str | None = None) -> Tensor:
    """Probabilities from logits (..., K): ``"softmax"`` or ``"sigmoid"``; None picks
    softmax for K > 1 and sigmoid for a single output."""
    name = activation or ("softmax" if logits.shape[-1] > 1 else "sigmoid")
    logits = logits.detach().float()
    return torch.softmax(logits, dim=-1) if name == "softmax" else torch.sigmoid(logits)


def as_target(index: int, output: Tensor | dict) -> Target:
    """What class ``index`` means for one image's ``output``: its logit (classifier),
    its predicted pixels (segmentation), or its best detection (detector)."""
    if isinstance(output, dict):
        found = [d for d in detections(output) if d.label == index]
        if not found:
            raise CamwidgetError(f"the model detected nothing of class {index} in this image")
        return found[0].target
    if output.dim() == 3:
        return Region(index)
    return Class(index)


def default_target(output: Tensor | dict) -> Target:
    """The model's top answer for one image: the top-1 class, the class with the most
    predicted pixels, or the highest-scoring detection."""
    if isinstance(output, dict):
        found = detections(output)
        if not found:
            raise CamwidgetError("the model detected nothing in this image: no box to explain")
        return found[0].target
    if output.dim() == 3:
        return Region(int(torch.bincount(output.detach().argmax(dim=0).flatten()).argmax()))
    return Class(int(output.detach().argmax()))


def ranking(output: Tensor | dict, activation: str | None, k: int) -> list[tuple[int, float]]:
    """(class, value) best first: probabilities of a classifier (with a multi-label
    sigmoid: every class above 0.5, at least the top one), the share of pixels of each
    predicted class, or the detections' scores."""
    if isinstance(output, dict):
        return [(d.label, d.score) for d in detections(output)[:k]]
    if output.dim() == 3:
        counts = torch.bincount(output.detach().argmax(dim=0).flatten()).float()
        shares = counts / counts.sum()
        order = shares.argsort(descending=True)[: int((shares > 0).sum())]
        return [(int(i), float(shares[i])) for i in order[:k]]
    probabilities = activate(output, activation).cpu()
    if activation == "sigmoid" and len(probabilities) > 1:
        k = max(1, int((probabilities > 0.5).sum()))
    top = torch.topk(probabilities, min(k, len(probabilities)))
    return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))


class Detection(NamedTuple):
    """One detection: class ``label``, ``score``, ``box`` (x1, y1, x2, y2) in pixels, and
    the ``target`` that explains it (:class:`~camwidget.targets.Box`)."""

    label: int
    score: float
    box: tuple[float, float, float, float]
    target: Box


def detections(output: dict) -> list[Detection]:
    """The detections in one image's output, best score first, boxes in pixels of the
    model's input."""
    scores = output["scores"].detach().float().cpu()
    order = scores.argsort(descending=True).tolist()
    boxes = output["boxes"].detach().float().cpu()
    labels = output["labels"].detach().cpu()
    found = []
    for i in order:
        box = tuple(float(v) for v in boxes[i])
        found.append(Detection(int(labels[i]), float(scores[i]), box, Box(int(labels[i]), box)))
    return found
