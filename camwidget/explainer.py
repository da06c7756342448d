"""The engine: one forward per image, one partial backward per target, maps cached.

image -> prepare -> forward (cache: image) -> backward (cache: image, target)
      -> method (cache: image, target, layer, method, options) -> upsample + normalise

The Explainer answers requests; the passes (:mod:`camwidget.passes`), image preparation
(:mod:`camwidget.preparation`), the model and its device (:mod:`camwidget.placement`),
scoring (:mod:`camwidget.scoring`), the inputs of a method (:mod:`camwidget.requests`),
batches (:mod:`camwidget.batch`) and building an :class:`Explanation`
(:mod:`camwidget.explanation`) each live in their own module.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import memory, methods, outputs, scoring, smoothing
from .batch import Batches
from .capture import Capture
from .errors import CamwidgetError
from .explanation import Explanation, PreparedImage, Resolved, explained, to_image
from .inputs import ModelInput, model_input
from .kept import Kept
from .labels import check_index, declared, resolve_target, unnamed
from .layers import Catalogues, LayerInfo, Listing
from .layouts import Reshape
from .options import MethodOptions
from .passes import Passes, Progress
from .placement import placement, unwrapped
from .preparation import Preparation, Preprocess
from .requests import MapRequest, Services, raw_map
from .targets import Target
from .targets import key as target_key

__all__ = ["Explainer", "Explanation", "PreparedImage", "Progress", "imagenet_preprocess"]
ACTIVATIONS = (None, "softmax", "sigmoid")


def imagenet_preprocess(image: object) -> Tensor:
    """ImageNet mean/std normalisation at the image's own size -> float tensor (3, H, W)."""
    return ModelInput()(np.asarray(image))[0]


def _locked(method: Callable) -> Callable:
    """Hold the explainer's lock for the call: passes and caches are one thread's at a
    time (a panel's worker and the notebook may share an explainer)."""

    @functools.wraps(method)
    def call(self: Explainer, *args: object, **kwargs: object) -> object:
        with self.runner.lock:
            return method(self, *args, **kwargs)

    return call


