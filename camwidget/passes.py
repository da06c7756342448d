"""The model's passes for one explainer: forwards that keep the feature maps, partial
backwards, batches of perturbed inputs, and pixel attributions, each counted.

Everything here runs through :mod:`camwidget.capture` (hooks and the model guard) and
holds the explainer's ``lock``, so that passes on one model never overlap, whichever
thread asks.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from . import capture as capture_
from . import deeplift, fullgrad, legrad, lrp, outputs, pixel, proof
from . import scored as scored_
from .capture import Capture
from .errors import CamwidgetError
from .layouts import Layout, Reshape
from .worker import BATCHED_WORK

Progress = Callable[[int, int], None]
Scorer = Callable[[object], Tensor]


def batch_size(requested: int | None, device: torch.device | str) -> int:
    """``requested`` inputs per forward, or where None the size that suits ``device``:
    8 on the CPU (where larger batches are no faster, 1.0-1.5x slower at 32 for
    ResNet-18/50 and EfficientNet-Lite0 at 224 px, and a cancel waits for a whole
    batch), 32 on an accelerator."""
    if requested is not None:
        return max(1, int(requested))
    return 8 if torch.device(device).type == "cpu" else 32


class Passes:
    """Runs ``model`` for an explainer. ``output`` picks the part of the model's output
    to explain where camwidget cannot find it; ``reshape`` gives layouts by layer name.
    ``counts``: passes run so far, ``"forward"``, ``"backward"`` and ``"scored"``
    perturbed inputs."""

    def __init__(
        self,
        model: nn.Module,
        output: Callable[[object], object] | None = None,
        reshape: Mapping[str, Reshape] | None = None,
    ) -> None:
        self.model, self.output, self.reshape = model, output, dict(reshape or {})
        self.counts: Counter[str] = Counter()
        #: Held around every pass and every cache read or write of the explainer.
        self.lock = threading.RLock()
        # Maps that in-place ops downstream rewrite, so that forwards hand on copies of
        # them; learned when a pass finds one of its kept maps rewritten.
        self.copies: set[str] = set()
        #: What a second input size proved of the layouts (:func:`camwidget.proof.prove`);
        #: None until the first full pass.
        self.proof: Mapping[str, str] | None = None

    def forward(
        self, inputs: Tensor, layers: Collection[str] | None = None, graph_from: str | None = None
    ) -> Capture:
        """One forward keeping the feature maps of ``layers`` (None: all), recorded by
        autograd from ``graph_from`` on (None: from the input); run again, copying,
        where a kept map was rewritten in place downstream."""

        def run() -> Capture:
            return capture_.forward(
                self.model,
                inputs,
                layers,
                self.copies,
                graph_from,
                self.reshape,
                self.select,
                self.proof,
            )

        with self.lock:
            capture = run()
            if capture.modified - self.copies:  # a kept map was rewritten in place: redo
                self.copies |= capture.modified
                self.counts["forward"] += 1
                capture = run()
            if self.proof is None and layers is None and graph_from is None:
                self.proof = proof.prove(self.model, inputs, capture) or {}
                self.counts["probe"] += 1
                if self.proof:  # a layout the first size got wrong: the pass again
                    self.counts["forward"] += 1
                    capture = run()
            self.counts["forward"] += 1
        if not capture.activations and layers is None:
            if capture_.NO_GRAPH in capture.skipped.values():
                raise CamwidgetError(
                    "no feature map of this model depends on the input through autograd: "
                    "does its forward run them under torch.no_grad() or detach them? "
                    "Class activation maps need their gradients"
                )
            raise CamwidgetError(
                "this model has no layer whose output is a feature map: (N, C, H, W) "
                "from a convolution, (N, H, W, C) channels-last or (N, T, C) tokens on a "
                "grid over the image; class activation maps need one (or give reshape=)"
            )
        return capture

    def backward(
        self, capture: Capture, score: Tensor, layers: Collection[str], retain: bool = True
    ) -> dict[str, Tensor]:
        """d score / dA for the kept maps of ``layers``, in one partial backward."""
        with self.lock:
            found = capture_.backward(capture, score, layers, retain=retain)
            self.counts["backward"] += 1
        return found

    def hessian_product(self, capture: Capture, layer: str, score: Tensor) -> Tensor:
        """H A at ``layer``'s kept map A (its own layout): the product of the Hessian of
        ``score`` with respect to A with A itself, by double backward (two passes)."""
        with self.lock:
            try:
                found = capture_.hessian_product(capture, score, layer)
            except RuntimeError as error:  # an operation with no second derivative
                if "not implemented" not in str(error):
                    raise
                raise CamwidgetError(
                    "this method needs second derivatives, and PyTorch has none for an "
                    f"operation of this model ({error}); use Grad-CAM"
                ) from error
            self.counts["backward"] += 2
        return found

    def select(self, output: object, size: tuple[int, int]) -> Tensor | list[dict]:
        """The part of the model's ``output`` for inputs of ``size`` (H, W) to explain:
        the user's ``output`` function first, then :func:`camwidget.outputs.select`."""
        if self.output is not None:
            try:
                output = self.output(output)
            except CamwidgetError:
                raise
            except Exception as error:
                raise CamwidgetError(
                    f"the output function failed: {type(error).__name__}: {error}"
                ) from error
        return outputs.select(output, size)

    def score_inputs(
        self,
        inputs: Tensor,
        scorer: Scorer,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """``scorer`` on each of ``inputs`` (M, 3, h, w), ``size`` at a time (see
        :func:`batch_size`)."""
        step = batch_size(size, inputs.device)
        batches = (inputs[start : start + step] for start in range(0, len(inputs), step))
        with self._slot(progress, len(inputs)), self.lock:
            return scored_.score_inputs(
                self.model, batches, scorer, len(inputs), self._counted(progress), self.select
            )

    def score_masked(
        self,
        inputs: Tensor,
        masks: Tensor,
        scorer: Scorer,
        size: int | None = None,
        progress: Progress | None = None,
        scored: Callable[[Tensor], None] | None = None,
    ) -> Tensor:
        """``scorer`` on ``inputs`` (1, 3, H, W) under each mask (M, 1, H, W), ``size``
        at a time; ``scored(scores so far)`` after each batch."""
        step = batch_size(size, inputs.device)
        with self._slot(progress, len(masks)), self.lock:
            return scored_.score_masked(
                self.model, inputs, masks, scorer, step,
                self._counted(progress), self.select, scored,
            )  # fmt: skip

    def score_ablated(
        self,
        inputs: Tensor,
        layer: str,
        layout: Layout,
        channels: Tensor,
        scorer: Scorer,
        size: int | None = None,
        progress: Progress | None = None,
        scored: Callable[[Tensor], None] | None = None,
    ) -> Tensor:
        """``scorer`` with each of ``channels`` of ``layer`` set to zero in turn, ``size``
        at a time; ``scored(scores so far)`` after each batch."""
        step = batch_size(size, inputs.device)
        with self._slot(progress, len(channels)), self.lock:
            return scored_.score_ablated(
                self.model, inputs, layer, layout, channels, scorer, step,
                self._counted(progress), self.select, scored,
            )  # fmt: skip

    def _slot(self, progress: Progress | None, total: int) -> AbstractContextManager[None]:
        """A slot of the process's batched work (:data:`camwidget.worker.BATCHED_WORK`),
        waited for at 0 % (a cancelled wait raises through ``progress``)."""
        return BATCHED_WORK.taken(None if progress is None else lambda: progress(0, total))

    def _counted(self, progress: Progress | None) -> Progress:
        """``progress`` that first counts each batch's inputs as ``"scored"`` (also the
        batches of work stopped on the way)."""
        done_before = [0]

        def counted(done: int, total: int) -> None:
            self.counts["scored"] += done - done_before[0]
            done_before[0] = done
            if progress is not None:
                progress(done, total)

        return counted

    def input_gradients(
        self,
        points: Tensor,
        scorer: Scorer,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """The gradient of ``scorer`` at each of ``points`` (M, 3, H, W), ``size`` at a
        time (see :func:`batch_size`): one forward and one backward per batch."""
        step = batch_size(size, points.device)
        batches = (points[start : start + step] for start in range(0, len(points), step))
        with self._slot(progress, len(points)), self.lock:
            found = scored_.input_gradients(
                self.model, batches, scorer, len(points), self._batches(progress), self.select
            )
        return found

    def layer_gradients(
        self,
        points: Tensor,
        layer: str,
        scorer: Scorer,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """The gradient of ``scorer`` at ``layer``'s map (N, C, h, w) for each of
        ``points`` (M, 3, H, W), ``size`` at a time: a forward recorded from the layer
        and a backward per batch."""
        step, found = batch_size(size, points.device), []
        with self._slot(progress, len(points)), self.lock:
            for start in range(0, len(points), step):
                capture = self.forward(points[start : start + step], {layer}, graph_from=layer)
                if layer not in capture.activations:
                    raise CamwidgetError(f"layer {layer!r} did not run for these inputs")
                scores = scorer(capture.output).sum()
                gradient = self.backward(capture, scores, {layer}, retain=False)[layer]
                found.append(capture.layouts[layer].to_nchw(gradient))
                if progress is not None:
                    progress(min(start + step, len(points)), len(points))
        return torch.cat(found)

    def input_gradient(self, capture: Capture, score: Tensor) -> Tensor:
        """d score / d input on the capture's own graph: one backward, no forward."""
        with self.lock:
            found = capture_.input_gradient(capture, score)
            self.counts["backward"] += 1
        return found

    def deeplift(self, inputs: Tensor, baseline: Tensor, scorer: Scorer) -> Tensor:
        """DeepLIFT's multipliers (3, H, W) of ``inputs`` against ``baseline``."""
        with self.lock:
            found = deeplift.multipliers(
                self.model, inputs, baseline, self._selected(scorer, inputs)
            )
            self.counts.update(("forward", "backward"))
        return found

    def full_gradients(self, inputs: Tensor, scorer: Scorer) -> tuple[Tensor, list[Tensor]]:
        """FullGrad's input × gradient and bias × gradient maps (see :mod:`fullgrad`)."""
        with self.lock:
            found = fullgrad.decomposition(self.model, inputs, self._selected(scorer, inputs))
            self.counts.update(("forward", "backward"))
        return found

    def attention_gradients(
        self,
        inputs: Tensor,
        scorer: Scorer,
        blocks: int | None,
        kept: Callable[[str], Tensor | None],
    ) -> tuple[list[Tensor], int, tuple[int, int]]:
        """LeGrad's gradients at the last ``blocks`` attentions (see :mod:`legrad`)."""
        with self.lock:
            found = legrad.attention_gradients(
                self.model, inputs, self._selected(scorer, inputs), blocks, kept
            )
            self.counts.update(("forward", "backward"))
        return found

    def _batches(self, progress: Progress | None) -> Progress:
        """``progress`` that first counts each batch as one forward and one backward."""

        def counted(done: int, total: int) -> None:
            self.counts.update(("forward", "backward"))
            if progress is not None:
                progress(done, total)

        return counted

    def guided(self, inputs: Tensor, score: Callable[[object], Tensor]) -> Tensor:
        """Guided backpropagation (3, H, W) of ``score(selected output)``."""
        with self.lock:
            found = pixel.guided_backprop(self.model, inputs, self._selected(score, inputs))
            self.counts.update(("forward", "backward"))
        return found

    def relevance(
        self,
        inputs: Tensor,
        score: Callable[[object], Tensor],
        composite: str,
        bounds: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """LRP relevance (3, H, W) of ``score(selected output)`` under ``composite``."""
        with self.lock:
            found = lrp.relevance(
                self.model, inputs, self._selected(score, inputs), composite, bounds
            )
            self.counts.update(("forward", "backward"))
        return found

    def _selected(
        self, score: Callable[[object], Tensor], inputs: Tensor
    ) -> Callable[[object], Tensor]:
        size = tuple(inputs.shape[-2:])
        return lambda output: score(self.select(output, size))
