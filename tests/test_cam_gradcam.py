"""CAM and Grad-CAM: exact identities, a hand-computed case, and the maths in isolation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from camwidget import Explainer
from camwidget.cams import cam, gradcam
from camwidget.methods import MethodContext


def test_cam_mean_plus_bias_is_the_logit(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    logits = resnet18(photo_tensor[None])[0].detach()
    for target in (0, 281, int(logits.argmax()), 999):
        e = ex.explain(photo_tensor, layer="layer4", target=target, method="cam")
        bias = float(resnet18.fc.bias[target].detach())
        assert e.raw.mean() + bias == pytest.approx(float(logits[target]), rel=1e-4, abs=1e-5)
        assert e.score == pytest.approx(float(logits[target]), rel=1e-5, abs=1e-6)


def test_gradcam_is_relu_cam_over_area_at_the_last_layer(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    for target in (3, 281, 500):
        cam_raw = ex.explain(photo_tensor, "layer4", target, "cam").raw
        grad_raw = ex.explain(photo_tensor, "layer4", target, "gradcam").raw
        h, w = cam_raw.shape
        np.testing.assert_allclose(grad_raw, np.maximum(cam_raw, 0) / (h * w), rtol=1e-4, atol=1e-7)
        assert (cam_raw < 0).any(), "the test needs a map with negative parts to mean something"


class TinyNet(nn.Module):
    """conv 1×1 (picks input channels 0 and 1) -> ReLU -> GAP -> FC, all weights by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_gradcam_by_hand_before_a_relu():
    # A0 = [[1, -2], [3, 4]], A1 = [[-1, 2], [0.5, -3]] (the conv copies channels 0, 1).
    # For class 0: dy/dA^k = W[0, k] / 4 where A^k > 0, else 0 (the ReLU blocks it):
    #   g0 = 0.25 * [[1, 0], [1, 1]] -> w0 = mean = 0.1875
    #   g1 = 0.50 * [[0, 1], [1, 0]] -> w1 = mean = 0.25
    # map = ReLU(0.1875 A0 + 0.25 A1) = ReLU([[-0.0625, 0.125], [0.6875, 0]])
    x = torch.tensor(
        [[[1.0, -2.0], [3.0, 4.0]], [[-1.0, 2.0], [0.5, -3.0]], [[7.0, 7.0], [7.0, 7.0]]]
    )
    ex = Explainer(TinyNet())
    e = ex.explain(x, layer="conv", target=0, method="gradcam")
    np.testing.assert_allclose(e.raw, [[0.0, 0.125], [0.6875, 0.0]], atol=1e-7)
    np.testing.assert_allclose(e.heatmap, [[0.0, 0.125 / 0.6875], [1.0, 0.0]], atol=1e-6)
    # After the ReLU the gradients are W[0, k] / 4 everywhere: w = (0.25, 0.5), and
    # map = ReLU(0.25 * [[1, 0], [3, 4]] + 0.5 * [[0, 2], [0.5, 0]]) = [[0.25, 1], [1, 1]].
    e = ex.explain(x, layer="relu", target=0, method="gradcam")
    np.testing.assert_allclose(e.raw, [[0.25, 1.0], [1.0, 1.0]], atol=1e-7)


def test_cam_by_hand_on_the_tiny_net():
    x = torch.tensor(
        [[[1.0, -2.0], [3.0, 4.0]], [[-1.0, 2.0], [0.5, -3.0]], [[0.0, 0.0], [0.0, 0.0]]]
    )
    ex = Explainer(TinyNet())
    assert [layer.name for layer in ex.layers if layer.cam] == ["relu"]
    # class 1: W = (-1, 1): -[[1, 0], [3, 4]] + [[0, 2], [0.5, 0]]
    e = ex.explain(x, layer="relu", target=1, method="cam")
    np.testing.assert_allclose(e.raw, [[-1.0, 2.0], [-2.5, -4.0]], atol=1e-7)
    np.testing.assert_allclose(e.heatmap, [[0.5, 1.0], [0.25, 0.0]], atol=1e-6)


def test_methods_are_pure_functions():
    activations = torch.arange(8.0).view(2, 2, 2)
    gradients = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), -3.0)])
    before = (activations.clone(), gradients.clone())
    out = gradcam(activations, gradients, MethodContext())
    np.testing.assert_allclose(out, torch.relu(activations[0] - 3 * activations[1]))
    assert torch.equal(activations, before[0]) and torch.equal(gradients, before[1])
    weights = torch.tensor([2.0, -1.0])
    np.testing.assert_allclose(
        cam(activations, gradients, MethodContext(class_weights=weights)),
        2 * activations[0] - activations[1],
    )


def test_no_positive_evidence_gives_zeros_and_a_message():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    ex = Explainer(TinyNet())
    # class 1 weighs channel 0 by -1: every Grad-CAM weight is negative, the map is 0.
    e = ex.explain(x, layer="relu", target=1, method="gradcam")
    assert not e.heatmap.any() and np.isfinite(e.heatmap).all()
    assert "no positive evidence" in e.message and "HiResCAM keeps each cell's" in e.message
    assert e.same_scores == 0


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "saliency"])
def test_a_head_at_zero_is_named_as_why_every_map_is_empty(method):
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.zero_()  # as torchvision starts a ViT's head
    before = copy.deepcopy(model.state_dict())
    e = Explainer(model).explain(torch.rand(3, 4, 4), layer="relu", target=1, method=method)
    assert not e.raw.any() and e.same_scores == 2
    assert e.message.startswith("all 2 classes score the same (0)")
    assert "is the classifier trained?" in e.message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
