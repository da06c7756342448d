"""Grad-CAM at token and channels-last layers agrees with pytorch-grad-cam given its own
reshape_transform (what users of the peer write by hand)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
from compat import with_live_head
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from camwidget import Explainer


def tokens_to_nchw(extra: int, grid: int):
    def reshape_transform(tensor):
        return tensor[:, extra:].reshape(tensor.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    return reshape_transform


def channels_last_to_nchw(tensor):
    return tensor.permute(0, 3, 1, 2)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.startswith("tv:"):
            return with_live_head(torchvision.models.get_model(name[3:], weights=None))
        return with_live_head(timm.create_model(name, pretrained=False))


CASES = [
    ("tv:vit_b_16", "encoder.layers.encoder_layer_11.ln_1", "tokens", tokens_to_nchw(1, 14)),
    ("tv:vit_b_16", "encoder.layers.encoder_layer_5", "tokens", tokens_to_nchw(1, 14)),
    ("tv:swin_t", "features.7", "nhwc", channels_last_to_nchw),
    ("tv:swin_t", "features.5.2.norm1", "nhwc", channels_last_to_nchw),
    ("vit_tiny_patch16_224", "blocks.11.norm1", "tokens", tokens_to_nchw(1, 14)),
    ("vit_tiny_patch16_224", "blocks.6", "tokens", tokens_to_nchw(1, 14)),
    ("swin_tiny_patch4_window7_224", "layers.3.blocks.1.norm2", "tokens", tokens_to_nchw(0, 7)),
    ("swin_tiny_patch4_window7_224", "layers.2", "nhwc", channels_last_to_nchw),
]


@pytest.mark.parametrize(("name", "layer", "layout", "reshape_transform"), CASES)
def test_grad_cam_equals_the_peer_with_its_reshape_transform(
    photo_tensor, name, layer, layout, reshape_transform
):
    model = build(name)
    ex = Explainer(model)
    assert ex.layer(layer).layout == layout
    logits = model(photo_tensor[None])[0].detach()
    module = model.get_submodule(layer)
    with GradCAM(model=model, target_layers=[module], reshape_transform=reshape_transform) as peer:
        for target in (int(logits.argmax()), 7):
            theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(target)])[0]
            ours = ex.explain(photo_tensor, layer=layer, target=target)
            assert ours.raw.max() > 0, f"{name} {layer} class {target}: an empty map"
            assert ours.heatmap.shape == theirs.shape == (224, 224)
            diff = float(np.abs(ours.heatmap - theirs).max())
            assert diff <= 1e-3, f"{name} {layer} class {target}: max diff {diff}"
