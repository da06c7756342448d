"""A model named on the command line: ``efficientnet_lite0`` (embedded, offline),
``torchvision:resnet50``, ``timm:convnext_tiny`` (weights as those libraries load them:
from their cache, or downloaded once), ``package.module:function`` (the user's own
function, returning a model or ``(model, preprocess, labels)``), or the path of a file
holding a whole model saved by ``torch.save(model, path)`` (read with pickle, as
``torch.load`` does: open only files you trust; the model's classes must be importable).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from . import zoo
from .errors import CamwidgetError

FORMS = (
    "efficientnet_lite0 (embedded), torchvision:NAME (e.g. torchvision:resnet50), "
    "timm:NAME (e.g. timm:convnext_tiny), package.module:function returning a model "
    "or (model, preprocess, labels), or a file saved by torch.save(model, path)"
)


class Source(NamedTuple):
    """A model in eval mode, its ``preprocess`` (None: camwidget reads what it needs
    from the model) and class ``labels`` (None: numbers), named ``name``."""

    model: nn.Module
    preprocess: Callable | None
    labels: Sequence[str] | None
    name: str


def check(spec: str) -> None:
    """Refuse, in words, a ``spec`` that names no model (without building one)."""
    if Path(spec).is_file():
        return
    library, _, name = spec.partition(":")
    if not name:
        if spec not in zoo.names():
            raise CamwidgetError(f"unknown model {spec!r}: give {FORMS}")
    elif library in ("torchvision", "timm"):
        _known(library, name)
    else:
        _loader(library, name)


def load(spec: str, pretrained: bool = True) -> Source:
    """The model ``spec`` names (see the module's docstring); ``pretrained=False`` builds
    torchvision's and timm's models with random weights (nothing downloads)."""
    if Path(spec).is_file():
        return Source(_saved(Path(spec)).eval(), None, None, Path(spec).name)
    library, _, name = spec.partition(":")
    if not name:
        if spec in zoo.names():
            return Source(*zoo.load(spec), spec)
        raise CamwidgetError(f"unknown model {spec!r}: give {FORMS}")
    loaders = {"torchvision": _torchvision, "timm": _timm}
    try:
        if library in loaders:
            found = loaders[library](name, pretrained)
        else:
            found = _function(library, name)
    except CamwidgetError:
        raise
    except Exception as error:
        raise CamwidgetError(
            f"cannot load {spec!r}: {type(error).__name__}: {error}{_hint(library, pretrained)}"
        ) from error
    return Source(found[0].eval(), found[1], found[2], spec)


def _known(library: str, name: str) -> None:
    module = importlib.import_module(library)
    names = module.models.list_models() if library == "torchvision" else module.list_models(name)
    if name not in names:
        raise CamwidgetError(f"{library} has no model {name!r} (see {library}'s list_models())")


def _torchvision(name: str, pretrained: bool) -> tuple:
    import torchvision

    _known("torchvision", name)
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (KeyError, ValueError):
        weights = None
    model = torchvision.models.get_model(name, weights=weights if pretrained else None)
    if weights is None:
        return model, None, None
    return model, weights.transforms(), list(weights.meta.get("categories") or []) or None


def _timm(name: str, pretrained: bool) -> tuple:
    import timm

    _known("timm", name)
    model = timm.create_model(name, pretrained=pretrained)
    config = timm.data.resolve_data_config({}, model=model)
    labels = zoo.imagenet_labels() if getattr(model, "num_classes", 0) == 1000 else None
    return model, timm.data.create_transform(**config), labels


def _loader(module: str, function: str) -> Callable:
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise CamwidgetError(
            f"cannot find {function!r} in module {module!r} ({error}): give {FORMS}"
        ) from None


def _function(module: str, function: str) -> tuple:
    found = _loader(module, function)()
    if isinstance(found, nn.Module):
        return found, None, None
    if isinstance(found, tuple) and len(found) == 3 and isinstance(found[0], nn.Module):
        return found
    raise CamwidgetError(
        f"{module}:{function}() returned a {type(found).__name__}: it must return a model "
        "or (model, preprocess, labels)"
    )


def _saved(path: Path) -> nn.Module:
    """The whole model saved in the file at ``path``."""
    try:
        found = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CamwidgetError(
            f"cannot read a model from {str(path)!r}: {type(error).__name__}: {error}"
        ) from error
    if isinstance(found, nn.Module):
        return found
    if isinstance(found, dict):
        raise CamwidgetError(
            f"{str(path)!r} holds weights only (a state dict): load them into your model "
            "in a function of your own and give package.module:function, or save the "
            "whole model with torch.save(model, path)"
        )
    raise CamwidgetError(f"{str(path)!r} holds a {type(found).__name__}, not a model: give {FORMS}")


def _hint(library: str, pretrained: bool) -> str:
    if pretrained and library in ("torchvision", "timm"):
        return (
            f"; {library} downloads pretrained weights once (into its cache): on a machine "
            "without the internet, copy them there, or try the model with random weights"
        )
    return ""
