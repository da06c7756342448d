"""Odd models and odd images: a clear message or a correct result, the model untouched."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from conftest import ModelState
from PIL import Image
from torch import nn

from camwidget import CAMWidget, CamwidgetError, Explainer


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_models_in_other_dtypes(resnet18, photo_tensor, dtype):
    model = copy.deepcopy(resnet18).to(dtype)
    before = ModelState.of(model)
    ex = Explainer(model)
    reference = Explainer(resnet18).explain(photo_tensor, layer="layer4", target=3)
    e = ex.explain(photo_tensor, layer="layer4", target=3)
    assert e.raw.dtype == np.float32 and np.isfinite(e.heatmap).all()
    tolerance = 1e-5 if dtype == torch.float64 else 0.1
    np.testing.assert_allclose(e.heatmap, reference.heatmap, atol=tolerance)
    assert {x.name for x in ex.layers if x.cam} == {"layer4", "layer4.1"}
    cam = ex.explain(photo_tensor, layer="layer4", target=3, method="cam")
    assert np.isfinite(cam.raw).all()
    before.assert_same(model)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "1", "LA"])
def test_every_image_mode_is_explained(resnet18, photo, mode):
    if mode == "I;16":
        image = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)
    else:
        image = photo.convert(mode)
    e = Explainer(resnet18).explain(image, layer="layer3")
    assert e.heatmap.shape == (600, 512) and np.isfinite(e.heatmap).all()


def test_an_image_smaller_than_the_network_stride(resnet18):
    ex = Explainer(resnet18)
    e = ex.explain(np.full((8, 8, 3), 120, np.uint8))
    assert e.heatmap.shape == (8, 8) and np.isfinite(e.heatmap).all()
    last = ex.explain(np.full((8, 8, 3), 120, np.uint8), layer="layer4")
    assert last.raw.shape == (1, 1)
    assert "constant" in last.message or "no positive evidence" in last.message


def test_a_huge_image_is_downscaled_for_the_model(resnet18):
    huge = np.zeros((4000, 6000, 3), np.uint8)
    huge[1500:2500, 2500:3500] = 255
    ex = Explainer(resnet18)
    prepared = ex.prepare(huge)
    assert tuple(prepared.inputs.shape) == (1, 3, 683, 1024)
    assert prepared.size == (4000, 6000) and "downscaled to 1024×683" in prepared.notes[0]
    e = ex.explain(prepared, layer="layer2")
    assert e.raw.shape == (86, 128) and e.heatmap.shape == (4000, 6000)
    panel = CAMWidget(resnet18, huge, layer="layer2")
    assert "downscaled" in panel.controls["messages"].value
    assert panel.main_view.rgb.shape == (299, 448, 3)
    panel.close()


def test_a_decompression_bomb_upload_is_refused_in_the_panel(resnet18, photo):
    panel = CAMWidget(resnet18, photo)
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    content = buffer.getvalue()
    panel.controls["upload"].set_state(
        {
            "value": [
                {
                    "name": "bomb.png",
                    "type": "image/png",
                    "size": len(content),
                    "content": memoryview(content),
                    "last_modified": 0,
                }
            ]
        }
    )
    panel.wait()  # an upload from the page is read in the panel's worker
    assert "decompression bomb" in panel.controls["messages"].value
    assert panel.heatmap.shape == (600, 512)  # the photo is still there
    panel.close()


def test_an_unknown_input_type_is_explained(resnet18):
    with pytest.raises(CamwidgetError, match="cannot use a list as an image"):
        Explainer(resnet18).explain([1, 2, 3])


class Cifar(torch.nn.Module):
    """Accepts only 32×32 inputs (a fixed-size flatten), like many small teaching nets."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_a_model_that_accepts_one_input_size_only():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    panel = CAMWidget(Cifar(), image, labels=[f"c{i}" for i in range(10)])
    assert panel.layer == "pool" and panel.heatmap.shape == (32, 32)
    panel.layer = "conv"
    panel.close()
    ex = Explainer(Cifar())  # no image yet: the layer list is made at the size found
    assert "pool" in [layer.name for layer in ex.layers] and ex.model_input.size == (32, 32)
    awkward = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 5 * 7, 2))
    with pytest.raises(CamwidgetError, match="224×224 probe.*explain an image"):
        Explainer(awkward.eval()).layers  # noqa: B018  (7×9 fits no size tried)


def test_a_model_with_lazy_layers_not_yet_made_is_refused_untouched(photo):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    with pytest.raises(CamwidgetError, match="lazy layers"):
        Explainer(model).explain(photo)
    assert isinstance(model[2].weight, nn.parameter.UninitializedParameter)


def test_a_wrapped_model_is_explained_through_the_model_it_wraps(resnet18, photo):
    """``torch.compile(model)``, ``nn.DataParallel(model)``: the layers keep their own
    names and the maps are the model's own; nothing is compiled (the wrapper is never
    called). A TorchScript model, whose layers no hook reaches, is refused in words."""
    compiled = torch.compile(resnet18)
    ex = Explainer(compiled)
    assert ex.model is resnet18 and "layer4" in [layer.name for layer in ex.layers]
    expected = Explainer(resnet18).explain(photo, "layer4", 3).raw
    np.testing.assert_array_equal(ex.explain(photo, "layer4", 3).raw, expected)
    parallel = Explainer(nn.DataParallel(resnet18))  # names without "module."
    assert parallel.model is resnet18
    np.testing.assert_array_equal(parallel.explain(photo, "layer4", 3).raw, expected)
    traced = torch.jit.trace(nn.Sequential(nn.Conv2d(3, 2, 3)).eval(), torch.rand(1, 3, 8, 8))
    with pytest.raises(CamwidgetError, match="TorchScript model .* explain the model it was"):
        Explainer(traced)


def test_feature_maps_made_without_autograd_are_told_apart(photo):
    """A forward that runs its convolutions under ``torch.no_grad()`` (a frozen backbone)
    has feature maps, but none that a gradient reaches: the message says which."""

    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                features = self.backbone(x)
            return self.head(features.mean(dim=(2, 3)))

    with pytest.raises(CamwidgetError, match=r"under torch.no_grad\(\) or detach"):
        Explainer(Frozen().eval()).explain(photo)
