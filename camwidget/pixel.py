"""Pixel-level attributions: guided backpropagation (Springenberg et al., ICLR-W 2015).

The gradient of the target's score with respect to the input pixels, with every
rectifier's backward passing only positive gradients (and, as the rectifier's own
derivative does, only where its input is positive). The rule is put in place by
temporary forward hooks on the model's rectifier modules, which append an identity whose
backward keeps the positive part of the gradient: the model is never edited or copied,
and in-place rectifiers work. A rectifier applied as a function (``F.relu`` in a
``forward``) cannot be hooked: it is found while the pass runs and reported by module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .capture import called, guarded
from .errors import CamwidgetError

#: The modules whose backward follows the guided rule: ReLU and its capped form.
RECTIFIERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)

_FUNCTIONAL_RELUS = {torch.relu, torch.relu_, F.relu, F.relu6, Tensor.relu, Tensor.relu_}


class _PositiveGradient(torch.autograd.Function):
    """The identity, whose backward passes on only the positive part of the gradient."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


class _FunctionalReLUs(TorchFunctionMode):
    """Records the modules whose own ``forward`` calls a ReLU as a function."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.stack: list[nn.Module] = []
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        inside = self.stack[-1] if self.stack else None
        if func in _FUNCTIONAL_RELUS and not isinstance(inside, RECTIFIERS):
            name = self.names.get(id(inside), "") if inside is not None else ""
            self.found.append(repr(name) if name else "the model's own forward")
        return func(*args, **(kwargs or {}))


@contextmanager
def watching_functional_relus(model: nn.Module) -> Iterator[_FunctionalReLUs]:
    """Within: functional ReLU calls are recorded with the module that made them."""
    mode = _FunctionalReLUs({id(m): name for name, m in model.named_modules()})

    def enter(module: nn.Module, args: object) -> None:
        mode.stack.append(module)

    def leave(module: nn.Module, args: object, output: object) -> None:
        mode.stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(enter)
    post = nn.modules.module.register_module_forward_hook(leave)
    try:
        with mode:
            yield mode
    finally:
        pre.remove()
        post.remove()


def guided_backprop(
    model: nn.Module,
    inputs: Tensor,
    score: Callable[[object], Tensor],
) -> Tensor:
    """Guided backpropagation of ``score(output)`` (one number) for ``inputs`` (1, 3, H, W):
    the (3, H, W) gradient at the input under the guided rule. One forward, one backward;
    the model is left as it was."""
    rectifiers = [m for m in model.modules() if isinstance(m, RECTIFIERS)]
    if not rectifiers:
        raise CamwidgetError(
            "guided backpropagation needs ReLU modules (nn.ReLU or nn.ReLU6); this model "
            "has none: use Grad-CAM, or a model with ReLU modules"
        )
    x = inputs.detach().clone().requires_grad_(True)
    with guarded(model) as handles, torch.enable_grad(), watching_functional_relus(model) as watch:
        for module in rectifiers:
            handles.append(
                module.register_forward_hook(lambda m, a, out: _PositiveGradient.apply(out))
            )
        output = called(model, x)
        value = score(output)
    if watch.found:
        where = ", ".join(sorted(set(watch.found)))
        raise CamwidgetError(
            f"guided backpropagation cannot follow a ReLU applied as a function (in {where}): "
            "only ReLU modules can be hooked; use Grad-CAM, or nn.ReLU modules there"
        )
    (gradient,) = torch.autograd.grad(value, x)
    return gradient[0].detach()
