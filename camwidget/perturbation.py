"""The methods that weigh a layer's channels by perturbing the input and running the
model again (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM): many passes, batched, with
partial maps shown as they go. Pure functions of A and a
:class:`~camwidget.method_context.MethodContext`."""

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


def sscam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """SS-CAM (Wang et al., 2020), as TorchCAM's ``SSCAM``: Score-CAM's masks with noise,
    M = ReLU(sum_k w_k A^k), w = softmax_k of the mean over ``samples`` rounds of
    y_c(X * (H^k + δ)), δ ~ N(0, ``sigma``²) per pixel, channel and round.

    H^k: the channel min-max normalised on its grid, then upsampled (bilinear). Round
    r's noise (C, H, W) is drawn by ``torch.randn`` from one generator seeded with
    ``seed``, the rounds in order. ``channels`` = n scores only the n most active
    channels (the rest weigh 0)."""
    sigma, seed = float(context.options["sigma"]), int(context.options["seed"])
    rounds = [1.0] * int(context.options["samples"])
    return _rounds_map(activations, context, rounds, sigma, seed)


def iscam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """IS-CAM (Naidu et al., 2020), as TorchCAM's ``ISCAM``: Score-CAM's masks integrated
    along a path, M = ReLU(sum_k w_k A^k), w = softmax_k of the mean over rounds
    i = 1..N (``samples``) of y_c(X * s_i H^k), s_i = sum_{j<=i} j / N.

    H^k as in :func:`sscam`; ``channels`` as there."""
    count = int(context.options["samples"])
    rounds = [sum(j / count for j in range(1, i + 1)) for i in range(1, count + 1)]
    return _rounds_map(activations, context, rounds, 0.0, 0)


class Rounds:
    """The masked inputs' masks of SS-CAM and IS-CAM, made a slice at a time (``len``
    and ``[start:stop]``): item t is channel ``order[t % C]`` in round r = t // C,
    ``scales[r]`` × its mask (C, 1, H, W) plus ``sigma`` × round r's noise there."""

    def __init__(self, masks: Tensor, order: Tensor, scales: list[float], sigma: float, seed: int):
        self.masks, self.order, self.scales = masks, order.tolist(), scales
        self.sigma, self.seed = sigma, seed
        self._noise: tuple[int, Tensor] = (-1, masks)
        self._generator = torch.Generator()

    def __len__(self) -> int:
        return len(self.scales) * len(self.order)

    def __getitem__(self, part: slice) -> Tensor:
        found = []
        for item in range(len(self))[part]:
            round_, position = divmod(item, len(self.order))
            channel = self.order[position]
            mask = self.scales[round_] * self.masks[channel]
            if self.sigma:
                mask = mask + self.sigma * self._noise_of(round_)[channel]
            found.append(mask)
        return torch.stack(found)

    def _noise_of(self, round_: int) -> Tensor:
        """Round ``round_``'s noise (C, 1, H, W): the generator's draws in round order."""
        if self._noise[0] > round_:
            self._noise = (-1, self.masks)
        if self._noise[0] < 0:
            self._generator.manual_seed(self.seed)
        while self._noise[0] < round_:
            drawn = torch.randn(self.masks.shape, generator=self._generator)
            self._noise = (self._noise[0] + 1, drawn.to(self.masks))
        return self._noise[1]


def _rounds_map(
    activations: Tensor, context: MethodContext, scales: list[float], sigma: float, seed: int
) -> Tensor:
    """ReLU(sum_k w_k A^k), w = softmax over the scored channels of their mean target
    score over the rounds of :class:`Rounds` (others weigh 0)."""
    if context.masked is None or context.input_size is None:
        raise ValueError("this method needs the scores of masked inputs")
    channels = activations.shape[0]
    low = activations.amin(dim=(1, 2), keepdim=True)
    span = activations.amax(dim=(1, 2), keepdim=True) - low
    normalised = (activations - low) / (span + 1e-8)  # TorchCAM's: constant channels -> 0
    masks = F.interpolate(
        normalised[:, None], size=context.input_size, mode="bilinear", align_corners=False
    )
    chosen = torch.arange(channels, device=activations.device)
    cap = context.options.get("channels")
    if isinstance(cap, int) and cap < channels:
        chosen = activations.mean(dim=(1, 2)).topk(cap).indices.sort().values
    order = chosen[_shuffled(len(chosen), activations.device)]  # see _previewing
    every = order.repeat(len(scales))

    def weights_of(values: Tensor) -> Tensor:
        """The softmax of each scored channel's mean so far; channels not yet scored
        take the mean of the others' means."""
        done = every[: len(values)]
        total = activations.new_zeros(channels, dtype=torch.float64)
        count = torch.zeros_like(total)
        total.index_add_(0, done, values.to(total))
        count.index_add_(0, done, total.new_ones(len(values)))
        means = total / count.clamp(min=1)
        means[order] = torch.where(count[order] > 0, means[order], means[count > 0].mean())
        weights = torch.zeros_like(total)
        weights[order] = torch.softmax(means[order], dim=0)
        return weights.to(activations.dtype)

    def scored(values: Tensor) -> None:
        partial = weighted(weights_of(values), activations, context)
        context.preview(partial, len(values) / len(every))

    shown = scored if context.preview is not None else None
    values = context.masked(Rounds(masks, order, scales, sigma, seed), shown)
    return weighted(weights_of(values), activations, context)


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
