"""Class activation map methods as pure functions.

Each method takes the activations A (C, h, w) of one layer for one image, the gradients
g = dy_c/dA (C, h, w) of the target's logit y_c, and a :class:`MethodContext`, and
returns the method's raw map (h, w) at feature resolution, exactly as its paper defines
it (including the ReLU where the paper has one), before upsampling and normalisation.
Nothing here knows about hooks, caches or widgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MethodContext:
    """What some methods need besides A and g.

    ``class_weights``: the final fully connected layer's weights W[c] (C,) for the
    target class, where CAM applies at this layer, else None.
    """

    class_weights: Tensor | None = None


Method = Callable[[Tensor, Tensor, MethodContext], Tensor]


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """sum_k weights_k * A^k for weights (C,) and activations (C, h, w)."""
    return torch.einsum("k,khw->hw", weights, activations)


def cam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """CAM (Zhou et al., CVPR 2016): M = sum_k W[c, k] A^k, with no ReLU.

    W is the final fully connected layer fed by global average pooling of A, so
    mean(M) + b_c = y_c exactly. Needs ``context.class_weights``.
    """
    if context.class_weights is None:
        raise ValueError("CAM needs the final layer's class weights")
    return _weighted_sum(context.class_weights.to(activations.dtype), activations)


def gradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): M = ReLU(sum_k w_k A^k).

    w_k = (1 / hw) sum_ij g^k_ij, the spatial mean of the gradient of the logit y_c.
    At a GAP -> FC layer w_k = W[c, k] / hw, so M = ReLU(CAM) / hw.
    """
    weights = gradients.mean(dim=(1, 2))
    return torch.relu(_weighted_sum(weights, activations))


#: name -> method. The order is the order the panel offers them in.
REGISTRY: dict[str, Method] = {
    "gradcam": gradcam,
    "cam": cam,
}

#: How each method is written in the papers.
TITLES: dict[str, str] = {"gradcam": "Grad-CAM", "cam": "CAM"}

#: Method names the engine supports (contract).
METHODS: tuple[str, ...] = tuple(REGISTRY)

#: Methods that need the gradients dy_c/dA (one partial backward per class).
NEEDS_GRADIENTS: frozenset[str] = frozenset({"gradcam"})

#: Methods whose map does not depend on the target class.
CLASS_AGNOSTIC: frozenset[str] = frozenset()

#: Methods whose map the paper defines with a final ReLU: a zero map means no evidence.
RECTIFIED: frozenset[str] = frozenset({"gradcam"})