class Explainer(MethodOptions, Batches):
    """Explains a PyTorch image model with class activation maps: a classifier, a
    segmentation or detection model, or an embedding (see :mod:`camwidget.outputs` and
    :mod:`camwidget.targets`).

    ``preprocess`` maps a PIL RGB image to a float tensor (C, H, W) or (1, C, H, W),
    or to a mapping with ``pixel_values`` (a Hugging Face image processor). By default:
    the model's declared normalisation, timm's ``pretrained_cfg``, else ImageNet's mean
    and std (see :mod:`camwidget.inputs`), at the image's own size, resized only for a
    model that takes one input size: declared, or learned by trying sizes when it fails
    at the image's size. A model wrapped by ``torch.compile`` or ``DataParallel`` is
    explained through the model it wraps. ``labels``: class names, a sequence or a
    mapping index -> name. ``device``: where inputs go; by default the model's own (the
    model is never moved). ``reshape``: layer name -> a function that turns that
    layer's output into (N, C, h, w), for layouts camwidget does not find itself. Images
    whose long side exceeds ``max_side`` are downscaled for the model. The passes of
    the last ``max_images`` images are kept; the gradients of the latest classes within
    ``gradient_bytes``. ``output``: picks the part of the model's output to explain.
    ``activation``: how logits become probabilities: None (softmax, or sigmoid for one
    output), ``"softmax"`` or ``"sigmoid"`` (multi-label). ``keep_freed_memory``: see
    :mod:`camwidget.memory`. ``**options``: the methods' options as keywords, e.g.
    ``scorecam_batch_size=64`` (:func:`camwidget.methods.keywords` lists them; each is
    also an attribute).
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
        reshape: Mapping[str, Reshape] | None = None,
        output: Callable[[object], object] | None = None,
        activation: str | None = None,
        keep_freed_memory: bool = True,
        **options: object,
    ) -> None:
        model = unwrapped(model)
        if activation not in ACTIVATIONS:
            raise CamwidgetError(
                f"activation must be None, 'softmax' or 'sigmoid', not {activation!r}"
            )
        if keep_freed_memory:
            memory.keep_freed_memory()
        super().__init__(options)
        self.model, self._labels, self.activation = model, labels, activation
        self.max_images, self.gradient_bytes = max(1, max_images), gradient_bytes
        self.device, self.dtype = placement(model, device)
        #: The model's passes; ``runner.lock`` is held around every pass and cache use.
        self.runner = Passes(model, output, reshape)
        #: Counts of model passes run so far: "forward", "backward", "scored".
        self.passes = self.runner.counts
        self.preparation = Preparation(
            model_input(model), preprocess, max_side, self.device, self.dtype
        )
        self.clear()

    @property
    def preprocess(self) -> Preprocess | None:
        return self.preparation.preprocess

    @property
    def model_input(self) -> ModelInput:
        """What the model wants as input when ``preprocess`` is None."""
        return self.preparation.model_input

    @_locked
    def clear(self) -> None:
        """Forget every cached pass and map (e.g. after changing the model's weights)."""
        self._kept = Kept(self.max_images, self.gradient_bytes)
        self._lists = Catalogues(self.model)
        self._current: Listing | None = None  # the list of the latest image
        self._num_classes: int | None = None

    close = clear

    @property
    def services(self) -> Services:
        """What this explainer lends a method (see :mod:`camwidget.requests`)."""
        return Services(
            self.runner, self._kept.pixels, self.activation, self.preparation.input_bounds
        )

    # ----------------------------------------------------------------- catalogue

    @property
    def layers(self) -> list[LayerInfo]:
        """Catalogued layers in execution order, shapes for the last image's size."""
        return (self._current or self._probe()).layers

    @property
    @_locked
    def default_layer(self) -> str:
        """The layer shown first: for a classifier, the last layer on the model's final
        grid whose gradient for the top-1 class is not identically zero (see
        :func:`camwidget.layers.default_layer`)."""
        current = self._current or self._probe()
        output = current.capture.output

        def score() -> Tensor:
            return scoring.score(output, scoring.target_for(output, None, 0), 0)

        return self._lists.default(current, score)

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
        return current.find(self.default_layer if name is None else name)

    @property
    def labels(self) -> Sequence[str] | Mapping[int, str] | None:
        """The class names: as given, else those the model carries (a zero-shot model's
        prompts as they are now, a Hugging Face config's ``id2label``)."""
        return self._labels if self._labels is not None else declared(self.model)

    def label(self, index: int) -> str:
        """The name of class ``index`` (``"class 281"`` when no labels were given)."""
        labels = self.labels
        if isinstance(labels, Mapping):
            return str(labels.get(index, unnamed(index)))
        if labels is not None and 0 <= index < len(labels):
            return str(labels[index])
        return unnamed(index)

    @_locked
    def _probe(self) -> Listing:
        """Catalogue the layers from a random input at the model's size (learnt here
        where the model takes one small size only, see :meth:`learn_input_size`)."""
        try:
            capture = self.forward(self.preparation.probe())
        except CamwidgetError as error:
            if not self.learn_input_size(None):
                height, width = self.preparation.probe().shape[-2:]
                raise CamwidgetError(
                    f"could not list the layers with a {height}×{width} probe input "
                    f"({error}); explain an image of a size the model accepts first"
                ) from None
            capture = self.forward(self.preparation.probe())
        self._current = Listing(self._lists.of(capture), capture)
        return self._current

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
        if not spec.suits(self.model):
            return f"{spec.title} does not apply to this model: {spec.requirement}"
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
        info, spec = self.layer(layer), methods.get(method)
        target = self.check_target(target)
        reason = self.why_not(method, info.name)
        if reason is None:
            return Resolved(spec.name, info.name, target, None)
        if fallback and spec.fallback is not None:
            instead = methods.get(spec.fallback).title
            note = f"{reason.split(':')[0]}: switched to {instead}"
            return Resolved(spec.fallback, info.name, target, note)
        raise CamwidgetError(f"{reason}. {methods.where_it_applies(spec, self.layers)}")

    # ----------------------------------------------------------------- passes

    def prepare(self, image: object) -> PreparedImage:
        """Read and preprocess ``image`` (path, bytes, PIL, HWC array, CHW tensor)."""
        return self.preparation(image)

    def forward(
        self, inputs: Tensor, layers: set[str] | None = None, graph_from: str | None = None
    ) -> Capture:
        """One forward through the model's passes (see :meth:`Passes.forward`); the model's
        class count and the input sizes it takes are learned on the way."""
        capture = self.runner.forward(inputs, layers, graph_from)
        self._num_classes = scoring.class_count(capture.output, self.labels)
        self.preparation.worked_at.add(tuple(inputs.shape[-2:]))
        return capture

    def learn_input_size(self, image: PreparedImage | None) -> bool:
        """After the model failed on ``image`` (None: on the probe input): whether it
        takes the size it was made for, or a common small one, instead (then every image
        is resized to it)."""
        return self.preparation.learn_input_size(image, self.forward)

    def _prepared_capture(
        self, image: object, timings: dict[str, float]
    ) -> tuple[PreparedImage, Capture]:
        """``image`` prepared, and its forward pass (cached). A model that fails at the
        image's own size but works at 224×224 is given that size from then on."""
        prepared = self.prepare(image)
        try:
            return prepared, self._capture(prepared, timings)
        except CamwidgetError:
            if not self.learn_input_size(prepared):
                raise
        prepared = self.prepare(prepared)
        return prepared, self._capture(prepared, timings)

    def _capture(self, image: PreparedImage, timings: dict[str, float]) -> Capture:
        kept = self._kept
        capture = kept.captures.get(image.key)
        if capture is None:
            kept.captures.shrink(room=1)  # first: the pass reuses the memory it frees
            start = time.perf_counter()
            capture = self.forward(image.inputs)
            timings["forward"] = _ms(start)
            kept.captures.put(image.key, capture)
            kept.layers[image.key] = self._lists.of(capture)
        self._current = Listing(kept.layers[image.key], capture)
        return capture

    def _gradient(
        self, image: PreparedImage, capture: Capture, target: Target, layer: str, timings: dict
    ) -> Tensor:
        """d target / dA at ``layer`` (see :meth:`Kept.gradient`); targets are told apart
        by value (:func:`camwidget.targets.key`)."""

        def backward(layers: list[str]) -> dict[str, Tensor]:
            start = time.perf_counter()
            score = scoring.score(capture.output, target, 0)
            found = self.runner.backward(capture, score, layers)
            timings["backward"] = _ms(start)
            return found

        return self._kept.gradient((image.key, target_key(target)), capture, layer, backward)

    # ----------------------------------------------------------------- answers

    @_locked
    def predict(self, image: object, k: int = 5) -> list[tuple[int, str, float]]:
        """The model's top answers, (class index, label, value), best first: the ``k``
        most probable classes (with ``activation="sigmoid"``: every class above 0.5),
        the ``k`` classes with the most predicted pixels (value: their share), or the
        ``k`` best detections (value: their score)."""
        _, capture = self._prepared_capture(image, {})
        ranked = outputs.ranking(outputs.one(capture.output, 0), self.activation, k)
        return [(index, self.label(index), value) for index, value in ranked]

    @_locked
    def detections(self, image: object) -> list[outputs.Detection]:
        """A detector's detections in ``image``, best first: each with its ``box`` in the
        image's own pixels and the ``target`` that explains it."""
        prepared, capture = self._prepared_capture(image, {})
        one = outputs.one(capture.output, 0)
        if not isinstance(one, dict):
            raise CamwidgetError("this model is not a detector: it returns no boxes")
        return [d._replace(box=to_image(d.box, prepared)) for d in outputs.detections(one)]

    @_locked
    def scores(
        self,
        image: object,
        target: int | str | Target | None = None,
        inputs: Tensor | None = None,
        *,
        score: str = "probability",
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """``target``'s score on ``image`` (a 0-d tensor, from the cached forward), or on
        each of ``inputs`` (M, 3, h, w): variants of the image's model input, scored in
        batches of ``batch_size`` (None: see :func:`camwidget.passes.batch_size`)
        without autograd. ``score``: ``"probability"`` (a
        class's probability by the explainer's activation; any other target's value)
        or ``"logit"`` (the target's value)."""
        if score not in ("probability", "logit"):
            raise CamwidgetError(f"score must be 'probability' or 'logit', not {score!r}")
        _, capture = self._prepared_capture(image, {})
        chosen = scoring.target_for(capture.output, self.check_target(target), 0)
        if score == "probability":
            scorer = scoring.probabilities(chosen, self.activation)
        else:
            scorer = scoring.values(chosen)
        if inputs is None:
            return scorer(capture.output)[0].detach()
        return self.runner.score_inputs(inputs, scorer, batch_size, progress).detach()

    @_locked
    def embedding(self, image: object) -> Tensor:
        """The model's output for ``image`` as one flat vector, detached: the reference
        for :class:`camwidget.targets.Similarity`."""
        _, capture = self._prepared_capture(image, {})
        one = outputs.one(capture.output, 0)
        if not isinstance(one, Tensor):
            raise CamwidgetError("this model's output is not a tensor: it has no embedding")
        return one.detach().flatten().float()

    def _smoothed(
        self, image: PreparedImage, layer: str, target: Target, method: str
    ) -> np.ndarray:
        """``method``'s map at ``layer`` under test-time augmentation (see
        :mod:`camwidget.smoothing`): the six copies in one batched pass."""
        copies = [PreparedImage(x, image.size) for x in smoothing.augmented(image.inputs)]
        found, _ = self._explain_group([(copy, target) for copy in copies], layer, method)
        return smoothing.smoothed(np.stack([e.raw for e in found]))

    @_locked
    def explain(
        self,
        image: object,
        layer: str | None = None,
        target: int | str | Target | None = None,
        method: str = "gradcam",
        *,
        progress: Progress | None = None,
        preview: Callable[[Tensor, float], None] | None = None,
    ) -> Explanation:
        """Explain ``target`` at ``layer`` with ``method``.

        ``target``: a class index or name, a callable (see :mod:`camwidget.targets`), or
        None for the model's top answer (the top-1 class, the class with the most
        predicted pixels, the best detection). ``progress(done, total)`` is called after
        each batch of a method's perturbed inputs; an exception it raises stops the work
        and leaves nothing cached. ``preview(raw, fraction)`` is shown the partial raw
        map of a method that builds it batch by batch (Score-CAM, Ablation-CAM).
        """
        timings = {"forward": 0.0, "backward": 0.0, "map": 0.0}
        image, capture = self._prepared_capture(image, timings)
        method, layer, target, _ = self.resolve(method, layer, target)
        spec, options = methods.get(method), self.options(method)
        host = capture.on_host()
        asked = scoring.target_for(host.output, target, 0)
        target = spec.explains(asked, outputs.one(host.output, 0), options)
        key = (image.key, target_key(target), layer, method, *map(repr, options.values()))
        raw = self._kept.maps.get(key)
        if raw is None and options.get("aug_smooth"):
            start = time.perf_counter()
            raw = self._kept.maps.put(key, self._smoothed(image, layer, asked, method))
            timings["map"] = _ms(start)
        if raw is None:
            grads = None
            if spec.needs_gradients:
                grads = self._gradient(image, capture, target, layer, timings)
            start = time.perf_counter()
            request = MapRequest(
                spec, capture, layer, target, image.inputs, 0, options,
                self.layer(layer).cam, image.key, progress, preview,
            )  # fmt: skip
            raw = self._kept.maps.put(key, raw_map(request, grads, self.services).cpu().numpy())
            timings["map"] = _ms(start)
        numbers = scoring.numbers(capture, [target], self.activation)[0]
        return explained(
            raw, image, host.output, 0, (layer, method), target, numbers, self.label, timings
        )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
