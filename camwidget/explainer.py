"""The engine: one forward per image, one partial backward per target, maps cached.

image -> prepare -> forward (cache: image) -> backward (cache: image, target)
      -> method (cache: image, target, layer, method) -> upsample + normalise
"""

from __future__ import annotations

import difflib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
import torch
from torch import Tensor, nn

from . import capture as capture_
from . import images, lrp, memory, methods, outputs, pixel, render
from .capture import Capture
from .errors import CamwidgetError
from .explanation import Explanation, PreparedImage, Resolved
from .inputs import ModelInput, model_input
from .labels import check_index, resolve_target
from .layers import LayerInfo, catalogue, default_layer, final_grid, final_linear
from .layouts import Layout, Reshape
from .targets import Box, Class, Region, Target, describe
from .targets import key as target_key

Preprocess = Callable[[object], Tensor]
ACTIVATIONS = (None, "softmax", "sigmoid")
Progress = Callable[[int, int], None]


def imagenet_preprocess(image: object) -> Tensor:
    """ImageNet mean/std normalisation at the image's own size -> float tensor (3, H, W)."""
    return ModelInput()(np.asarray(image))[0]


@dataclass(frozen=True)
class _Catalogue:
    """The catalogue in force and the pass it came from."""

    layers: list[LayerInfo]
    capture: Capture

    @cached_property
    def by_name(self) -> dict[str, LayerInfo]:
        return {info.name: info for info in self.layers}


