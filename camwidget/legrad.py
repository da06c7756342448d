"""LeGrad's pass (Bousselham et al., ICCV 2025): the gradient of each block's own class
score with respect to that block's attention probabilities, in a vision transformer.

A block's score s^l is the target's score of its tokens read as the model reads its
last block's: the mean over every token, then the model's final norm and head (the
authors' code and TorchCAM's ``LeGrad``). The attention probabilities are not kept by
the fused kernels: timm's ``Attention`` is run unfused for the pass, and torchvision's
``nn.MultiheadAttention`` is computed by the hook from its own weights (self-attention
without masks or added keys). One pass with temporary hooks, from the input or, where
the image's forward kept the output of the block before the first one read, from
there (through the last blocks only); one small backward per block. The model is left
as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .capture import called, guarded
from .errors import CamwidgetError

NOT_A_VIT = (
    "LeGrad reads the attention of a vision transformer (timm's or torchvision's "
    "VisionTransformer), and this model is neither"
)


@dataclass(frozen=True)
class Transformer:
    """Where LeGrad reads a vision transformer: its ``blocks`` (tokens (N, T, D) out),
    each block's attention module, the ``head`` from mean tokens (N, D) to logits, and
    the number of ``prefix`` tokens (class, register) before the patches."""

    blocks: list[nn.Module]
    attentions: list[nn.Module]
    head: Callable[[Tensor], Tensor]
    prefix: int
    unfused: bool  # timm's attention: switched to its unfused path for the pass


def transformer_of(model: nn.Module) -> Transformer | None:
    """The model as LeGrad reads it; None where it is no timm or torchvision ViT."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(model, "fc_norm") and blocks:
        attentions = [getattr(block, "attn", None) for block in blocks]
        if getattr(model, "attn_pool", None) is None and all(
            hasattr(a, "fused_attn") and isinstance(getattr(a, "attn_drop", None), nn.Dropout)
            for a in attentions
        ):
            return Transformer(
                list(blocks),
                attentions,
                lambda pooled: model.head(model.fc_norm(model.norm(pooled))),
                int(getattr(model, "num_prefix_tokens", 1)),
                unfused=True,
            )
    encoder, heads = getattr(model, "encoder", None), getattr(model, "heads", None)
    layers = getattr(encoder, "layers", None)
    if isinstance(layers, nn.Sequential) and isinstance(heads, nn.Module) and layers:
        attentions = [getattr(block, "self_attention", None) for block in layers]
        if all(isinstance(a, nn.MultiheadAttention) for a in attentions):
            return Transformer(
                list(layers), attentions, lambda pooled: heads(encoder.ln(pooled)), 1, False
            )
    return None


def attention_gradients(
    model: nn.Module,
    inputs: Tensor,
    score: Callable[[object], Tensor],
    blocks: int | None,
    kept: Callable[[str], Tensor | None] = lambda name: None,
) -> tuple[list[Tensor], int, tuple[int, int]]:
    """For the last ``blocks`` blocks (None: all), ∂s^l/∂A^l (heads, T, T) of ``score``
    (one number per row of logits) at ``inputs`` (1, 3, H, W); with the number of
    prefix tokens and the patch grid (h, w). ``kept(name)``: the output (1, T, D) of
    the module called ``name`` in the image's own forward, where it was kept."""
    found = transformer_of(model)
    if found is None:
        raise CamwidgetError(NOT_A_VIT)
    chosen = range(len(found.blocks))[-blocks:] if blocks else range(len(found.blocks))
    tokens: dict[int, Tensor] = {}
    attention: dict[int, Tensor] = {}
    before = _before(model, found, chosen.start, kept)
    with guarded(model) as handles, torch.enable_grad(), _unfused(found, chosen):
        for index in chosen:
            handles.append(found.blocks[index].register_forward_hook(_keep(tokens, index)))
            handles.append(_attention_hook(found, index, attention))
        if before is None:
            called(model, inputs.detach().clone().requires_grad_(True))
        else:
            x = before.detach().clone().requires_grad_(True)
            for index in chosen:
                x = found.blocks[index](x)
        gradients = []
        for index in chosen:
            value = score(found.head(tokens[index].mean(dim=1))).sum()
            (gradient,) = torch.autograd.grad(value, attention[index], retain_graph=True)
            gradients.append(gradient[0].detach())
    patches = gradients[0].shape[-1] - found.prefix
    return gradients, found.prefix, _grid(patches, inputs.shape[-2:])


def _before(
    model: nn.Module, found: Transformer, start: int, kept: Callable[[str], Tensor | None]
) -> Tensor | None:
    """The kept input of block ``start`` (the output of the block before), if any."""
    if start == 0:
        return None
    previous = found.blocks[start - 1]
    name = next((n for n, m in model.named_modules() if m is previous), None)
    tokens = kept(name) if name is not None else None
    return tokens if isinstance(tokens, Tensor) and tokens.dim() == 3 else None


def _keep(store: dict[int, Tensor], index: int) -> Callable[..., None]:
    def hook(module: nn.Module, args: object, out: Tensor) -> None:
        store[index] = out

    return hook


def _attention_hook(found: Transformer, index: int, store: dict[int, Tensor]) -> RemovableHandle:
    """A hook that puts block ``index``'s attention probabilities (1, heads, T, T),
    as used downstream, in ``store``."""
    module = found.attentions[index]
    if found.unfused:  # the probabilities pass through the attention's dropout
        return module.attn_drop.register_forward_hook(_keep(store, index))
    _check_plain(module)

    def recompute(mha: nn.MultiheadAttention, args: tuple, kwargs: dict, out: object) -> tuple:
        x, key, value = (*args, *(kwargs.get(n) for n in ("query", "key", "value")))[:3]
        masks = (kwargs.get(n) for n in ("key_padding_mask", "attn_mask"))
        if key is not x or value is not x or any(mask is not None for mask in masks):
            raise CamwidgetError(f"{NOT_A_VIT} (its attention is not plain self-attention)")
        batch, count, width = x.shape
        heads = mha.num_heads
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = qkv.reshape(batch, count, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        store[index] = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(width // heads), -1)
        mixed = (store[index] @ v).transpose(1, 2).reshape(batch, count, width)
        return mha.out_proj(mixed), None

    return module.register_forward_hook(recompute, with_kwargs=True)


def _check_plain(mha: nn.MultiheadAttention) -> None:
    if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_weight is not None):
        raise CamwidgetError(f"{NOT_A_VIT} (its attention is not batch-first self-attention)")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise CamwidgetError(f"{NOT_A_VIT} (its attention adds keys)")


@contextmanager
def _unfused(found: Transformer, chosen: range) -> Iterator[None]:
    """timm's chosen attentions on their unfused path (probabilities materialised)."""
    modules = [found.attentions[i] for i in chosen] if found.unfused else []
    before = [module.fused_attn for module in modules]
    try:
        for module in modules:
            module.fused_attn = False
        yield
    finally:
        for module, fused in zip(modules, before, strict=True):
            module.fused_attn = fused


def _grid(patches: int, size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of ``patches`` cells over an input of ``size`` (H, W)."""
    height = max(1, round(math.sqrt(patches * size[0] / size[1])))
    if patches % height:
        raise CamwidgetError(f"{patches} patch tokens make no grid over a {size} input")
    return height, patches // height
