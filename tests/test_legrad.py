"""LeGrad for vision transformers: equal to TorchCAM's on torchvision's ViT, and to the
gradient of the logit at the last attention where a timm ViT pools by the mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import ModelState
from torchcam.methods import LeGrad

from camwidget import CamwidgetError, Explainer, methods

timm = pytest.importorskip("timm")


def min_max(raw: np.ndarray) -> np.ndarray:
    return (raw - raw.min()) / (raw.max() - raw.min())


@pytest.fixture(scope="module")
def torchvision_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=48, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    ).eval()  # fmt: skip
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model


@pytest.mark.parametrize("blocks", [1, 2, None])
def test_legrad_equals_torchcam_on_torchvisions_vit(torchvision_vit, blocks):
    x = torch.randn(3, 48, 48, generator=torch.Generator().manual_seed(1))
    before = ModelState.of(torchvision_vit)
    calls = []
    handle = torchvision_vit.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        e = Explainer(torchvision_vit, legrad_blocks=blocks).explain(x, None, 3, "legrad")
    finally:
        handle.remove()
    # the image's forward keeps every block's tokens: LeGrad runs only the last blocks
    assert len(calls) == (1 if blocks else 2)
    layers = list(torchvision_vit.encoder.layers)
    with LeGrad(torchvision_vit, layers[-blocks:] if blocks else layers) as peer:
        theirs = peer(3, torchvision_vit(x[None]))[0][0].numpy()
    assert e.raw.shape == (6, 6) and e.raw.min() >= 0
    np.testing.assert_allclose(min_max(e.raw), theirs, atol=1e-4)
    before.assert_same(torchvision_vit)


def test_legrad_at_the_last_block_of_a_mean_pooled_timm_vit_is_the_logits_gradient():
    """Without a class token and pooled by the mean, the last block's score is the
    model's own logit: LeGrad there is ReLU(∂y_c/∂A) at the last attention, averaged
    over heads and queries, taken here on the model's own unfused pass."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=64, num_classes=10, class_token=False,
        global_pool="avg", depth=3,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    before = ModelState.of(model)
    e = Explainer(model, legrad_blocks=1).explain(x[0], None, 4, "legrad")
    assert all(block.attn.fused_attn for block in model.blocks)  # restored
    before.assert_same(model)

    kept = {}
    last = model.blocks[-1].attn
    last.fused_attn = False
    handle = last.attn_drop.register_forward_hook(lambda m, a, out: kept.update(a=out))
    try:
        logits = model(x.clone().requires_grad_(True))
        (gradient,) = torch.autograd.grad(logits[0, 4], kept["a"])
    finally:
        handle.remove()
        last.fused_attn = True
    expected = gradient[0].clamp(min=0).mean(dim=(0, 1)).reshape(4, 4)
    np.testing.assert_allclose(e.raw, expected.numpy(), rtol=1e-4, atol=1e-7)


def test_legrad_is_offered_only_for_vision_transformers(resnet18, torchvision_vit):
    cnn = Explainer(resnet18)
    assert "LeGrad does not apply to this model" in cnn.why_not("legrad", "layer4")
    with pytest.raises(CamwidgetError, match="reads the attention of a vision transformer"):
        cnn.explain(torch.rand(3, 64, 64), "layer4", 1, "legrad")
    resolved = cnn.resolve("legrad", "layer4", fallback=True)
    assert resolved.method == "gradcam" and "to this model: switched to" in resolved.note
    assert Explainer(torchvision_vit).why_not("legrad") is None
    assert methods.get("legrad").group == methods.GROUPS[0]


def test_legrad_on_a_blank_image_and_through_explain_batch(torchvision_vit):
    ex = Explainer(torchvision_vit)
    blank = ex.explain(torch.zeros(3, 48, 48), None, 3, "legrad")
    assert np.isfinite(blank.raw).all()
    images = [torch.randn(3, 48, 48, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    batch = ex.explain_batch(images, None, [3, 5], method="legrad")
    for image, target, e in zip(images, [3, 5], batch, strict=True):
        single = Explainer(torchvision_vit).explain(image, None, target, "legrad")
        np.testing.assert_allclose(e.raw, single.raw, atol=1e-5 * single.raw.max())


def test_a_method_with_second_derivatives_on_a_vit_says_why_it_cannot(torchvision_vit):
    """ShapleyCAM's Hessian product through PyTorch's fused attention on a CPU, which has
    no second derivative: a message in words, the model untouched."""
    before = ModelState.of(torchvision_vit)
    ex = Explainer(torchvision_vit)
    x = torch.randn(3, 48, 48, generator=torch.Generator().manual_seed(1))
    with pytest.raises(CamwidgetError, match="needs second derivatives.*use Grad-CAM"):
        ex.explain(x, None, 3, "shapleycam")
    before.assert_same(torchvision_vit)
    assert ex.explain(x, None, 3, "gradcam").raw.max() > 0  # the explainer goes on
