"""The methods that weigh a layer's channels by perturbing the input and running the
model again (Score-CAM, Ablation-CAM): many passes, batched, with partial maps shown
as they go. Pure functions of A and a :class:`~camwidget.method_context.MethodContext`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .components import weighted
from .method_context import MethodContext


def scorecam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Score-CAM (Wang et al., CVPR-W 2020): M = ReLU(sum_k alpha_k A^k).

    Each channel A^k, upsampled (bilinear, align_corners=False) to the input's size and
    min-max normalised to H^k in [0, 1], masks the input; alpha_k = softmax(f(X * H^k))_c,
    the target's probability on the masked input, as in the authors' code. Constant
    channels (no mask) get alpha_k = 0. With the option ``channels`` = n, only
    the n channels with the largest mean activation are scored.
    """
    if context.score is None or context.input_size is None:
        raise ValueError("Score-CAM needs a scoring function and the input size")
    channels = activations.shape[0]
    chosen = torch.arange(channels, device=activations.device)
    cap = context.options.get("channels")
    if isinstance(cap, int) and cap < channels:
        chosen = activations.mean(dim=(1, 2)).topk(cap).indices.sort().values
    masks = F.interpolate(
        activations[chosen][:, None], size=context.input_size, mode="bilinear", align_corners=False
    )
    low = masks.amin(dim=(2, 3), keepdim=True)
    span = masks.amax(dim=(2, 3), keepdim=True) - low
    varying = span.flatten() > 0
    masks = torch.where(span > 0, (masks - low) / torch.where(span > 0, span, 1.0), 0.0)
    order = _shuffled(int(varying.sum()), activations.device)  # see _previewing
    scored = chosen[varying][order]
    alpha = torch.zeros(channels, dtype=activations.dtype, device=activations.device)
    if len(scored):
        shown = _previewing(context, activations, scored, lambda values: values, fill_mean=True)
        alpha[scored] = context.score(masks[varying][order], shown).to(activations.dtype)
    return weighted(alpha, activations, context)


def ablationcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Ablation-CAM (Ramaswamy & Desai, WACV 2020): M = ReLU(sum_k w_k A^k).

    w_k = (y_c - y_c^k) / y_c, the relative drop of the target's score when channel k
    of the layer's output is set to zero (one forward per channel, batched). Where
    y_c = 0 the drop itself is the weight. At a GAP -> FC layer y_c - y_c^k =
    W[c, k] mean(A^k) exactly.
    """
    if context.ablate is None or context.target_score is None:
        raise ValueError("Ablation-CAM needs the ablated scores and the target's score")
    channels = _shuffled(activations.shape[0], activations.device)  # see _previewing
    score = context.target_score.to(activations.device).double()
    scale = torch.where(score == 0, torch.ones_like(score), score)

    def weights_of(values: Tensor) -> Tensor:
        return ((score - values.to(score.device).double()) / scale).to(activations.dtype)

    shown = _previewing(context, activations, channels, weights_of)
    weights = torch.zeros(len(channels), dtype=activations.dtype, device=activations.device)
    weights[channels] = weights_of(context.ablate(channels, shown))
    return weighted(weights, activations, context)


def _shuffled(count: int, device: torch.device) -> Tensor:
    """The indices 0..count-1 in one fixed pseudo-random order (the same every call)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(0)).to(device)


def _previewing(
    context: MethodContext,
    activations: Tensor,
    channels: Tensor,
    weights_of: Callable[[Tensor], Tensor],
    fill_mean: bool = False,
) -> Callable[[Tensor], None] | None:
    """Where ``context.preview`` is given: a ``scored(values so far)`` callback that
    shows the map (:func:`weighted`) with the weights of the ``channels`` scored so far and,
    for the rest of ``channels``, the mean of those weights (``fill_mean``) or 0.

    ``channels`` come in a pseudo-random order, so the scored ones are a fair sample of
    all of them: the preview tends to the final map as the work goes on, and is it at
    the end. Filling with the mean suits weights that share a baseline (Score-CAM's
    probabilities); weights of either sign (Ablation-CAM's drops) are better left at 0.
    """
    if context.preview is None:
        return None

    def scored(values: Tensor) -> None:
        known = weights_of(values).to(activations.dtype)
        weights = activations.new_zeros(activations.shape[0])
        weights[channels] = known.mean() if fill_mean else 0.0
        weights[channels[: len(values)]] = known
        partial = weighted(weights, activations, context)  # as the final
        context.preview(partial, len(values) / len(channels))

    return scored
