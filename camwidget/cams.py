"""Class activation map methods (and the pixel-level ones that read their layer or a
pass of their own) as pure functions.

Each method takes the activations A (C, h, w) of one layer for one image, the gradients
g = dy_c/dA (C, h, w) of the target's logit y_c, and a :class:`MethodContext`, and
returns the method's raw map (h, w) at feature resolution, exactly as its paper defines
it (including the ReLU where the paper has one), before upsampling and normalisation;
pixel-level methods return an attribution (3, H, W) at the model input's size.
The methods registered as ``batched`` also take a batch: A and g (N, C, h, w) and a
context whose per-image fields are stacked, giving (N, h, w).
Nothing here knows about hooks, caches or widgets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .attributions import noise
from .components import summed, weighted
from .errors import CamwidgetError
from .method_context import MethodContext


def cam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """CAM (Zhou et al., CVPR 2016): M = sum_k W[c, k] A^k, with no ReLU.

    W is the final fully connected layer fed by global average pooling of A, so
    mean(M) + b_c = y_c exactly. Needs ``context.class_weights``.
    """
    if context.class_weights is None:
        raise CamwidgetError(
            "CAM explains one class of a classifier with the final layer's weights for that "
            "class; for this target use Grad-CAM"
        )
    weights = context.class_weights.to(activations.dtype)
    return torch.einsum("...k,...khw->...hw", weights, activations)


def gradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): M = ReLU(sum_k w_k A^k).

    w_k = (1 / hw) sum_ij g^k_ij, the spatial mean of the gradient of the logit y_c.
    At a GAP -> FC layer w_k = W[c, k] / hw, so M = ReLU(CAM) / hw.
    """
    weights = gradients.mean(dim=(-2, -1))
    return weighted(weights, activations, context)


def gradcam_plus_plus(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19): M = ReLU(sum_k w_k A^k).

    alpha^k_ij = g^2 / (2 g^2 + (sum_ab A^k_ab) g^3), with alpha = 0 where g = 0 or the
    denominator is 0; w_k = sum_ij alpha^k_ij ReLU(g^k_ij). Evaluated in float64 with
    no epsilon.
    """
    g, a = gradients.double(), activations.double()
    weights = _plus_plus(a, g, g**2, g**3)
    return weighted(weights, a, context).to(activations.dtype)


def _plus_plus(a: Tensor, g: Tensor, g2: Tensor, g3: Tensor) -> Tensor:
    """Grad-CAM++'s weights w_k = sum_ij alpha ReLU(g), alpha = g2 / (2 g2 + (sum_ab A^k)
    g3), 0 where g2 or the denominator is 0, for the derivatives given."""
    denominator = 2.0 * g2 + a.sum(dim=(-2, -1), keepdim=True) * g3
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    alpha = torch.where((g2 != 0) & (denominator != 0), g2 / safe, torch.zeros_like(g2))
    return (alpha * torch.relu(g)).sum(dim=(-2, -1))


def smoothgradcam_plus_plus(
    activations: Tensor, gradients: Tensor, context: MethodContext
) -> Tensor:
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with its derivatives averaged
    over ``samples`` noisy copies of the input (noise of ``sigma`` × the input's
    range, seeded): alpha = mean(g^2) / (2 mean(g^2) + (sum_ab A^k_ab) mean(g^3)),
    w_k = sum_ij alpha ReLU(mean(g)). With sigma = 0 it is Grad-CAM++. Float64."""
    if context.layer_gradients is None or context.inputs is None:
        raise ValueError("Smooth Grad-CAM++ needs the layer's gradients at noisy inputs")
    generator = torch.Generator().manual_seed(int(context.options["seed"]))
    drawn = noise(context, generator, int(context.options["samples"]))
    g = context.layer_gradients(context.inputs + drawn).double()
    a = activations.double()
    weights = _plus_plus(a, g.mean(0), (g**2).mean(0), (g**3).mean(0))
    return weighted(weights, a, context).to(activations.dtype)


def hirescam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """HiResCAM (Draelos & Carin, 2020): M = ReLU(sum_k g^k * A^k), elementwise."""
    return summed(gradients * activations, context)


def xgradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020): M = ReLU(sum_k w_k A^k).

    w_k = sum_ij g^k_ij A^k_ij / sum_ij A^k_ij, and w_k = 0 where sum_ij A^k_ij = 0.
    """
    total = activations.sum(dim=(-2, -1))
    numerator = (gradients * activations).sum(dim=(-2, -1))
    safe = torch.where(total == 0, torch.ones_like(total), total)
    weights = torch.where(total == 0, torch.zeros_like(total), numerator / safe)
    return weighted(weights, activations, context)


def layercam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021): M = ReLU(sum_k ReLU(g^k) * A^k)."""
    return summed(torch.relu(gradients) * activations, context)


def shapleycam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """ShapleyCAM (Cai et al., 2025; pytorch-grad-cam's): M = ReLU(sum_k w_k A^k),
    w_k = the spatial mean of g^k - (H A)^k / 2, H the Hessian of y_c with respect to
    A: a second-order estimate of each channel's Shapley value. Where y_c is piecewise
    linear in A (ReLUs, pooling, linear layers) H A = 0 and it is Grad-CAM."""
    if context.hessian is None:
        raise ValueError("ShapleyCAM needs the Hessian-vector product")
    weights = (gradients - 0.5 * context.hessian().to(gradients)).mean(dim=(-2, -1))
    return weighted(weights, activations, context)


def gradcam_elementwise(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Grad-CAM element-wise (pytorch-grad-cam): M = sum_k ReLU(g^k ⊙ A^k)."""
    return summed(torch.relu(gradients * activations), context)


def randomcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Random-CAM, the baseline for the metrics: M = ReLU(sum_k w_k A^k), w_k drawn
    uniformly from [-1, 1) by a generator seeded with the option ``seed`` (the same
    weights for every image of a batch)."""
    generator = torch.Generator().manual_seed(int(context.options["seed"]))
    weights = torch.rand(activations.shape[-3], generator=generator, dtype=torch.float64)
    return weighted((2 * weights - 1).to(activations), activations, context)


def fem(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """FEM, the feature explanation method (Fuad et al., IPTA 2020), as pytorch-grad-cam
    computes it: M = ReLU(sum_k w_k A^k), w_k the share of the cells of A^k above
    mean(A^k) + k std(A^k) (the option ``k``; the standard deviation over the cells,
    uncorrected). Class-agnostic."""
    a = activations.double()
    cut = a.mean(dim=(-2, -1), keepdim=True) + float(context.options["k"]) * a.std(
        dim=(-2, -1), keepdim=True, correction=0
    )
    weights = (a > cut).double().mean(dim=(-2, -1))
    return weighted(weights, a, context).to(activations.dtype)


def legrad(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """LeGrad (Bousselham et al., ICCV 2025) for vision transformers: the mean over the
    last ``blocks`` blocks of ReLU(∂s^l/∂A^l), averaged over heads and queries, at the
    patch keys; s^l the target's score of block l's own tokens (see
    :mod:`camwidget.legrad`). Reads no single layer."""
    if context.attention_gradients is None:
        raise ValueError("LeGrad needs the gradients at the attention")
    found, prefix, grid = context.attention_gradients()
    maps = [gradient.clamp(min=0).mean(dim=(0, 1))[prefix:] for gradient in found]
    return torch.stack(maps).mean(dim=0).reshape(grid)


def guided_backprop(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Guided Backpropagation (Springenberg et al., ICLR-W 2015): dy_c/dX (3, H, W) with
    every ReLU passing back only positive gradients where its input is positive. Pixel
    level and signed; reads no layer."""
    if context.guided is None:
        raise ValueError("guided backpropagation needs the guided gradient")
    return context.guided()


def guided_gradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017, §3): guided backpropagation (3, H, W)
    times the layer's Grad-CAM map upsampled (bilinear) to the input's size."""
    if context.guided is None or context.input_size is None:
        raise ValueError("Guided Grad-CAM needs the guided gradient and the input size")
    coarse = gradcam(activations, gradients, context)
    fine = F.interpolate(
        coarse[None, None], size=context.input_size, mode="bilinear", align_corners=False
    )[0, 0]
    return context.guided() * fine.to(activations.device)


def lrp(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Layer-wise Relevance Propagation (Bach et al., PLoS ONE 2015) under a zennit
    composite: the relevance R (3, H, W) of each input pixel, starting from the
    target's score at the output, so that sum R ~ y_c. Pixel level, signed; reads no
    layer."""
    if context.relevance is None:
        raise ValueError("LRP needs the relevance")
    return context.relevance()
