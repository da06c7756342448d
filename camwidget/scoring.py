"""From a model's output to numbers: which target a request means, its score on the
graph, a batch's scores, and probabilities. Pure functions of the output and the target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import outputs
from .capture import Capture
from .errors import CamwidgetError
from .targets import Class, Target

Output = Tensor | list[dict]


def target_for(output: Output, target: int | Target | None, row: int) -> Target:
    """The target object for image ``row``: a callable as it is, a class index as its
    kind of output reads it, None as the model's top answer."""
    one = outputs.one(output, row)
    if target is None:
        return outputs.default_target(one)
    if callable(target):
        return target
    return outputs.as_target(int(target), one)


def score(output: Output, target: Target, row: int) -> Tensor:
    """``target``'s value on image ``row``'s output: one number, on the graph. A target
    that fails or returns anything but one float is reported in words."""
    try:
        value = target(outputs.one(output, row))
    except CamwidgetError:
        raise
    except Exception as error:
        raise CamwidgetError(f"the target failed: {type(error).__name__}: {error}") from error
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise CamwidgetError(
            f"the target returned {shape}; a target must return one number (a float "
            "scalar tensor computed from the model's output)"
        )
    return value.reshape(())


def values(target: Target) -> Callable[[Output], Tensor]:
    """``target``'s value on each image of a batch's output."""

    def of(output: Output) -> Tensor:
        count = outputs.rows(output)
        return torch.stack([target(outputs.one(output, row)).reshape(()) for row in range(count)])

    return of


def probabilities(target: Target, activation: str | None) -> Callable[[Output], Tensor]:
    """How a batch of perturbed inputs is scored (Score-CAM, the metrics): a class's
    probability (Score-CAM's authors' variant), any other target's value."""
    value = values(target)

    def of(output: Output) -> Tensor:
        if isinstance(target, Class) and outputs.kind(output) == "logits":
            return outputs.activate(output, activation)[:, target.index]
        return value(output)

    return of


def numbers(
    capture: Capture, targets: Sequence[Target], activation: str | None
) -> list[tuple[float, float | None]]:
    """Each row's score and, for a class, its probability: read in one copy to the host
    (not one wait on the GPU per number)."""
    scores = torch.stack(
        [score(capture.output, t, row).detach().float() for row, t in enumerate(targets)]
    )
    chances = torch.full_like(scores, float("nan"))
    logits = capture.logits
    rows = [row for row, t in enumerate(targets) if isinstance(t, Class)]
    if logits is not None and rows:
        indices = [targets[row].index for row in rows]
        chances[rows] = outputs.activate(logits[rows], activation)[
            torch.arange(len(rows)), indices
        ].to(scores.device)
    pairs = torch.stack([scores, chances], dim=1).cpu().tolist()
    return [(s, None if p != p else p) for s, p in pairs]  # NaN: no class


def class_count(output: Output, labels: Sequence[str] | None) -> int:
    """How many classes ``output`` scores (for a detector: as many as its labels, else
    one more than the highest label it gave)."""
    if outputs.kind(output) != "detections":
        return output.shape[1]
    if labels:
        return len(labels)
    return 1 + max((int(d["labels"].max()) for d in output if len(d["labels"])), default=0)