class Explainer:
    """Explains a PyTorch image model with class activation maps: a classifier, a
    segmentation or detection model, or an embedding (see :mod:`camwidget.outputs` and
    :mod:`camwidget.targets`).

    ``preprocess`` maps a PIL RGB image to a float tensor (3, H, W) or (1, 3, H, W)
    (default: ImageNet mean/std at the image's own size). ``labels``: class names, a
    sequence or a mapping index -> name. ``device``: where inputs go; by default the
    model's own device (the model is never moved). Without ``preprocess``, images are
    normalised as the model declares (timm's ``pretrained_cfg``, else ImageNet's mean
    and std) and resized only for a model that takes one input size (declared, or
    learned when it fails at the image's size and works at the size it was made for:
    its declared ``input_size``, else 224×224).
    ``reshape``: layer name -> a function that turns that layer's output into (N, C, h,
    w), for layouts camwidget does not find itself. Images whose long side exceeds
    ``max_side`` are downscaled for the model. The passes of the last ``max_images``
    images are kept so that other classes, layers and methods cost no forward; the
    gradients of the most recent classes are kept within ``gradient_bytes`` (the latest
    class's are always kept). Score-CAM scores masked inputs ``scorecam_batch_size`` at
    a time, and only the ``scorecam_channels`` most active channels when that is set;
    Ablation-CAM scores ``ablation_batch_size`` ablated passes at a time. LRP uses the
    zennit composite ``lrp_composite`` (see :data:`camwidget.lrp.COMPOSITES`).
    ``output``: a function picking the part of the model's output to explain, where
    camwidget cannot find it itself. ``activation``: how a classifier's logits become
    probabilities: None (softmax, or sigmoid for a single output), ``"softmax"`` or
    ``"sigmoid"`` (multi-label). ``keep_freed_memory``: let the process keep freed memory
    for the next pass instead of mapping it again (glibc's malloc, process-wide; see
    :mod:`camwidget.memory`); False leaves the allocator as it is.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | Mapping[int, str] | None = None,
        device: str | torch.device | None = None,
        *,
        max_side: int = 1024,
        max_images: int = 2,
        gradient_bytes: int = 256 * 2**20,
        scorecam_batch_size: int = 32,
        scorecam_channels: int | None = None,
        ablation_batch_size: int = 32,
        lrp_composite: str = "epsilon-plus-flat",
        reshape: Mapping[str, Reshape] | None = None,
        output: Callable[[object], object] | None = None,
        activation: str | None = None,
        keep_freed_memory: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise CamwidgetError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if activation not in ACTIVATIONS:
            raise CamwidgetError(
                f"activation must be None, 'softmax' or 'sigmoid', not {activation!r}"
            )
        if keep_freed_memory:
            memory.keep_freed_memory()
        self.model = model
        self.preprocess = preprocess
        self.labels = labels
        self.max_side = max_side
        self.max_images = max(1, max_images)
        self.gradient_bytes = gradient_bytes
        self.scorecam_batch_size = scorecam_batch_size
        self.scorecam_channels = scorecam_channels
        self.ablation_batch_size = ablation_batch_size
        self.lrp_composite = lrp_composite
        self.reshape = dict(reshape or {})
        self.output = output
        self.activation = activation
        #: What the model wants as input when ``preprocess`` is None.
        self.model_input = model_input(model)
        self.device, self.dtype = _placement(model, device)
        #: Counts of model passes run so far: "forward", "backward", and "scored" masked
        #: inputs (Score-CAM).
        self.passes: Counter[str] = Counter()
        self._num_classes: int | None = None
        self._worked_at: set[tuple[int, int]] = set()  # input sizes the model took
        self.clear()

    def clear(self) -> None:
        """Forget every cached pass and map (e.g. after changing the model's weights)."""
        self._captures: OrderedDict[str, Capture] = OrderedDict()
        self._catalogues: dict[str, list[LayerInfo]] = {}
        self._gradients: OrderedDict[tuple, dict[str, Tensor]] = OrderedDict()
        self._gradient_sizes: dict[tuple, int] = {}  # bytes of each entry above
        self._maps: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._pixels: OrderedDict[tuple, Tensor] = OrderedDict()  # the latest 16
        self._current: _Catalogue | None = None
        self._defaults: dict[tuple[str, ...], str] = {}  # by the final grid's layers
        # Maps that in-place ops downstream rewrite, so that forwards hand on copies of
        # them; learned when a pass finds one of its kept maps rewritten.
        self._copies: set[str] = set()
        # Whether CAM applies, by layer: checked once per layer, not per image.
        self._cam: dict[str, bool] = {}
        # The latest layer list, by what decides it (names, shapes and layouts of maps).
        self._listed: tuple[tuple, list[LayerInfo]] = ((), [])

    close = clear

    # ----------------------------------------------------------------- catalogue

    @property
    def layers(self) -> list[LayerInfo]:
        """Catalogued layers in execution order, shapes for the last image's size."""
        if self._current is None:
            self._probe()
        return self._current.layers

    @property
    def default_layer(self) -> str:
        """The layer shown first: for a classifier, the last layer on the model's final
        grid whose gradient for the top-1 class is not identically zero (see
        :func:`camwidget.layers.default_layer`)."""
        current = self._current or self._probe()
        key = tuple(final_grid(current.layers))
        if key not in self._defaults:
            capture = current.capture

            def score() -> Tensor:
                return self._score(capture, self._target(capture, None, 0), 0)

            self._defaults[key] = default_layer(current.layers, capture, score)
        return self._defaults[key]

    @property
    def num_classes(self) -> int:
        """How many classes the model scores (for a detector: as many as its labels)."""
        if self._num_classes is None:
            self._probe()
        return int(self._num_classes)

    @property
    def output_kind(self) -> str:
        """What the model returns: ``"logits"``, ``"dense"`` or ``"detections"`` (see
        :mod:`camwidget.outputs`)."""
        return outputs.kind((self._current or self._probe()).capture.output)

    def layer(self, name: str | None) -> LayerInfo:
        """The catalogued layer ``name`` (None: the default layer)."""
        current = self._current or self._probe()
        name = self.default_layer if name is None else name
        if name in current.by_name:
            return current.by_name[name]
        skipped = current.capture.skipped
        if name in skipped:
            raise CamwidgetError(f"layer {name!r} is not offered: {skipped[name]}")
        names = list(current.by_name)
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise CamwidgetError(
            f"unknown layer {name!r}.{hint} The {len(names)} layers with a feature map "
            f"are: {', '.join(names)}"
        )

    def label(self, index: int) -> str:
        """The name of class ``index`` (``"class 281"`` when no labels were given)."""
        labels = self.labels
        if isinstance(labels, Mapping):
            return str(labels.get(index, f"class {index}"))
        if labels is not None and 0 <= index < len(labels):
            return str(labels[index])
        return f"class {index}"

    def _probe(self) -> _Catalogue:
        """Catalogue the layers from a random input at the model's size (224×224 where
        it takes any)."""
        size = self.model_input.size or self.model_input.preferred
        probe = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        try:
            capture = self._forward(probe.to(self.device, self.dtype))
        except CamwidgetError as error:
            raise CamwidgetError(
                f"could not list the layers with a {size[0]}×{size[1]} probe input "
                f"({error}); explain an image of a size the model accepts first"
            ) from None
        self._current = _Catalogue(self._catalogue(capture), capture)
        return self._current

    def _catalogue(self, capture: Capture) -> list[LayerInfo]:
        """The layers of ``capture``: the latest list again where the pass kept the same
        maps at the same shapes (another image of the same size), else a new list."""
        maps, layouts, kinds = capture.activations, capture.layouts, capture.kinds
        key = tuple((n, a.shape, layouts[n], kinds[n]) for n, a in maps.items())
        if key != self._listed[0]:
            self._listed = (key, catalogue(self.model, capture, self._cam))
        return self._listed[1]

    # ----------------------------------------------------------------- policy

    def check_target(self, target: int | str | Target | None) -> int | Target | None:
        """The class index ``target`` means: an index, or a class name (any case, or an
        unambiguous prefix). A callable target (see :mod:`camwidget.targets`) and None
        (the model's top answer) stay as they are. Raises in words."""
        if target is None or (callable(target) and not isinstance(target, type)):
            return target
        if isinstance(target, str):
            names = [self.label(i) for i in range(self.num_classes)] if self.labels else None
            return resolve_target(target, names, self.num_classes)
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            raise CamwidgetError(
                f"target must be a class index (int), a class name or a callable "
                f"(camwidget.targets), not {target!r}"
            )
        return check_index(int(target), self.num_classes)

    def why_not(self, method: str, layer: str | None = None) -> str | None:
        """Why ``method`` does not apply at ``layer``, in words; None where it does."""
        spec, info = methods.get(method), self.layer(layer)
        if spec.applies(info):
            return None
        return (
            f"{spec.title} does not apply at layer {info.name!r}: "
            f"{spec.requirement.format(layer=info.name)}"
        )

    def resolve(
        self,
        method: str = "gradcam",
        layer: str | None = None,
        target: int | str | Target | None = None,
        *,
        fallback: bool = False,
    ) -> Resolved:
        """Check a request and fill in its defaults: the layer (None: the default layer),
        the method, and the target (see :meth:`check_target`).

        A method that does not apply at the layer raises, saying where it applies;
        with ``fallback`` its fallback method is chosen instead, with a note.
        """
        info = self.layer(layer)
        spec = methods.get(method)
        target = self.check_target(target)
        reason = self.why_not(method, info.name)
        if reason is None:
            return Resolved(spec.name, info.name, target, None)
        if fallback and spec.fallback is not None:
            instead = methods.get(spec.fallback).title
            note = f"{spec.title} does not apply at {info.name}: switched to {instead}"
            return Resolved(spec.fallback, info.name, target, note)
        where = [other.name for other in self.layers if spec.applies(other)]
        applies = (
            f"{spec.title} applies at: {', '.join(where)}."
            if where
            else (f"{spec.title} applies at no layer of this model.")
        )
        suggestion = f" Use method={spec.fallback!r}." if spec.fallback else ""
        raise CamwidgetError(f"{reason}. {applies}{suggestion}")

    # ----------------------------------------------------------------- images

    def prepare(self, image: object) -> PreparedImage:
        """Read and preprocess ``image`` (path, bytes, PIL, HWC array, CHW tensor)."""
        if isinstance(image, PreparedImage):
            if not self._resizes(image):
                return image
            image = image.source  # prepared before the model's input size was learned
        if isinstance(image, Tensor):
            inputs = image.detach()
            if inputs.dim() == 3:
                inputs = inputs[None]
            source, notes = inputs, ()
            size = (inputs.shape[-2], inputs.shape[-1])
        else:
            source = images.to_rgb(image)
            fitted, note = images.fit(source, self.max_side)
            notes = tuple(n for n in (note, self._resize_note(fitted)) if n)
            inputs = self._preprocess(fitted)
            size = source.shape[:2]
        if inputs.dim() != 4 or inputs.shape[:2] != (1, 3) or not inputs.is_floating_point():
            raise CamwidgetError(
                f"a preprocessed image must be a float tensor (3, H, W) or (1, 3, H, W); "
                f"got {tuple(inputs.shape)} {inputs.dtype}"
            )
        inputs = inputs.to(self.device, self.dtype).contiguous()
        return PreparedImage(inputs=inputs, size=size, notes=notes, source=source)

    def _resizes(self, image: PreparedImage) -> bool:
        """Whether ``image`` must be prepared again: the model's input size is now known
        and ``image`` was read from pixels at another size."""
        size = self.model_input.size
        return (
            self.preprocess is None
            and size is not None
            and isinstance(image.source, np.ndarray)
            and tuple(image.inputs.shape[-2:]) != size
        )

    def _resize_note(self, rgb: np.ndarray) -> str | None:
        size = self.model_input.size
        if self.preprocess is not None or size is None or rgb.shape[:2] == size:
            return None
        return f"resized to {size[1]}×{size[0]} for the model ({self.model_input.source})"

    def _learn_input_size(self, image: PreparedImage) -> bool:
        """After the model failed on ``image``: whether it takes the size it was made for
        instead (then every image is resized to it)."""
        size = self.model_input.preferred
        if self.preprocess is not None or self.model_input.size is not None:
            return False
        if not isinstance(image.source, np.ndarray) or self._worked_at - {size}:
            return False  # the model has taken another size: it does not need one size
        probe = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        try:
            self._forward(probe.to(self.device, self.dtype))
        except CamwidgetError:
            return False
        height, width = image.inputs.shape[-2:]
        self.model_input = self.model_input.at_size(
            size, f"it failed at {width}×{height} and works at {size[1]}×{size[0]}"
        )
        return True

    def _preprocess(self, rgb: np.ndarray) -> Tensor:
        if self.preprocess is None:
            return self.model_input(rgb)
        from PIL import Image

        try:
            inputs = self.preprocess(Image.fromarray(rgb))
        except Exception as error:
            raise CamwidgetError(
                f"the preprocess function failed: {type(error).__name__}: {error}"
            ) from error
        if not isinstance(inputs, Tensor):
            raise CamwidgetError(
                f"the preprocess function must return a torch tensor, not {type(inputs).__name__}"
            )
        return inputs[None] if inputs.dim() == 3 else inputs

    # ----------------------------------------------------------------- passes

    def _forward(
        self, inputs: Tensor, layers: set[str] | None = None, graph_from: str | None = None
    ) -> Capture:
        def run() -> Capture:
            return capture_.forward(
                self.model, inputs, layers, self._copies, graph_from, self.reshape, self._select
            )

        capture = run()
        if capture.modified - self._copies:  # a kept map was rewritten in place: redo
            self._copies |= capture.modified
            self.passes["forward"] += 1
            capture = run()
        self._num_classes = self._classes(capture.output)
        self._worked_at.add(tuple(inputs.shape[-2:]))
        self.passes["forward"] += 1
        if not capture.activations and layers is None:
            raise CamwidgetError(
                "this model has no layer whose output is a feature map: (N, C, H, W) "
                "from a convolution, (N, H, W, C) channels-last or (N, T, C) tokens on a "
                "grid over the image; class activation maps need one (or give reshape=)"
            )
        return capture

    def _select(self, output: object) -> Tensor | list[dict]:
        """The part of the model's ``output`` to explain: the user's ``output`` function
        first, then :func:`camwidget.outputs.select`."""
        if self.output is not None:
            try:
                output = self.output(output)
            except CamwidgetError:
                raise
            except Exception as error:
                raise CamwidgetError(
                    f"the output function failed: {type(error).__name__}: {error}"
                ) from error
        return outputs.select(output)

    def _classes(self, output: Tensor | list[dict]) -> int:
        if outputs.kind(output) != "detections":
            return output.shape[1]
        return (
            len(self.labels)
            if self.labels
            else 1 + max((int(d["labels"].max()) for d in output if len(d["labels"])), default=0)
        )

    def _target(self, capture: Capture, target: int | Target | None, row: int) -> Target:
        """The target object for image ``row``: a callable as it is, a class index as
        its kind of output reads it, None as the model's top answer."""
        one = outputs.one(capture.output, row)
        if target is None:
            return outputs.default_target(one)
        if callable(target):
            return target
        return outputs.as_target(int(target), one)

    def _score(self, capture: Capture, target: Target, row: int) -> Tensor:
        """``target``'s value on image ``row``'s output: one number, on the graph."""
        try:
            value = target(outputs.one(capture.output, row))
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

    def _prepared_capture(
        self, image: object, timings: dict[str, float]
    ) -> tuple[PreparedImage, Capture]:
        """``image`` prepared, and its forward pass (cached). A model that fails at the
        image's own size but works at 224×224 is given that size from then on."""
        prepared = self.prepare(image)
        try:
            return prepared, self._capture(prepared, timings)
        except CamwidgetError:
            if not self._learn_input_size(prepared):
                raise
        prepared = self.prepare(prepared)
        return prepared, self._capture(prepared, timings)

    def _capture(self, image: PreparedImage, timings: dict[str, float]) -> Capture:
        capture = self._captures.get(image.key)
        if capture is not None:
            self._captures.move_to_end(image.key)
        else:
            while len(self._captures) >= self.max_images:  # first: the pass reuses its memory
                self._forget(next(iter(self._captures)))
            start = time.perf_counter()
            capture = self._forward(image.inputs)
            timings["forward"] = _ms(start)
            self._captures[image.key] = capture
            self._catalogues[image.key] = self._catalogue(capture)
        self._current = _Catalogue(self._catalogues[image.key], capture)
        return capture

    def _forget(self, key: str) -> None:
        del self._captures[key]
        del self._catalogues[key]
        for cache in (self._gradients, self._gradient_sizes, self._maps, self._pixels):
            for entry in [k for k in cache if k[0] == key]:
                del cache[entry]

    def _gradient(
        self,
        image: PreparedImage,
        capture: Capture,
        target: Target,
        layer: str,
        timings: dict[str, float],
    ) -> Tensor:
        """d target / dA at ``layer``, backward only as deep as needed.

        The first request for (image, target) back-propagates to ``layer`` and every
        layer after it (they lie on the way); the first request for an earlier layer
        completes every layer in one more partial backward. Everything else is a lookup.
        Targets are told apart by value (:func:`camwidget.targets.key`).
        """
        key = (image.key, target_key(target))
        grads = self._gradients.get(key)
        if grads is not None:
            self._gradients.move_to_end(key)
            if layer in grads:
                return grads[layer]
        names = list(capture.activations)
        wanted = names[names.index(layer) :] if grads is None else names
        wanted = [name for name in wanted if grads is None or name not in grads]
        start = time.perf_counter()
        found = capture_.backward(capture, self._score(capture, target, 0), wanted)
        self.passes["backward"] += 1
        timings["backward"] = _ms(start)
        grads = self._gradients.setdefault(key, {})
        grads.update(found)
        self._gradient_sizes[key] = _nbytes(grads)
        while len(self._gradients) > 1 and sum(self._gradient_sizes.values()) > self.gradient_bytes:
            del self._gradient_sizes[self._gradients.popitem(last=False)[0]]
        return grads[layer]

    # ----------------------------------------------------------------- answers

    def predict(self, image: object, k: int = 5) -> list[tuple[int, str, float]]:
        """The model's top answers, (class index, label, value), best first: the ``k``
        most probable classes (with ``activation="sigmoid"``: every class above 0.5),
        the ``k`` classes with the most predicted pixels (value: their share), or the
        ``k`` best detections (value: their score)."""
        _, capture = self._prepared_capture(image, {})
        ranked = outputs.ranking(outputs.one(capture.output, 0), self.activation, k)
        return [(index, self.label(index), value) for index, value in ranked]

    def detections(self, image: object) -> list[outputs.Detection]:
        """A detector's detections in ``image``, best first: each with its ``box`` in the
        image's own pixels and the ``target`` that explains it."""
        prepared, capture = self._prepared_capture(image, {})
        one = outputs.one(capture.output, 0)
        if not isinstance(one, dict):
            raise CamwidgetError("this model is not a detector: it returns no boxes")
        return [d._replace(box=_to_image(d.box, prepared)) for d in outputs.detections(one)]

    def scores(
        self,
        image: object,
        target: int | str | Target | None = None,
        inputs: Tensor | None = None,
        *,
        score: str = "probability",
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> Tensor:
        """``target``'s score on ``image`` (a 0-d tensor, from the cached forward), or on
        each of ``inputs`` (M, 3, h, w): variants of the image's model input, scored in
        batches of ``batch_size`` without autograd. ``score``: ``"probability"`` (a
        class's probability by the explainer's activation; any other target's value)
        or ``"logit"`` (the target's value)."""
        if score not in ("probability", "logit"):
            raise CamwidgetError(f"score must be 'probability' or 'logit', not {score!r}")
        _, capture = self._prepared_capture(image, {})
        chosen = self._target(capture, self.check_target(target), 0)
        scorer = self._masked_score(chosen) if score == "probability" else _values(chosen)
        if inputs is None:
            return scorer(capture.output)[0].detach()
        step = max(1, batch_size)
        batches = (inputs[start : start + step] for start in range(0, len(inputs), step))
        return capture_.score_inputs(
            self.model, batches, scorer, len(inputs), progress, self._select
        ).detach()

    def embedding(self, image: object) -> Tensor:
        """The model's output for ``image`` as one flat vector, detached: the reference
        for :class:`camwidget.targets.Similarity`."""
        _, capture = self._prepared_capture(image, {})
        one = outputs.one(capture.output, 0)
        if not isinstance(one, Tensor):
            raise CamwidgetError("this model's output is not a tensor: it has no embedding")
        return one.detach().flatten().float()

    def explain(
        self,
        image: object,
        layer: str | None = None,
        target: int | str | Target | None = None,
        method: str = "gradcam",
        *,
        progress: Progress | None = None,
    ) -> Explanation:
        """Explain ``target`` at ``layer`` with ``method``.

        ``target``: a class index or name, a callable (see :mod:`camwidget.targets`), or
        None for the model's top answer (the top-1 class, the class with the most
        predicted pixels, the best detection). ``progress(done, total)`` is called while
        a method scores masked inputs.
        """
        timings = {"forward": 0.0, "backward": 0.0, "map": 0.0}
        image, capture = self._prepared_capture(image, timings)
        method, layer, target, _ = self.resolve(method, layer, target)
        spec = methods.get(method)
        host = capture.on_host()
        target = self._target(host, target, 0)
        key = (image.key, target_key(target), layer, method, *self._options(spec).values())
        raw = self._maps.get(key)
        if raw is None:
            grads = None
            if spec.needs_gradients:
                grads = self._gradient(image, capture, target, layer, timings)
            start = time.perf_counter()
            raw = self._raw(
                spec, capture, layer, 0, target, grads, image.inputs, progress, image.key
            )
            raw = raw.cpu().numpy()
            timings["map"] = _ms(start)
            self._maps[key] = raw
            while len(self._maps) > 1024:
                self._maps.popitem(last=False)
        numbers = self._numbers(capture, [target])[0]
        return self._finish(raw, image, host, 0, (layer, method), target, numbers, timings)

    def explain_batch(
        self,
        images_: Sequence[object],
        layer: str | None = None,
        targets: Sequence[int | str | Target | None] | None = None,
        method: str = "gradcam",
    ) -> list[Explanation]:
        """Explain many images at once: one batched forward and one backward per group of
        images of equal input size. Nothing is cached; only ``layer`` is hooked."""
        prepared = [self.prepare(image) for image in images_]
        targets = [None] * len(prepared) if targets is None else list(targets)
        if len(targets) != len(prepared):
            raise CamwidgetError(f"got {len(prepared)} images but {len(targets)} targets")
        method, layer, _, _ = self.resolve(method, layer)
        targets = [self.check_target(target) for target in targets]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(prepared):
            groups.setdefault(tuple(image.inputs.shape), []).append(index)
        results: dict[int, Explanation] = {}
        for indices in groups.values():
            group = [(prepared[i], targets[i]) for i in indices]
            try:
                explained, _ = self._explain_group(group, layer, methods.get(method))
            except CamwidgetError:
                if not self._learn_input_size(group[0][0]):
                    raise
                return self.explain_batch(prepared, layer, targets, method)  # resized
            results.update(zip(indices, explained, strict=True))
        return [results[i] for i in range(len(prepared))]

    def explain_inputs(
        self,
        inputs: Tensor,
        layer: str | None = None,
        targets: Sequence[int | str | Target | None] | None = None,
        method: str = "gradcam",
    ) -> tuple[list[Explanation], Tensor | list[dict]]:
        """Explain a batch of model inputs (N, 3, H, W), already preprocessed, as
        :meth:`explain_batch` does; also return the model's output for the batch (the
        part explained, on the CPU), e.g. for predictions and losses."""
        if inputs.dim() != 4 or inputs.shape[1] != 3:
            raise CamwidgetError(f"inputs must be (N, 3, H, W); got {tuple(inputs.shape)}")
        inputs = inputs.to(self.device, self.dtype)
        targets = [None] * len(inputs) if targets is None else list(targets)
        if len(targets) != len(inputs):
            raise CamwidgetError(f"got {len(inputs)} inputs but {len(targets)} targets")
        method, layer, _, _ = self.resolve(method, layer)
        size = (inputs.shape[-2], inputs.shape[-1])
        group = [
            (PreparedImage(inputs=row[None], size=size), self.check_target(target))
            for row, target in zip(inputs, targets, strict=True)
        ]
        explained, host = self._explain_group(group, layer, methods.get(method))
        return explained, host.output

    def _explain_group(
        self, group: list[tuple[PreparedImage, object]], layer: str, spec: methods.Method
    ) -> tuple[list[Explanation], Capture]:
        """Images of one input size with their targets: one forward, one backward; the
        explanations and the capture's output on the host.

        The batch goes in channels-last (1.3-1.7x faster convolutions on CPU at 16
        images, with the model untouched), with autograd recorded from ``layer`` on.
        """
        inputs = torch.cat([image.inputs for image, _ in group])
        if len(group) > 1:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        capture = self._forward(inputs, {layer}, graph_from=layer)
        if layer not in capture.activations:
            raise CamwidgetError(f"layer {layer!r} did not run for this batch")
        host = capture.on_host()
        chosen = [self._target(host, target, row) for row, (_, target) in enumerate(group)]
        numbers = self._numbers(capture, chosen)
        grads = None
        if spec.needs_gradients:
            total = torch.stack([self._score(capture, t, row) for row, t in enumerate(chosen)])
            grads = capture_.backward(capture, total.sum(), {layer}, retain=False)[layer]
            self.passes["backward"] += 1
        raws = [
            self._raw(spec, capture, layer, row, target, grads, inputs[row : row + 1])
            for row, target in enumerate(chosen)
        ]
        raws = torch.stack(raws).cpu().numpy()  # one copy for the batch
        explained = [
            self._finish(raw, image, host, row, (layer, spec.name), target, number, {})
            for row, (raw, (image, _), target, number) in enumerate(
                zip(raws, group, chosen, numbers, strict=True)
            )
        ]
        return explained, host

    # ----------------------------------------------------------------- helpers

    def _options(self, spec: methods.Method) -> dict[str, object]:
        """The settings of this explainer that change ``spec``'s map."""
        return {name: getattr(self, name) for name in spec.options}

    def _raw(
        self,
        spec: methods.Method,
        capture: Capture,
        layer: str,
        row: int,
        target: Target,
        gradients: Tensor | None,
        inputs: Tensor,
        progress: Progress | None = None,
        image_key: str | None = None,
    ) -> Tensor:
        """``spec``'s raw map for row ``row`` of ``capture`` at ``layer``, float32 on the
        model's device; ``gradients`` of the whole batch in the layer's own layout (None:
        not needed); ``image_key``: where the guided gradient may be cached."""
        layout = capture.layouts[layer]
        activations = layout.to_nchw(capture.activations[layer].detach())[row].float()
        if gradients is None:
            gradients = torch.zeros_like(activations)
        else:
            gradients = layout.to_nchw(gradients)[row].float()
        context = self._context(spec, capture, layer, row, target, inputs, progress, image_key)
        return spec.fn(activations, gradients, context).detach().float()

    def _pixel(self, kind: str, inputs: Tensor, target: Target, image_key: str | None) -> Tensor:
        """The input attribution (3, H, W) of ``target`` for ``inputs`` (1, 3, H, W):
        ``"guided"`` backpropagation or ``"lrp"`` relevance (under ``lrp_composite``). One
        forward and one backward per (image, target[, composite]), kept with the image's
        other passes."""
        variant = self.lrp_composite if kind == "lrp" else None
        key = (image_key, target_key(target), kind, variant)
        if image_key is not None and key in self._pixels:
            return self._pixels[key]

        def score(output: object) -> Tensor:
            return self._score(Capture(self._select(output), {}, {}), target, 0)

        if kind == "lrp":
            found = lrp.relevance(self.model, inputs, score, variant, self._input_bounds())
        else:
            found = pixel.guided_backprop(self.model, inputs, score)
        self.passes["forward"] += 1
        self.passes["backward"] += 1
        if image_key is not None:
            self._pixels[key] = found
            while len(self._pixels) > 16:
                self._pixels.popitem(last=False)
        return found

    def _input_bounds(self) -> tuple[Tensor, Tensor] | None:
        """The lowest and highest model input, per channel (1, 3, 1, 1), where the model's
        normalisation is known (pixels 0 and 1 normalised), else None."""
        if self.preprocess is not None:
            return None
        mean = torch.tensor(self.model_input.mean, device=self.device).reshape(1, 3, 1, 1)
        std = torch.tensor(self.model_input.std, device=self.device).reshape(1, 3, 1, 1)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def _context(
        self,
        spec: methods.Method,
        capture: Capture,
        layer: str,
        row: int,
        target: Target,
        inputs: Tensor,
        progress: Progress | None,
        image_key: str | None,
    ) -> methods.MethodContext:
        """What ``spec`` may need besides the maps; the extra passes run only when the
        method calls for them."""
        weights = None
        if isinstance(target, Class) and capture.logits is not None and self.layer(layer).cam:
            weights = final_linear(self.model, capture).weight.detach()[target.index].float()
        return methods.MethodContext(
            class_weights=weights,
            score=partial(self._score_masks, inputs, target, progress),
            ablate=partial(
                self._score_ablated, inputs, capture.layouts[layer], layer, target, progress
            ),
            guided=partial(self._pixel, "guided", inputs, target, image_key),
            relevance=partial(self._pixel, "lrp", inputs, target, image_key),
            target_score=self._score(capture, target, row).detach().float(),
            input_size=(inputs.shape[-2], inputs.shape[-1]),
            options=self._options(spec),
        )

    def _score_masks(
        self, inputs: Tensor, target: Target, progress: Progress | None, masks: Tensor
    ) -> Tensor:
        """The target's score on ``inputs`` under each mask (Score-CAM)."""
        scores = capture_.score_masked(
            self.model,
            inputs,
            masks.to(inputs.dtype),
            self._masked_score(target),
            self.scorecam_batch_size,
            progress,
            self._select,
        )
        self.passes["scored"] += len(masks)
        return scores

    def _score_ablated(
        self,
        inputs: Tensor,
        layout: Layout,
        layer: str,
        target: Target,
        progress: Progress | None,
        channels: Tensor,
    ) -> Tensor:
        """The target's score with each of ``channels`` of ``layer`` set to zero."""
        scores = capture_.score_ablated(
            self.model,
            inputs,
            layer,
            layout,
            channels,
            _values(target),
            self.ablation_batch_size,
            progress,
            self._select,
        )
        self.passes["scored"] += len(channels)
        return scores

    def _masked_score(self, target: Target) -> Callable[[object], Tensor]:
        """How a batch of perturbed inputs is scored (Score-CAM, the metrics): a class's
        probability (Score-CAM's authors' variant), any other target's value."""
        values = _values(target)

        def score(output: Tensor | list[dict]) -> Tensor:
            if isinstance(target, Class) and outputs.kind(output) == "logits":
                return outputs.activate(output, self.activation)[:, target.index]
            return values(output)

        return score

    def _numbers(
        self, capture: Capture, targets: Sequence[Target]
    ) -> list[tuple[float, float | None]]:
        """Each row's score and, for a class, its probability: read in one copy to the
        host (not one wait on the GPU per number)."""
        scores = torch.stack(
            [self._score(capture, t, row).detach().float() for row, t in enumerate(targets)]
        )
        probabilities = torch.full_like(scores, float("nan"))
        logits = capture.logits
        rows = [row for row, t in enumerate(targets) if isinstance(t, Class)]
        if logits is not None and rows:
            indices = [targets[row].index for row in rows]
            probabilities[rows] = outputs.activate(logits[rows], self.activation)[
                torch.arange(len(rows)), indices
            ].to(scores.device)
        pairs = torch.stack([scores, probabilities], dim=1).cpu().tolist()
        return [(score, None if p != p else p) for score, p in pairs]  # NaN: no class

    def _finish(
        self,
        raw: np.ndarray,
        image: PreparedImage,
        host: Capture,
        row: int,
        where: tuple[str, str],
        target: Target,
        numbers: tuple[float, float | None],
        timings: Mapping[str, float],
    ) -> Explanation:
        """The explanation of row ``row``: ``host`` is the capture's output on the CPU,
        ``where`` the (layer, method), ``numbers`` the row's score and probability; a
        pixel-level ``raw`` (3, H, W) is kept as the attribution and summed over colour."""
        attribution = raw if raw.ndim == 3 else None
        raw = raw.sum(axis=0) if attribution is not None else raw
        if isinstance(target, Class) and host.logits is not None:
            shown, label = target.index, self.label(target.index)
        else:
            shown, label = target, describe(target, self.label)
        region = None
        if isinstance(target, Region):
            mask = target.region(outputs.one(host.output, row))
            region = render.upsample(mask.numpy(), image.size) >= 0.5
        box = _to_image(target.box, image) if isinstance(target, Box) else None
        return Explanation(
            raw=raw,
            size=image.size,
            layer=where[0],
            target=shown,
            method=where[1],
            score=numbers[0],
            label=label,
            probability=numbers[1],
            timings=timings,
            region=region,
            box=box,
            attribution=attribution,
        )


def _nbytes(tensors: Mapping[str, Tensor]) -> int:
    """Bytes of the distinct tensors among ``tensors`` (layers may share one)."""
    unique = {id(t): t for t in tensors.values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def _values(target: Target) -> Callable[[object], Tensor]:
    """``target``'s value on each image of a batch's output."""

    def values(output: Tensor | list[dict]) -> Tensor:
        count = outputs.rows(output)
        return torch.stack([target(outputs.one(output, row)).reshape(()) for row in range(count)])

    return values


def _to_image(box: tuple[float, ...], image: PreparedImage) -> tuple[float, ...]:
    """A box in pixels of the model's input -> in pixels of the image."""
    height, width = image.inputs.shape[-2:]
    scale = (image.size[1] / width, image.size[0] / height) * 2
    return tuple(float(v) * s for v, s in zip(box, scale, strict=True))


def _placement(
    model: nn.Module, device: str | torch.device | None
) -> tuple[torch.device, torch.dtype]:
    tensors = list(model.parameters()) + list(model.buffers())
    own = tensors[0].device if tensors else torch.device("cpu")
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    dtype = floats[0] if floats else torch.float32
    if device is not None and torch.device(device) != own:
        wanted = torch.device(device)
        if not (wanted.type == own.type and wanted.index is None):
            raise CamwidgetError(
                f"the model is on {own}, not {wanted}: move it first (model.to({str(wanted)!r})) "
                "or leave device=None; camwidget never moves your model"
            )
    return own, dtype


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
