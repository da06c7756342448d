"""Which model an explainer reads, and where it runs: the model inside the wrappers of
torch.compile and DataParallel, and the device and dtype of its weights."""

from __future__ import annotations

import torch
from torch import nn

from .errors import CamwidgetError


def unwrapped(model: object) -> nn.Module:
    """The model to explain: the one inside torch.compile's and DataParallel's wrappers
    (one pass on one device, its hooks in one thread); anything else refused in words."""
    if not isinstance(model, nn.Module):
        raise CamwidgetError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise CamwidgetError(
            "a TorchScript model (torch.jit.script or trace) runs its layers outside "
            "Python, where no hook can read their feature maps: explain the model it "
            "was made from (the same weights, e.g. its state_dict loaded into it)"
        )
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def placement(
    model: nn.Module, device: str | torch.device | None
) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of ``model``'s first tensors; a ``device`` asked
    for that is not the model's is refused in words (camwidget never moves a model)."""
    tensors = list(model.parameters()) + list(model.buffers())
    own = tensors[0].device if tensors else torch.device("cpu")
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    dtype = floats[0] if floats else torch.float32
    if device is not None and torch.device(device) != own:
        wanted = torch.device(device)
        if not (wanted.type == own.type and wanted.index is None):
            raise CamwidgetError(
                f"the model is on {own}, not {wanted}: move it first (model.to({str(wanted)!r})) "
                "or leave device=None; camwidget never moves your model"
            )
    return own, dtype
