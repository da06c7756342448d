"""FullGrad's decomposition (Srinivas & Fleuret, NeurIPS 2019): the target's gradient
at the input and at the output of every layer that adds a bias to a feature map.

For a network of convolutions, linear layers, ReLUs, max or average pooling and batch
norms in eval mode, y_c = Σ x ⊙ ∇_x y_c + Σ_layers Σ b ⊙ ∇_b y_c exactly (the paper's
completeness), where ∇_b y_c at each cell is the gradient at the layer's output. A batch
norm's bias is its offset as an affine map, β - γ μ / √(σ² + ε). The biased layers are
``nn.Conv2d`` with a bias and ``nn.BatchNorm2d`` themselves (as pytorch-grad-cam; a
subclass may do more in its ``forward``); one forward with temporary hooks, one backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .capture import called, guarded

#: The layers whose bias FullGrad reads: exactly these types.
BIASED: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.BatchNorm2d)


def bias_of(module: nn.Module) -> Tensor | None:
    """The bias a layer adds to each channel (C,); None where it adds none (or a batch
    norm normalises by the batch's own statistics)."""
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:
            return None
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        shift = module.bias if module.bias is not None else torch.zeros_like(scale)
        return (shift - module.running_mean * scale).detach()
    bias = getattr(module, "bias", None)
    return bias.detach() if isinstance(bias, Tensor) else None


def decomposition(
    model: nn.Module, inputs: Tensor, score: Callable[[object], Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """For ``score(output)`` (one number) at ``inputs`` (1, 3, H, W): x ⊙ ∇_x y (3, H, W)
    and, for each call of a biased layer that the score depends on, b ⊙ ∇ y at its
    output (C, h, w). The model is left as it was."""
    biased = [(m, bias_of(m)) for m in model.modules() if type(m) in BIASED]
    kept: list[tuple[Tensor, Tensor]] = []  # (bias, the layer's output)

    def keep(bias: Tensor) -> Callable[[nn.Module, object, Tensor], Tensor]:
        def hook(module: nn.Module, args: object, out: Tensor) -> Tensor:
            kept.append((bias, out))
            return out.clone()  # what follows may work in place: ``out`` stays as it was

        return hook

    x = inputs.detach().clone().requires_grad_(True)
    with guarded(model) as handles, torch.enable_grad():
        for module, bias in biased:
            if bias is not None:
                handles.append(module.register_forward_hook(keep(bias)))
        value = score(called(model, x))
    found = torch.autograd.grad(value, [x, *(out for _, out in kept)], allow_unused=True)
    products = [
        bias.to(gradient)[:, None, None] * gradient[0]
        for (bias, _), gradient in zip(kept, found[1:], strict=True)
        if gradient is not None and gradient.dim() == 4
    ]
    return (x * found[0])[0].detach(), [product.detach() for product in products]
