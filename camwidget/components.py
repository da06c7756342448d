"""Methods that take the first principal component of a layer's maps: Eigen-CAM,
Eigen-Grad-CAM and KPCA-CAM. Each map's sign, which a decomposition leaves open, is
chosen so that the map correlates positively with the mean of the maps it decomposes.

Eigen-CAM, Eigen-Grad-CAM, :func:`summed` and :func:`weighted` take one image's maps
(C, h, w) or a batch's (N, C, h, w) (one batched SVD); KPCA-CAM takes one image's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import eigsh
from torch import Tensor

from .method_context import MethodContext

#: KPCA-CAM's kernels (scikit-learn's, with its defaults: γ = 1 / C, coef0 = 1, degree 3).
KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")
#: Above this many cells the leading eigenvector is found by Lanczos iteration (ARPACK).
DENSE_CELLS = 200
#: KPCA-CAM's kernel matrix has a row per cell: a layer with more cells (64 × 64; its
#: float64 matrix 134 MB) is averaged over blocks of cells to at most this many first.
KPCA_CELLS = 4096


def eigencam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): M = A v_1, no ReLU, class-agnostic.

    With A as an (hw, C) matrix, v_1 is its first right singular vector (no mean
    centering, as in the paper). The sign of v_1 is arbitrary; it is chosen so that M
    correlates positively with the mean activation map (1/C) sum_k A^k.
    """
    return _first_component(activations, centre=False)


def eigengradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Eigen-Grad-CAM (pytorch-grad-cam): M = ReLU(B v_1), B = g ⊙ A.

    With B as an (hw, C) matrix centred on its column means, v_1 is its first right
    singular vector, as the peer computes it; its sign, which the peer leaves to the
    SVD, is chosen so that B v_1 correlates positively with (1/C) sum_k B^k, the
    HiResCAM map (before its ReLU) over C.
    """
    return torch.relu(_first_component(gradients * activations, centre=True))


def kpcacam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """KPCA-CAM (Karmani et al., 2024; pytorch-grad-cam's ``KPCA_CAM``): M = ReLU(√λ₁ v₁),
    v₁ the leading eigenvector of the centred kernel matrix K_ij = k(x_i, x_j) over the
    cells' activation vectors x_i (C,), themselves centred; ``kernel`` and ``gamma``
    (None: 1 / C) as scikit-learn's KernelPCA. Class-agnostic, no backward. A layer of
    more than :data:`KPCA_CELLS` cells (an early layer of a large image: the peer's
    kernel matrix would not fit in memory) is average-pooled to at most that many, and
    the map upsampled back (bilinear)."""
    channels, height, width = activations.shape
    factor = math.ceil(math.sqrt(height * width / KPCA_CELLS))
    if factor > 1:
        grid = (math.ceil(height / factor), math.ceil(width / factor))
        pooled = F.adaptive_avg_pool2d(activations[None].double(), grid)[0]
        coarse = kpcacam(pooled, gradients, context)
        return F.interpolate(coarse[None, None], (height, width), mode="bilinear")[0, 0].to(
            activations.dtype
        )
    x = activations.double().reshape(channels, -1).T
    x = x - x.mean(dim=0)
    kernel = _kernel(x, str(context.options["kernel"]), context.options["gamma"])
    kernel = kernel - kernel.mean(dim=0) - kernel.mean(dim=1, keepdim=True) + kernel.mean()
    value, vector = _leading_eigenpair(kernel)
    projection = vector * max(value, 0.0) ** 0.5
    signed = _signed(projection, x.mean(dim=1))
    return torch.relu(signed).reshape(height, width).to(activations.dtype)


def _kernel(x: Tensor, name: str, gamma: object) -> Tensor:
    """scikit-learn's pairwise kernel ``name`` over the rows of ``x`` (float64)."""
    gamma = 1.0 / x.shape[1] if gamma is None else float(gamma)
    dot = x @ x.T
    if name == "linear":
        return dot
    if name == "sigmoid":
        return torch.tanh(gamma * dot + 1.0)
    if name == "poly":
        return (gamma * dot + 1.0) ** 3
    if name == "rbf":
        squared = dot.diagonal()
        return torch.exp(-gamma * (squared[:, None] + squared[None, :] - 2 * dot).clamp(min=0))
    if name == "cosine":
        norm = dot.diagonal().sqrt()
        norm = torch.where(norm == 0, torch.ones_like(norm), norm)
        return dot / norm[:, None] / norm[None, :]
    raise ValueError(f"unknown kernel {name!r}: choose one of {', '.join(KERNELS)}")


def _leading_eigenpair(matrix: Tensor) -> tuple[float, Tensor]:
    """The largest eigenvalue of the symmetric ``matrix`` and its unit eigenvector:
    torch's dense solver for a few cells, else ARPACK's Lanczos iteration (scipy)."""
    if len(matrix) <= DENSE_CELLS:
        values, vectors = torch.linalg.eigh(matrix)
        return float(values[-1]), vectors[:, -1]
    values, vectors = eigsh(matrix.cpu().numpy(), k=1, which="LA", v0=np.ones(len(matrix)))
    return float(values[0]), torch.from_numpy(vectors[:, 0]).to(matrix.device)


def _signed(projection: Tensor, mean_map: Tensor) -> Tensor:
    """``projection`` (..., n) or its negative, each row the one that correlates
    positively with its row of ``mean_map`` (on a tie, the one with the larger sum)."""
    centred = projection - projection.mean(dim=-1, keepdim=True)
    correlation = (centred * (mean_map - mean_map.mean(dim=-1, keepdim=True))).sum(dim=-1)
    flip = (correlation < 0) | ((correlation == 0) & (projection.sum(dim=-1) < 0))
    return torch.where(flip[..., None], -projection, projection)


def summed(contributions: Tensor, context: MethodContext) -> Tensor:
    """ReLU of sum_k contributions^k (..., C, h, w), or, with the option
    ``eigen_smooth``, of their first principal component (pytorch-grad-cam's
    eigen_smooth: the (hw, C) matrix centred on its column means; the sign fixed as
    Eigen-Grad-CAM's)."""
    if context.options.get("eigen_smooth"):
        return torch.relu(_first_component(contributions, centre=True))
    return torch.relu(contributions.sum(dim=-3))


def weighted(weights: Tensor, activations: Tensor, context: MethodContext) -> Tensor:
    """ReLU of sum_k w_k A^k for weights (..., C) and A (..., C, h, w) (one
    contraction), or with ``eigen_smooth`` :func:`summed`'s component of the maps
    w_k A^k."""
    if context.options.get("eigen_smooth"):
        return summed(weights[..., None, None] * activations, context)
    return torch.relu(torch.einsum("...k,...khw->...hw", weights, activations))


def _first_component(maps: Tensor, centre: bool) -> Tensor:
    """maps (..., C, h, w), each image's as an (hw, C) matrix X (centred on its column
    means if ``centre``), projected on its first right singular vector: X v_1 (..., h,
    w), the sign chosen so that it correlates positively with the mean map (1/C) sum_k
    X^k. An image whose X is all zero or not finite gets zeros."""
    *batch, channels, height, width = maps.shape
    matrix = maps.double().reshape(*batch, channels, -1).transpose(-1, -2)
    if centre:
        matrix = matrix - matrix.mean(dim=-2, keepdim=True)
    usable = torch.isfinite(matrix).all(dim=(-2, -1)) & matrix.any(dim=-1).any(dim=-1)
    matrix = torch.where(usable[..., None, None], matrix, torch.zeros_like(matrix))
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    projection = _signed((matrix @ vh[..., 0, :, None])[..., 0], matrix.mean(dim=-1))
    projection = torch.where(usable[..., None], projection, torch.zeros_like(projection))
    return projection.reshape(*batch, height, width).to(maps.dtype)
