"""With no preprocess: the model's own input size and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

from camwidget import CAMWidget, CamwidgetError, Explainer
from camwidget.inputs import IMAGENET_MEAN, IMAGENET_STD, ModelInput, model_input


@pytest.fixture(scope="module")
def wide_photo(photo):
    return photo.resize((451, 300))


def normalised(photo, size, mean, std, resample):
    rgb = np.asarray(photo.resize(size[::-1], resample), dtype=np.float32) / 255.0
    return torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1).astype(np.float32))


def test_a_timm_model_declares_its_size_and_normalisation(wide_photo):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    spec = model_input(model)
    assert (spec.size, spec.mean, spec.std, spec.resample) == (
        (224, 224),
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bicubic",
    )
    ex = Explainer(model)
    prepared = ex.prepare(wide_photo)
    expected = normalised(wide_photo, (224, 224), 0.5, 0.5, Image.Resampling.BICUBIC)
    torch.testing.assert_close(prepared.inputs[0], expected, rtol=0, atol=1e-6)
    assert prepared.notes == (
        "resized to 224×224 for the model (the model's pretrained_cfg (timm))",
    )
    e = ex.explain(wide_photo)
    assert e.heatmap.shape == (300, 451)  # the photo's own size


def test_a_timm_model_that_takes_any_size_keeps_the_photos(wide_photo):
    model = timm.create_model("resnet18", pretrained=False).eval()
    spec = model_input(model)
    assert spec.size is None and spec.preferred == (224, 224) and spec.mean == IMAGENET_MEAN
    prepared = Explainer(model).prepare(wide_photo)
    assert tuple(prepared.inputs.shape) == (1, 3, 300, 451) and not prepared.notes


def test_torchvision_vit_declares_its_size(wide_photo):
    model = torchvision.models.vit_b_32(weights=None).eval()
    assert model_input(model).size == (224, 224)
    prepared = Explainer(model).prepare(wide_photo)
    expected = normalised(
        wide_photo,
        (224, 224),
        np.float32(IMAGENET_MEAN),
        np.float32(IMAGENET_STD),
        Image.Resampling.BILINEAR,
    )
    torch.testing.assert_close(prepared.inputs[0], expected, rtol=0, atol=1e-6)


class OneSize(nn.Module):
    """Takes 224×224 only, and says nothing about it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 16, stride=16)
        self.fc = nn.Linear(4 * 14 * 14, 3)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_a_model_that_takes_one_size_is_found_out(wide_photo):
    ex = Explainer(OneSize().eval())
    e = ex.explain(wide_photo)  # fails at 451×300, works at 224×224: resized from then on
    assert e.heatmap.shape == (300, 451) and e.layer == "conv"
    assert ex.model_input.size == (224, 224)
    note = "resized to 224×224 for the model (it failed at 451×300 and works at 224×224)"
    assert ex.prepare(wide_photo).notes == (note,)
    assert len(ex.explain_batch([wide_photo, wide_photo.rotate(90)])) == 2
    panel = CAMWidget(OneSize().eval(), wide_photo)
    assert "resized to 224×224 for the model" in panel.controls["status"].value
    panel.close()


def test_a_tensor_is_taken_as_already_preprocessed():
    ex = Explainer(OneSize().eval())
    with pytest.raises(CamwidgetError, match="the model failed on this input"):
        ex.explain(torch.zeros(3, 100, 100))


def test_a_given_preprocess_is_used_as_it_is(wide_photo):
    ex = Explainer(OneSize().eval(), preprocess=lambda image: torch.zeros(3, 100, 100))
    with pytest.raises(CamwidgetError, match="the model failed on this input"):
        ex.explain(wide_photo)
    assert ex.model_input == ModelInput()


def test_a_one_channel_model_is_given_the_luminance(wide_photo):
    """An MNIST-style network (its first convolution takes one channel), no preprocess:
    the photo's luminance (PIL's ``L``), normalised by ImageNet's mean and std averaged
    over the channels; every method and the panel work on it."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    spec = model_input(model)
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    assert (spec.channels, spec.mean, spec.std) == (1, (mean,), (std,))
    ex = Explainer(model)
    prepared = ex.prepare(wide_photo)
    luminance = np.asarray(wide_photo.convert("L"), dtype=np.float32) / 255.0
    expected = torch.from_numpy((luminance - mean) / std)[None]
    torch.testing.assert_close(prepared.inputs[0], expected, rtol=0, atol=1e-6)
    assert any("in gray" in note for note in prepared.notes)
    for method in ("gradcam", "saliency", "occlusion", "scorecam"):
        explained = ex.explain(wide_photo, "0", 1, method)
        assert explained.heatmap.shape == (300, 451) and np.isfinite(explained.heatmap).all()
    panel = CAMWidget(model, wide_photo)
    assert panel.heatmap.shape == (300, 451)
    panel.close()


@pytest.mark.parametrize("size", [(28, 28), (32, 32)])
def test_a_model_made_for_a_small_dataset_is_given_its_size(wide_photo, size):
    """MNIST's 28×28 (one channel) and CIFAR's 32×32: a network ending in a flatten
    takes one size only, found by trying the sizes models are commonly made for."""
    channels = 1 if size == (28, 28) else 3
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * size[0] * size[1], 10),
    ).eval()  # fmt: skip
    ex = Explainer(model)
    explained = ex.explain(wide_photo, "0")
    assert ex.model_input.size == size and ex.model_input.channels == channels
    assert explained.heatmap.shape == (300, 451)
    assert f"works at {size[1]}×{size[0]}" in ex.model_input.source
    panel = CAMWidget(model)  # no image yet: the layer list is made at the size found
    assert panel.explainer.model_input.size == size
    assert "0" in [layer.name for layer in panel.explainer.layers]
    panel.set_image(wide_photo)
    assert panel.heatmap.shape == (300, 451)
    panel.close()


def test_a_model_that_takes_no_size_says_what_failed(wide_photo):
    """Every size tried fails (the model wants 5 channels): the first failure is told."""
    model = nn.Sequential(nn.Conv2d(5, 4, 3), nn.Flatten(), nn.Linear(4, 3)).eval()
    with pytest.raises(CamwidgetError, match=r"failed on this input of shape \(1, 3, 300, 451\)"):
        Explainer(model).explain(wide_photo)
