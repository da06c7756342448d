"""Pixel-level methods: guided backpropagation and Guided Grad-CAM against Captum, the
contract of their explanations, their cost, and what they refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop, GuidedGradCam
from conftest import ModelState
from torch import nn

from camwidget import CamwidgetError, Explainer
from camwidget.zoo import load


def relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_guided_backprop_equals_captum(request, photo_tensor, model_name):
    model = request.getfixturevalue(model_name)
    e = Explainer(model).explain(photo_tensor, target=7, method="guided-backprop")
    theirs = GuidedBackprop(model).attribute(photo_tensor[None].clone(), target=7)[0]
    assert relative(e.attribution, theirs.numpy()) <= 1e-4
    assert np.abs(e.attribution).max() > 0


@pytest.mark.parametrize(
    ("model_name", "layer"), [("resnet18", "layer3"), ("vgg11", "features.19")]
)
def test_guided_gradcam_equals_captum(request, photo_tensor, model_name, layer):
    model = request.getfixturevalue(model_name)
    e = Explainer(model).explain(photo_tensor, layer, 7, "guided-gradcam")
    peer = GuidedGradCam(model, model.get_submodule(layer))
    theirs = peer.attribute(photo_tensor[None].clone(), target=7, interpolate_mode="bilinear")
    assert np.abs(e.raw).max() > 0  # a class with positive Grad-CAM evidence there
    assert relative(e.attribution, theirs[0].detach().numpy()) <= 1e-4


def test_what_a_pixel_level_explanation_holds(resnet18, photo):
    e = Explainer(resnet18).explain(photo, "layer4", 3, "guided-gradcam")
    height, width = photo.size[1], photo.size[0]
    assert e.attribution.shape == (3, *e.raw.shape)  # at the model input's size
    np.testing.assert_allclose(e.raw, e.attribution.sum(axis=0), rtol=1e-6)
    assert e.raw.min() < 0 < e.raw.max()  # signed
    assert e.heatmap.shape == e.heatmap_signed.shape == (height, width)
    assert e.heatmap.min() == 0.0 and e.heatmap.max() == 1.0
    assert e.heatmap_signed.min() >= -1.0 and e.heatmap_signed.max() <= 1.0
    assert max(-e.heatmap_signed.min(), e.heatmap_signed.max()) == 1.0
    positive = np.maximum(e.heatmap_signed, 0)
    np.testing.assert_allclose(e.heatmap, positive / positive.max(), atol=1e-6)
    assert e.message is None


def test_one_guided_pass_per_image_and_target(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    ex.explain(photo_tensor, "layer4", 5, "gradcam")
    before = dict(ex.passes)
    ex.explain(photo_tensor, "layer4", 5, "guided-backprop")
    assert ex.passes["forward"] == before["forward"] + 1
    assert ex.passes["backward"] == before["backward"] + 1
    after = dict(ex.passes)
    ex.explain(photo_tensor, "layer4", 5, "guided-gradcam")  # Grad-CAM and guided: cached
    ex.explain(photo_tensor, "layer3", 5, "guided-gradcam")  # another layer: no guided pass
    assert ex.passes["forward"] == after["forward"]
    ex.explain(photo_tensor, "layer4", 6, "guided-backprop")  # another class: one more
    assert ex.passes["forward"] == after["forward"] + 1


def test_batches_agree_with_single_images(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    images = [photo_tensor, photo_tensor.flip(2)]
    for method in ("guided-backprop", "guided-gradcam"):
        batch = ex.explain_batch(images, "layer3", [7, 9], method)
        for image, target, e in zip(images, [7, 9], batch, strict=True):
            single = ex.explain(image, "layer3", target, method)
            assert np.abs(single.attribution).max() > 0
            assert relative(e.attribution, single.attribution) <= 1e-5


def test_the_model_is_left_as_it_was(resnet18, photo_tensor):
    resnet18.train()
    state = ModelState.of(resnet18)
    try:
        Explainer(resnet18).explain(photo_tensor, "layer2", 1, "guided-gradcam")
        state.assert_same(resnet18)
    finally:
        resnet18.eval()


def test_relu6_models_work():
    model, _, _ = load("efficientnet_lite0")
    e = Explainer(model).explain(torch.randn(3, 96, 96), "head", 1, "guided-backprop")
    assert np.abs(e.attribution).max() > 0


class NoReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class FunctionalReLU(NoReLU):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1))
        self.act = nn.ReLU()

    def forward(self, x):
        hidden = torch.nn.functional.relu(self.block(self.act(self.conv(x))))
        return self.fc(hidden.mean(dim=(2, 3)))


def test_bad_models_get_a_message_in_words():
    x = torch.randn(3, 16, 16)
    with pytest.raises(CamwidgetError, match="needs ReLU modules"):
        Explainer(NoReLU().eval()).explain(x, "conv", 0, "guided-backprop")
    with pytest.raises(CamwidgetError, match="ReLU applied as a function .*own forward"):
        Explainer(FunctionalReLU().eval()).explain(x, "conv", 0, "guided-gradcam")
    model = FunctionalReLU().eval()
    model.block.forward = lambda x: torch.relu(x)  # now inside a submodule: named
    with pytest.raises(CamwidgetError, match="'block'"):
        Explainer(model).explain(x, "conv", 0, "guided-backprop")
