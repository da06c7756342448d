"""Attributions at the pixels, as Captum defines them: saliency, input × gradient,
integrated gradients, SmoothGrad, GradientSHAP, occlusion and DeepLIFT.

Each is a method function (see :mod:`camwidget.methods`) that reads no layer: it
returns an attribution (3, H, W) at the model input's size, computed from the model
input ``context.inputs`` and what the context lends: ``input_gradients`` (the target's
gradient at any batch of inputs, batched), ``masked`` (the target's score on masked
copies) or ``rescaled`` (DeepLIFT's multipliers). Every baseline is zero in the model's
input space (Captum's default); noise is drawn from a generator seeded with the
method's ``seed`` option, so a map is the same every time it is made.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .method_context import MethodContext

#: What SmoothGrad may average (its option ``of``).
SMOOTHED = ("saliency", "input-x-gradient", "integrated-gradients")
#: Integrated gradients' points when SmoothGrad averages it.
SMOOTHED_IG_STEPS = 16


def _gradients(context: MethodContext, points: Tensor) -> Tensor:
    if context.input_gradients is None or context.inputs is None:
        raise ValueError("this method needs the gradients at the input")
    return context.input_gradients(points)


def _saliency_of(points: Tensor, context: MethodContext, absolute: bool = True) -> Tensor:
    gradients = _gradients(context, points)
    return gradients.abs() if absolute else gradients


def _input_x_gradient_of(points: Tensor, context: MethodContext) -> Tensor:
    return points * _gradients(context, points)


def gauss_legendre(steps: int) -> tuple[Tensor, Tensor]:
    """The points α in [0, 1] and weights of the ``steps``-point Gauss–Legendre rule
    on [0, 1] (the weights sum to 1), float64."""
    nodes, weights = np.polynomial.legendre.leggauss(int(steps))
    return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)


def _integrated_gradients_of(points: Tensor, context: MethodContext, steps: int) -> Tensor:
    """x · Σ_i w_i ∇f(α_i x) for each row x of ``points``, in one batched call."""
    alphas, weights = gauss_legendre(steps)
    path = torch.cat([float(alpha) * points for alpha in alphas])
    gradients = _gradients(context, path).reshape(len(alphas), *points.shape)
    mean = torch.einsum("s,s...->...", weights.to(gradients), gradients)
    return points * mean


def saliency(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Saliency (Simonyan et al., ICLR-W 2014): ∇_x y_c, its magnitude where the option
    ``abs`` is on (as Captum's ``Saliency`` by default)."""
    return _saliency_of(context.inputs, context, bool(context.options["abs"]))[0]


