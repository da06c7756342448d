"""Layer-wise Relevance Propagation (Bach et al., 2015) through zennit.

The relevance of each input pixel under one of zennit's composites (rules by layer
type), with its canonizers (batch norm merged into the layer before it, residual
additions as ``Sum`` modules) applied for the pass only: zennit restores the weights and
removes its hooks on exit, inside camwidget's model guard. The initial relevance is the
target's score: for a class, the one-hot vector scaled by its logit, so that the
relevance sums (approximately, exactly for bias-free ReLU networks) to the logit.
zennit is an optional extra: ``pip install camwidget[lrp]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .capture import guarded
from .errors import CamwidgetError

#: Composite names (contract), the default first.
COMPOSITES = ("epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1")
_ZENNIT_NAMES = {name: "".join(p.title() for p in name.split("-")) for name in COMPOSITES}

#: Leaf modules without parameters that relevance passes through as the gradient does.
_PASSING = (
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
)


def _zennit():
    try:
        import zennit.canonizers
        import zennit.composites
        import zennit.layer
        import zennit.torchvision
        import zennit.types
    except ImportError as error:
        raise CamwidgetError(
            "LRP needs zennit, an optional extra: pip install 'camwidget[lrp]'"
        ) from error
    return zennit


#: module class -> a function that makes a zennit canonizer for the models holding one;
#: a model's own package registers its canonizers (see :func:`register_canonizer`).
_CANONIZERS: dict[type[nn.Module], Callable[[], object]] = {}


def register_canonizer(kind: type[nn.Module], make: Callable[[], object]) -> None:
    """Use the canonizer ``make()`` (zennit imported by then) for every model holding a
    ``kind`` module, after batch norm merging."""
    _CANONIZERS[kind] = make


def canonizers(model: nn.Module) -> list:
    """zennit's canonizers for ``model``: torchvision's ResNet and VGG ones where the
    model is one, else batch norm merging and those registered for its modules."""
    zennit = _zennit()
    import torchvision

    found = {type(m) for m in model.modules()}
    resnet_blocks = (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)
    if any(issubclass(kind, resnet_blocks) for kind in found):
        return [zennit.torchvision.ResNetCanonizer()]
    if isinstance(model, torchvision.models.VGG):
        return [zennit.torchvision.VGGCanonizer()]
    own = [make() for kind, make in _CANONIZERS.items() if kind in found]
    return [zennit.canonizers.SequentialMergeBatchNorm(), *own]


def composite(name: str, model: nn.Module, low: Tensor, high: Tensor) -> object:
    """The zennit composite ``name`` (see :data:`COMPOSITES`) with ``model``'s
    canonizers; ``low`` and ``high`` bound the input's values (the box rule needs them)."""
    if name not in COMPOSITES:
        raise CamwidgetError(
            f"unknown LRP composite {name!r}: choose one of {', '.join(COMPOSITES)}"
        )
    kind = getattr(_zennit().composites, _ZENNIT_NAMES[name])
    if name == "epsilon-gamma-box":
        return kind(low=low, high=high, canonizers=canonizers(model))
    return kind(canonizers=canonizers(model))


def unruled(model: nn.Module) -> list[str]:
    """The leaf modules that no rule covers and that relevance cannot pass through as the
    gradient does (a layer type zennit has no rule for), by name."""
    types = _zennit().types
    covered = (types.Linear, types.BatchNorm, types.AvgPool, types.Activation, *_PASSING)
    return [
        name
        for name, module in model.named_modules()
        if name and not list(module.children()) and not isinstance(module, covered)
    ]


def relevance(
    model: nn.Module,
    inputs: Tensor,
    score: Callable[[object], Tensor],
    name: str = "epsilon-plus-flat",
    bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The LRP relevance (3, H, W) of ``inputs`` (1, 3, H, W) for ``score(output)`` (one
    number) under composite ``name``; ``bounds`` (low, high), each broadcastable to the
    input, for the box rule. One forward, one backward; the model is left as it was."""
    missing = unruled(model)
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise CamwidgetError(
            f"LRP has no rule for {shown} ({type(model.get_submodule(missing[0])).__name__}): "
            "zennit's composites cover convolutions, linear layers, batch norm, pooling and "
            "activations; use Grad-CAM or guided backpropagation for this model"
        )
    low, high = bounds or (inputs.detach().amin(), inputs.detach().amax())
    chosen = composite(name, model, low.expand_as(inputs), high.expand_as(inputs))
    x = inputs.detach().clone().requires_grad_(True)
    with guarded(model), torch.enable_grad(), chosen.context(model):
        try:
            value = score(model(x))
        except CamwidgetError:
            raise
        except Exception as error:
            raise CamwidgetError(
                f"the model failed under LRP: {type(error).__name__}: {error}"
            ) from error
        (result,) = torch.autograd.grad(value, x, grad_outputs=value.detach())
    return result[0].detach()
