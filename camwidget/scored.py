"""Passes over many inputs that keep no layer: the model's score on each input
(perturbed copies for Score-CAM, occlusion and the metrics; a layer's channels set to
zero for Ablation-CAM) and the gradient of its score at each input (the attributions
at the pixels). Batches run in the memory layout that runs the model faster; the
model is guarded as in :mod:`camwidget.capture`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from . import folding, outputs
from .capture import guarded
from .errors import CamwidgetError
from .layouts import Layout


class FasterLayout:
    """Which memory layout runs a model faster on this machine's CPU, learnt from the
    first batches of a run: channels-last speeds convolutions up at large inputs and
    slows them down at small ones (ResNet-18: 1.25x faster at 224 pixels, 2x slower at
    64), by model. The first four batches alternate between the two (the second of
    each, warm, is timed), the rest take the faster per input. On a GPU: channels-last."""

    TRIED = (torch.contiguous_format, torch.channels_last) * 2

    def __init__(self) -> None:
        self.seconds: dict[torch.memory_format, float] = {}
        self.tried = 0

    @contextmanager
    def timed(self, batch: Tensor) -> Iterator[Tensor]:
        """``batch`` in the layout to use; timed while the layouts are tried."""
        if len(batch) < 2:
            yield batch
            return
        if batch.device.type != "cpu":
            yield batch.contiguous(memory_format=torch.channels_last)
            return
        if self.tried >= len(self.TRIED):
            yield batch.contiguous(memory_format=min(self.seconds, key=self.seconds.get))
            return
        layout = self.TRIED[self.tried]
        start = time.perf_counter()
        yield batch.contiguous(memory_format=layout)
        self.tried += 1
        if self.tried > 2:
            self.seconds[layout] = (time.perf_counter() - start) / len(batch)


@torch.no_grad()
def score_inputs(
    model: nn.Module,
    batches: Iterable[Tensor],
    score: Callable[[Tensor | list[dict]], Tensor],
    total: int,
    progress: Callable[[int, int], None] | None = None,
    select: outputs.Select = outputs.select,
    scored: Callable[[Tensor], None] | None = None,
    hooks: Mapping[str, Callable[[nn.Module, object, object], object]] | None = None,
) -> Tensor:
    """``score(output)`` (one number per input) of the model on each input of each of
    ``batches``, without autograd; ``output`` is the selected part of the model's output
    for a batch. Batches go in the memory layout that runs the model faster (see
    :class:`FasterLayout`; the model untouched), with batch norms folded except into
    the layers given forward ``hooks`` by name (:mod:`folding`). After each batch,
    ``scored(scores so far)`` and then ``progress(done, total)`` are called."""
    scores, done, layouts, hooks = [], 0, FasterLayout(), hooks or {}
    with guarded(model) as handles:
        for batch in batches:
            with layouts.timed(batch) as batch, folding.folded(model, batch, hooks):
                if hooks and not handles:  # after the folding's first look at the model
                    handles += [
                        model.get_submodule(n).register_forward_hook(h) for n, h in hooks.items()
                    ]
                scores.append(score(select(model(batch), tuple(batch.shape[-2:]))).float())
            done += len(batch)
            if scored is not None:
                scored(torch.cat(scores))
            if progress is not None:
                progress(done, total)
    return torch.cat(scores)


def input_gradients(
    model: nn.Module,
    batches: Iterable[Tensor],
    score: Callable[[Tensor | list[dict]], Tensor],
    total: int,
    progress: Callable[[int, int], None] | None = None,
    select: outputs.Select = outputs.select,
) -> Tensor:
    """The gradient of ``score(output)`` (one number per input) with respect to each
    input of each of ``batches``: one forward and one backward per batch, (M, 3, H, W).
    Each row's gradient is its own score's (the model is in eval mode, so rows do not
    mix). ``progress(done, total)`` after each batch."""
    found, done = [], 0
    with guarded(model), torch.enable_grad():
        for batch in batches:
            points = batch.detach().clone().requires_grad_(True)
            scores = score(select(model(points), tuple(points.shape[-2:])))
            if scores.requires_grad:
                (gradient,) = torch.autograd.grad(scores.sum(), points)
            else:  # a target that does not depend on the input
                gradient = torch.zeros_like(points)
            found.append(gradient.detach())
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return torch.cat(found)


def score_masked(
    model: nn.Module,
    inputs: Tensor,
    masks: Tensor,
    score: Callable[[Tensor | list[dict]], Tensor],
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    select: outputs.Select = outputs.select,
    scored: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """:func:`score_inputs` on ``inputs * mask`` for each mask (M, 1, H, W), in batches
    (``masks``: a tensor, or anything that has a length and gives a slice as one)."""
    step = max(1, batch_size)
    batches = (
        inputs * masks[start : start + step].to(inputs) for start in range(0, len(masks), step)
    )
    return score_inputs(model, batches, score, len(masks), progress, select, scored)


def score_ablated(
    model: nn.Module,
    inputs: Tensor,
    layer: str,
    layout: Layout,
    channels: Tensor,
    score: Callable[[Tensor | list[dict]], Tensor],
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    select: outputs.Select = outputs.select,
    scored: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """:func:`score_inputs` of ``inputs`` (1, 3, H, W) once per channel in ``channels``
    (M,), with that channel of ``layer``'s output (in its ``layout``) set to zero by a
    temporary forward hook, in batches."""
    step = max(1, batch_size)
    current: list[Tensor] = []

    def zero_channels(module: nn.Module, args: object, output: Tensor) -> Tensor:
        output = output.clone()
        rows = torch.arange(len(current[0]), device=output.device)
        layout.to_nchw(output)[rows, current[0]] = 0
        if layout.to_nchw(output)[rows, current[0]].any():
            raise CamwidgetError(
                f"cannot set channels of {layer!r} to zero: its reshape copies the output"
            )
        return output

    def batches() -> Iterator[Tensor]:
        for start in range(0, len(channels), step):
            current[:] = [channels[start : start + step]]
            yield inputs.expand(len(current[0]), *inputs.shape[1:])

    hooks = {layer: zero_channels}
    return score_inputs(model, batches(), score, len(channels), progress, select, scored, hooks)
