"""One model's weights for many users in one process: a view of a model is a copy of its
modules whose parameters and buffers are the same memory.

Each view has its own hooks, train/eval flags and ``requires_grad`` switches, so that
explainers on different views (a classroom's sessions, each in its own thread) never see
each other's hooks or undo each other's guards; the weights are stored once. A view adds
only its module objects (kilobytes).
"""

from __future__ import annotations

import copy

from torch import nn


def shared_view(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that shares its parameters' and buffers' memory (never their
    gradients or switches). What changes them in place (a training pass updates the
    batch-norm statistics) shows in both; nothing else does."""
    memo: dict[int, object] = {}
    for parameter in model.parameters():
        if id(parameter) not in memo:
            memo[id(parameter)] = nn.Parameter(
                parameter.detach(), requires_grad=parameter.requires_grad
            )
    for buffer in model.buffers():
        memo[id(buffer)] = buffer
    return copy.deepcopy(model, memo)
