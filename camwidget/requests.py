"""One map to compute: what a method is asked for, and what it is given.

A :class:`MapRequest` names the method, the pass, the layer, the image's row and the
target; :func:`raw_map` hands the method its activations, gradients and the
:class:`~camwidget.methods.MethodContext` holding what its descriptor ``needs``, each
made only when needed. :func:`raw_maps` makes the maps of many rows of one pass, in one
call of a ``batched`` method (one image is the batch of one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, partial

import torch
from torch import Tensor

from . import methods, scoring
from .cache import BoundedCache
from .capture import Capture
from .layers import final_linear
from .passes import Passes, Progress
from .targets import Class, Target
from .targets import key as target_key


@dataclass(frozen=True)
class MapRequest:
    """``spec`` at ``layer`` for row ``row`` of ``capture``, explaining ``target``.

    ``inputs``: that row's model input (1, 3, H, W); ``options``: the method's options
    by short name; ``cam``: CAM applies at ``layer``; ``image_key``: where pixel
    attributions may be cached (None: nowhere); ``progress(done, total)``: told of
    each batch of perturbed inputs (it may raise to stop the work); ``preview(map,
    fraction)``: shown the partial map of a method that builds its map as batches finish.
    """

    spec: methods.Method
    capture: Capture
    layer: str
    target: Target
    inputs: Tensor
    row: int = 0
    options: Mapping[str, object] = field(default_factory=dict)
    cam: bool = False
    image_key: str | None = None
    progress: Progress | None = None
    preview: Callable[[Tensor, float], None] | None = None


@dataclass(frozen=True)
class Services:
    """What the engine lends a method: the model's ``passes``, the cache of pixel
    attributions, the activation of a classifier's logits and the bounds of the
    model's input (for LRP's box rule)."""

    passes: Passes
    pixels: BoundedCache[Tensor]
    activation: str | None
    bounds: Callable[[], tuple[Tensor, Tensor] | None]


def raw_map(request: MapRequest, gradients: Tensor | None, services: Services) -> Tensor:
    """The method's raw map for the request, float32 on the model's device;
    ``gradients`` of the whole batch in the layer's own layout (None: not needed)."""
    if request.spec.batched:
        return raw_maps([request], gradients, services)[0]
    activations, gradients = _layer_maps(request, request.row, gradients)
    if request.spec.needs_layer or request.image_key is None:
        return _made(request, activations, gradients, services)
    # the same attribution at every layer: made once per image, target and options
    key = (request.image_key, target_key(request.target), request.spec.name)
    key += (repr(dict(request.options)),)
    found = services.pixels.get(key)
    if found is None:
        found = services.pixels.put(key, _made(request, activations, gradients, services))
    return found


