"""What a method may ask for besides a layer's activations and gradients."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class MethodContext:
    """What a method may ask for besides A and g: the engine fills in what the method's
    descriptor ``needs`` (see :data:`camwidget.methods.NEEDS`), and always its ``options``.

    ``class_weights``: the final fully connected layer's weights W[c] (C,) for the
    target class, where CAM applies at this layer, else None. ``score``: maps masks
    (M, 1, H, W) in [0, 1] at the input's size to the target's probability on the
    masked inputs (M,). ``ablate``: maps channel indices (M,) to the target's score (its
    logit) with that channel of the layer's output set to zero (M,). Both take an
    optional ``scored(scores so far)`` called after each batch. ``target_score``:
    the target's score on the intact input. ``guided``: the guided backpropagation of
    the target (3, H, W) at the input (see :mod:`camwidget.pixel`); ``relevance``: its
    LRP relevance (3, H, W) (see :mod:`camwidget.lrp`). ``input_gradients``: maps
    inputs (M, 3, H, W) to the target's gradient at each (M, 3, H, W), batched;
    ``masked``: maps keep-masks (M, 1, H, W) to the target's score (its logit) on the
    masked inputs (M,); ``rescaled``: maps a baseline (1, 3, H, W) to DeepLIFT's
    multipliers (3, H, W) (see :mod:`camwidget.deeplift`). ``hessian()``: H A (C, h,
    w), the Hessian of the target's score with respect to the layer's map A times A;
    ``layer_gradients``: maps inputs (M, 3, H, W) to the target's gradient at the
    layer's map for each (M, C, h, w), batched; ``full_gradients()``: FullGrad's x ⊙
    ∇_x y_c (3, H, W) and b ⊙ ∇_b y_c (C, h, w) of each biased layer (see
    :mod:`camwidget.fullgrad`); ``attention_gradients()``: LeGrad's gradients of each
    block's score at its attention (heads, T, T), the number of prefix tokens and the
    patch grid (see :mod:`camwidget.legrad`).
    ``inputs``: the model input
    (1, 3, H, W); ``input_size``: its (H, W). ``options``: the method's options by
    their short names (see :attr:`camwidget.methods.Method.options`). ``preview(map,
    fraction)``: where given, a method that builds its map batch by batch shows the
    map of what is done so far.
    """

    class_weights: Tensor | None = None
    score: Callable[[Tensor], Tensor] | None = None
    ablate: Callable[[Tensor], Tensor] | None = None
    target_score: Tensor | None = None
    guided: Callable[[], Tensor] | None = None
    relevance: Callable[[], Tensor] | None = None
    hessian: Callable[[], Tensor] | None = None
    layer_gradients: Callable[[Tensor], Tensor] | None = None
    input_gradients: Callable[[Tensor], Tensor] | None = None
    masked: Callable[[Tensor], Tensor] | None = None
    rescaled: Callable[[Tensor], Tensor] | None = None
    full_gradients: Callable[[], tuple[Tensor, list[Tensor]]] | None = None
    attention_gradients: Callable[[], tuple[list[Tensor], int, tuple[int, int]]] | None = None
    inputs: Tensor | None = None
    input_size: tuple[int, int] | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    preview: Callable[[Tensor, float], None] | None = None