def input_x_gradient(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Input × gradient (Shrikumar et al., 2016): x ⊙ ∇_x y_c."""
    return _input_x_gradient_of(context.inputs, context)[0]


def integrated_gradients(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Integrated gradients (Sundararajan et al., ICML 2017) from the zero baseline:
    x ⊙ ∫_0^1 ∇f(αx) dα by the Gauss–Legendre rule at ``steps`` points (Captum's
    default rule), so that Σ attribution ≈ y_c(x) - y_c(0) (completeness)."""
    return _integrated_gradients_of(context.inputs, context, int(context.options["steps"]))[0]


def noise(context: MethodContext, generator: torch.Generator, samples: int) -> Tensor:
    """``samples`` draws of N(0, σ²), σ = ``sigma`` × the input's range (max - min)."""
    inputs = context.inputs
    sigma = float(context.options["sigma"]) * float(inputs.max() - inputs.min())
    shape = (samples, *inputs.shape[1:])
    return (sigma * torch.randn(shape, generator=generator, dtype=inputs.dtype)).to(inputs)


def smoothgrad(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """SmoothGrad (Smilkov et al., 2017), Captum's noise tunnel: the method ``of``
    averaged over ``samples`` copies of the input with Gaussian noise of standard
    deviation ``sigma`` × the input's range (the paper's 10-20 %). With σ = 0 it equals
    its method; integrated gradients are taken at 16 points here."""
    generator = torch.Generator().manual_seed(int(context.options["seed"]))
    samples = int(context.options["samples"])
    noisy = context.inputs + noise(context, generator, samples)
    of: Callable[[Tensor, MethodContext], Tensor] = {
        "saliency": _saliency_of,
        "input-x-gradient": _input_x_gradient_of,
        "integrated-gradients": lambda points, context: _integrated_gradients_of(
            points, context, SMOOTHED_IG_STEPS
        ),
    }[str(context.options["of"])]
    return of(noisy, context).mean(dim=0)


def gradientshap(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """GradientSHAP (Lundberg & Lee, 2017; Captum's ``GradientShap``) from the zero
    baseline: the mean over ``samples`` draws of x̃ ⊙ ∇f(α x̃), α ~ U[0, 1) and x̃ the
    input with noise of ``sigma`` × its range; an estimate of the expected gradients."""
    generator = torch.Generator().manual_seed(int(context.options["seed"]))
    samples = int(context.options["samples"])
    alphas = torch.rand(samples, generator=generator, dtype=torch.float64)
    noisy = context.inputs + noise(context, generator, samples)
    path = alphas.to(noisy).reshape(-1, 1, 1, 1) * noisy
    return (noisy * _gradients(context, path)).mean(dim=0)


def window_starts(size: int, window: int, stride: int) -> range:
    """Where Captum's occlusion windows start along one side of ``size`` cells: every
    ``stride`` cells, the last one reaching the border (cut there)."""
    return range(0, stride * (-(-(size - window) // stride)) + 1, stride)


class Windows:
    """Captum's occlusion windows over an (H, W) input as keep-masks (M, 1, H, W), made a
    slice at a time (``len`` and ``[start:stop]``), so that no more than a batch of
    them is ever held."""

    def __init__(self, height: int, width: int, window: int, stride: int) -> None:
        self.size, self.window = (height, width), window
        rows = window_starts(height, min(window, height), stride)
        columns = window_starts(width, min(window, width), stride)
        self.boxes = [(top, left) for top in rows for left in columns]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, part: slice) -> Tensor:
        boxes = self.boxes[part]
        keep = torch.ones(len(boxes), 1, *self.size)
        for index, (top, left) in enumerate(boxes):
            keep[index, 0, top : top + self.window, left : left + self.window] = 0
        return keep

    def spread(self, values: Tensor) -> Tensor:
        """(H, W): each cell's mean of ``values`` (M,) over the windows covering it."""
        total = torch.zeros(self.size, dtype=torch.float64)
        count = torch.zeros(self.size, dtype=torch.float64)
        for value, (top, left) in zip(values.tolist(), self.boxes, strict=True):
            total[top : top + self.window, left : left + self.window] += value
            count[top : top + self.window, left : left + self.window] += 1
        return total / count.clamp(min=1)


def occlusion(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Occlusion (Zeiler & Fergus, ECCV 2014; Captum's ``Occlusion``): a ``window`` ×
    ``window`` square of the input set to zero, moved by ``stride`` pixels (at most the
    window); each pixel's attribution is the mean of y_c(x) - y_c(x occluded) over the
    windows that cover it, the same in every channel."""
    if context.masked is None or context.inputs is None or context.target_score is None:
        raise ValueError("occlusion needs the scores of masked inputs")
    height, width = context.inputs.shape[-2:]
    window = max(1, int(context.options["window"]))
    stride = max(1, min(int(context.options["stride"]), window))
    windows = Windows(height, width, window, stride)
    drops = context.target_score.double().cpu() - context.masked(windows).double().cpu()
    spread = windows.spread(drops).to(context.inputs)
    return spread.expand(context.inputs.shape[-3], height, width).clone()


def fullgrad(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """FullGrad (Srinivas & Fleuret, NeurIPS 2019), as pytorch-grad-cam's ``FullGrad``:
    Σ ψ(|x ⊙ ∇_x y_c|) + Σ_layers Σ ψ(|b ⊙ ∇_b y_c|), sums over colour and feature
    channels, ψ scaling one channel's map to [0, 1] and upsampling it (bilinear) to the
    input's size; every layer that adds a bias counts (see :mod:`camwidget.fullgrad`)."""
    if context.full_gradients is None or context.input_size is None:
        raise ValueError("FullGrad needs the input's and the biases' gradients")
    at_input, at_biases = context.full_gradients()
    total = _scaled(at_input.abs()).sum(dim=0)
    for product in at_biases:  # upsampling is linear: the channels' sum once
        grid = _scaled(product.abs()).sum(dim=0)[None, None]
        total += F.interpolate(grid, context.input_size, mode="bilinear")[0, 0]
    return total


def _scaled(maps: Tensor) -> Tensor:
    """Each of ``maps`` (C, h, w) less its minimum, over 1e-7 + its new maximum."""
    shifted = maps - maps.amin(dim=(1, 2), keepdim=True)
    return shifted / (1e-7 + shifted.amax(dim=(1, 2), keepdim=True))


def deeplift(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """DeepLIFT with the rescale rule (Shrikumar et al., ICML 2017; Captum's ``DeepLift``)
    from the zero baseline: x ⊙ m, m the multipliers of :mod:`camwidget.deeplift`, so
    that Σ attribution = y_c(x) - y_c(0) for linear layers and the rule's modules."""
    if context.rescaled is None or context.inputs is None:
        raise ValueError("DeepLIFT needs its multipliers")
    baseline = torch.zeros_like(context.inputs)
    return ((context.inputs - baseline) * context.rescaled(baseline))[0]