def raw_maps(
    requests: Sequence[MapRequest], gradients: Tensor | None, services: Services
) -> Tensor:
    """The raw maps (N, ...) of ``requests``, rows of one capture for one method at one
    layer: a ``batched`` method called on as many rows at once as :data:`CHUNK` allows,
    any other once per row."""
    first = requests[0]
    if not first.spec.batched:
        return torch.stack([raw_map(request, gradients, services) for request in requests])
    rows = [request.row for request in requests]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        rows = slice(rows[0], rows[0] + len(rows))  # a view, not a copy
    activations, gradients = _layer_maps(first, rows, gradients)
    context = _batch_context(requests, services)
    step = max(1, CHUNK[activations.device.type == "cpu"] // activations[0].numel())
    parts = [slice(start, start + step) for start in range(0, len(requests), step)]
    maps = [
        first.spec.fn(activations[part], gradients[part], _part(context, part)) for part in parts
    ]
    return torch.cat(maps).detach().float()


#: How many elements of a layer's map a batched method takes in one call, on a GPU and
#: on a CPU. On a CPU the element-wise methods run fastest while their temporaries stay
#: in the cache: Grad-CAM++ on 64 images at ResNet-50's layer4 took 71 ms one image at
#: a time, 68 ms five at a time and 261 ms all at once (``benchmarks/batched_maps.py``).
CHUNK = (1 << 24, 1 << 19)


def _part(context: methods.MethodContext, part: slice) -> methods.MethodContext:
    """A batch's context for the rows ``part``."""
    hessian = context.hessian

    def rows(found: Tensor | None) -> Tensor | None:
        return None if found is None else found[part]

    return replace(
        context,
        class_weights=rows(context.class_weights),
        target_score=rows(context.target_score),
        inputs=rows(context.inputs),
        hessian=None if hessian is None else lambda: hessian()[part],
    )


def _layer_maps(
    request: MapRequest, rows: int | slice | list[int], gradients: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The request's layer's activations and gradients (zero: None) at ``rows``,
    (C, h, w) or (N, C, h, w) in float32."""
    capture = request.capture
    layout = capture.layouts[request.layer]
    activations = layout.to_nchw(capture.activations[request.layer].detach())[rows].float()
    if gradients is None:
        return activations, torch.zeros_like(activations)
    return activations, layout.to_nchw(gradients)[rows].float()


def _batch_context(requests: Sequence[MapRequest], services: Services) -> methods.MethodContext:
    """A batched method's context: each row's share stacked (see ``Method.batched``)."""
    first = requests[0]
    lent: dict[str, object] = {}
    if "class_weights" in first.spec.needs:
        weights = [_class_weights(request, services) for request in requests]
        found = None if any(w is None for w in weights) else torch.stack(weights)
        lent["class_weights"] = found
    if "hessian" in first.spec.needs:
        lent["hessian"] = _hessian(requests, services)
    scores = [scoring.score(first.capture.output, r.target, r.row) for r in requests]
    return methods.MethodContext(
        target_score=torch.stack(scores).detach().float(),
        inputs=torch.cat([request.inputs for request in requests]),
        input_size=(first.inputs.shape[-2], first.inputs.shape[-1]),
        options=first.options,
        **lent,
    )


def _made(
    request: MapRequest, activations: Tensor, gradients: Tensor, services: Services
) -> Tensor:
    context = _context(request, services)
    return request.spec.fn(activations, gradients, context).detach().float()


def _context(request: MapRequest, services: Services) -> methods.MethodContext:
    """The method's context: its options, the target's score and the input's size, and
    whatever else it needs, made lazily (the passes run only when the method asks)."""
    needs = request.spec.needs
    lent = {name: make(request, services) for name, make in _LENDERS.items() if name in needs}
    return methods.MethodContext(
        target_score=scoring.score(request.capture.output, request.target, request.row)
        .detach()
        .float(),
        inputs=request.inputs,
        input_size=(request.inputs.shape[-2], request.inputs.shape[-1]),
        options=request.options,
        preview=request.preview,
        **lent,
    )


def _class_weights(request: MapRequest, services: Services) -> Tensor | None:
    target, capture = request.target, request.capture
    if not (isinstance(target, Class) and capture.logits is not None and request.cam):
        return None
    return final_linear(services.passes.model, capture).weight.detach()[target.index].float()


def _score(request: MapRequest, services: Services) -> Callable[[Tensor], Tensor]:
    scorer = scoring.probabilities(request.target, services.activation)
    size = request.options.get("batch_size")
    return lambda masks, scored=None: services.passes.score_masked(
        request.inputs, masks, scorer, size, request.progress, scored
    )


def _ablate(request: MapRequest, services: Services) -> Callable[[Tensor], Tensor]:
    layout = request.capture.layouts[request.layer]
    scorer = scoring.values(request.target)
    size = request.options.get("batch_size")
    return lambda channels, scored=None: services.passes.score_ablated(
        request.inputs, request.layer, layout, channels, scorer, size, request.progress, scored
    )


def _hessian(requests: Sequence[MapRequest], services: Services) -> Callable[[], Tensor]:
    """H A (N, C, h, w) at the requests' rows: one double backward of the sum of their
    scores (the images of a batch do not meet, so each row's is its own)."""

    @cache
    def product() -> Tensor:
        capture, layer = requests[0].capture, requests[0].layer
        scores = [scoring.score(capture.output, r.target, r.row) for r in requests]
        found = services.passes.hessian_product(capture, layer, torch.stack(scores).sum())
        return capture.layouts[layer].to_nchw(found)[[r.row for r in requests]].float()

    return product


def _layer_gradients(request: MapRequest, services: Services) -> Callable[[Tensor], Tensor]:
    scorer = scoring.values(request.target)
    size = request.options.get("batch_size")
    return lambda points: services.passes.layer_gradients(
        points, request.layer, scorer, size, request.progress
    ).float()


def _input_gradients(request: MapRequest, services: Services) -> Callable[[Tensor], Tensor]:
    scorer = scoring.values(request.target)
    size = request.options.get("batch_size")
    capture, row = request.capture, request.row

    def gradients(points: Tensor) -> Tensor:
        if points is request.inputs and capture.inputs is not None:  # the image's own pass
            score = scoring.score(capture.output, request.target, row)
            return services.passes.input_gradient(capture, score)[row : row + 1]
        return services.passes.input_gradients(points, scorer, size, request.progress)

    return gradients


def _masked(request: MapRequest, services: Services) -> Callable[[Tensor], Tensor]:
    scorer = scoring.values(request.target)
    size = request.options.get("batch_size")
    return lambda masks, scored=None: services.passes.score_masked(
        request.inputs, masks, scorer, size, request.progress, scored
    )


def _rescaled(request: MapRequest, services: Services) -> Callable[[Tensor], Tensor]:
    scorer = scoring.values(request.target)
    return lambda baseline: services.passes.deeplift(request.inputs, baseline, scorer)


def _full_gradients(
    request: MapRequest, services: Services
) -> Callable[[], tuple[Tensor, list[Tensor]]]:
    scorer = scoring.values(request.target)
    return lambda: services.passes.full_gradients(request.inputs, scorer)


def _attention_gradients(
    request: MapRequest, services: Services
) -> Callable[[], tuple[list[Tensor], int, tuple[int, int]]]:
    scorer = scoring.values(request.target)
    blocks = request.options.get("blocks")
    capture, row = request.capture, request.row

    def kept(name: str) -> Tensor | None:
        found = capture.activations.get(name)
        return None if found is None else found[row : row + 1]

    return lambda: services.passes.attention_gradients(request.inputs, scorer, blocks, kept)


def _pixels(kind: str, request: MapRequest, services: Services) -> Callable[[], Tensor]:
    """Guided backpropagation or LRP relevance of the target at the input, one forward
    and one backward per (image, target[, composite]), kept with the image's passes."""
    composite = request.options.get("composite") if kind == "relevance" else None
    key = (request.image_key, target_key(request.target), kind, composite)

    def attribution() -> Tensor:
        found = services.pixels.get(key) if request.image_key is not None else None
        if found is not None:
            return found
        score = partial(_row_score, request.target)
        if kind == "relevance":
            found = services.passes.relevance(request.inputs, score, composite, services.bounds())
        else:
            found = services.passes.guided(request.inputs, score)
        if request.image_key is not None:
            services.pixels.put(key, found)
        return found

    return attribution


def _single(many: Callable[[], Tensor]) -> Callable[[], Tensor]:
    return lambda: many()[0]


def _row_score(target: Target, output: object) -> Tensor:
    return scoring.score(output, target, 0)


#: MethodContext field -> how it is made for a request (see ``Method.needs``).
_LENDERS: dict[str, Callable[[MapRequest, Services], object]] = {
    "class_weights": _class_weights,
    "score": _score,
    "ablate": _ablate,
    "guided": partial(_pixels, "guided"),
    "relevance": partial(_pixels, "relevance"),
    "hessian": lambda request, services: _single(_hessian([request], services)),
    "layer_gradients": _layer_gradients,
    "input_gradients": _input_gradients,
    "masked": _masked,
    "rescaled": _rescaled,
    "full_gradients": _full_gradients,
    "attention_gradients": _attention_gradients,
}
