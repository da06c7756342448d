"""DeepLIFT's rescale rule (Shrikumar et al., ICML 2017), as Captum applies it.

The input and its reference (the baseline) go through the model as one batch of two.
Each elementwise nonlinearity passes back, instead of its derivative, the multiplier
Δout / Δin between the two rows (its derivative where |Δin| < 1e-10); a max pooling
passes back Captum's rule: the gradient times the difference of the pooled outputs
split at their cross maximum, scattered to the arg-max cells of both rows, summed, and
divided by Δin. Linear layers keep their gradient, so for a network of linear layers
and these modules the attributions (x - x̄) · m sum to f(x) - f(x̄).

The rule is put in place by temporary hooks: a pre-hook hands the module a copy of its
input (so that in-place rectifiers leave the original on the graph) and the forward
hook returns the module's output through a function whose backward goes straight to
that input. Modules called more than once (a ResNet block's shared ReLU) work, since
each call has its own pair. A nonlinearity applied as a function cannot be hooked and
is refused, as in guided backpropagation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .capture import called, guarded
from .errors import CamwidgetError
from .pixel import RECTIFIERS, watching_functional_relus

#: Nonlinearities that follow the rescale rule: Captum's, and the other elementwise
#: activations of today's models (Captum gives those their plain gradient).
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    *RECTIFIERS, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.CELU, nn.SELU,
)  # fmt: skip
POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
EPS = 1e-10


class _Rescaled(torch.autograd.Function):
    """The module's output ``out``; its backward goes to the module's input ``x`` by
    ``rule(gradient)`` instead of the module's derivative."""

    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor, rule: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.rule = rule
        return out.clone()

    @staticmethod
    def backward(ctx, gradient: Tensor) -> tuple[Tensor, None, None]:
        return ctx.rule(gradient), None, None


def _twice(half: Tensor) -> Tensor:
    return torch.cat([half, half])


def _vjp(module: nn.Module, x: Tensor, vector: Tensor) -> Tensor:
    """The module's own backward at ``x`` of ``vector`` (hooks not run)."""
    with torch.enable_grad():
        probe = x.detach().clone().requires_grad_(True)
        (found,) = torch.autograd.grad(module.forward(probe * 1.0), probe, vector)
    return found


def _elementwise(module: nn.Module, x: Tensor, out: Tensor) -> Callable[[Tensor], Tensor]:
    """Δout / Δin between the input's and the reference's rows, or the derivative."""
    half = len(x) // 2
    delta_in = _twice(x[:half] - x[half:])
    delta_out = _twice(out[:half] - out[half:])
    small = delta_in.abs() < EPS
    ratio = delta_out / torch.where(small, torch.ones_like(delta_in), delta_in)

    def rule(gradient: Tensor) -> Tensor:
        if not small.any():
            return gradient * ratio
        return torch.where(small, _vjp(module, x, gradient), gradient * ratio)

    return rule


def _pool(module: nn.Module, x: Tensor, out: Tensor) -> Callable[[Tensor], Tensor]:
    """Captum's max-pooling rule (see the module's docstring)."""
    half = len(x) // 2
    delta_in = _twice(x[:half] - x[half:])
    cross = torch.maximum(out[:half], out[half:])
    delta_out = torch.cat([cross - out[half:], out[:half] - cross])
    small = delta_in.abs() < EPS

    def rule(gradient: Tensor) -> Tensor:
        scattered = _vjp(module, x, gradient * delta_out)
        both = _twice(scattered[:half] + scattered[half:])
        if not small.any():
            return both / delta_in
        safe = torch.where(small, torch.ones_like(delta_in), delta_in)
        return torch.where(small, _vjp(module, x, gradient), both / safe)

    return rule


def multipliers(
    model: nn.Module, inputs: Tensor, baseline: Tensor, score: Callable[[object], Tensor]
) -> Tensor:
    """DeepLIFT's multipliers m (3, H, W) of the input ``inputs`` (1, 3, H, W) against
    ``baseline`` (same shape) for ``score(output)`` (one number per row; as in Captum,
    both rows' scores are propagated). The attribution is (inputs - baseline) · m."""
    stack: list[Tensor] = []

    def enter(module: nn.Module, args: tuple) -> tuple:
        stack.append(args[0])
        return (args[0].clone(), *args[1:])

    def leave(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x = stack.pop()
        make = _pool if isinstance(module, POOLS) else _elementwise
        return _Rescaled.apply(x, out.detach(), make(module, x.detach(), out.detach()))

    pair = torch.cat([inputs, baseline.to(inputs)]).detach().requires_grad_(True)
    modules = [m for m in model.modules() if isinstance(m, (*ELEMENTWISE, *POOLS))]
    with guarded(model) as handles, torch.enable_grad(), watching_functional_relus(model) as watch:
        for module in modules:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
        output = called(model, pair)
        total = score(output).sum()
    if watch.found:
        where = ", ".join(sorted(set(watch.found)))
        raise CamwidgetError(
            f"DeepLIFT cannot follow a ReLU applied as a function (in {where}): only "
            "modules can be hooked; use integrated-gradients, or nn.ReLU modules there"
        )
    if not total.requires_grad:
        return torch.zeros_like(inputs[0])
    (gradient,) = torch.autograd.grad(total, pair)
    return gradient[0].detach()
