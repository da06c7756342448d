"""Targets beyond one class: regions of a segmentation, detection boxes, similarity to a
reference embedding, any callable; probabilities for one-output and multi-label models."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import ModelState
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import (
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
)
from torch import nn

from camwidget import CamwidgetError, Explainer, targets


def close_to_the_peer(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    diff = float(np.abs(ours - theirs).max())
    assert diff <= 1e-3, f"max diff {diff}"


class Dense(nn.Module):
    """torchvision's segmentation models return {"out": ...}; the peer needs the tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def segmenter(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        builder = getattr(torchvision.models.segmentation, name)
        return builder(weights=None, weights_backbone=None, num_classes=5).eval()


@pytest.mark.parametrize(
    ("name", "layer"),
    [("fcn_resnet50", "backbone.layer4"), ("deeplabv3_mobilenet_v3_large", "backbone.16")],
)
def test_region_equals_pytorch_grad_cam(photo_tensor, name, layer):
    model = segmenter(name)
    ex = Explainer(model)
    assert ex.explain(photo_tensor).layer == layer  # the last backbone map by default
    dense = model(photo_tensor[None])["out"][0].detach()
    predicted = dense.argmax(0).numpy()
    classes = np.bincount(predicted.ravel(), minlength=5).argsort()[::-1][:2]
    box = np.zeros(predicted.shape, bool)
    box[40:150, 60:200] = True
    with GradCAM(model=Dense(model), target_layers=[model.get_submodule(layer)]) as peer:
        for index in classes:
            for mask in (predicted == index, box):
                theirs = peer(
                    photo_tensor[None],
                    targets=[SemanticSegmentationTarget(int(index), mask.astype(np.float32))],
                )[0]
                ours = ex.explain(photo_tensor, layer, targets.Region(int(index), mask))
                close_to_the_peer(ours.heatmap, theirs)
    predicted_region = ex.explain(photo_tensor, layer, targets.Region(int(classes[0])))
    np.testing.assert_array_equal(
        predicted_region.raw,
        ex.explain(
            photo_tensor, layer, targets.Region(int(classes[0]), predicted == classes[0])
        ).raw,
    )


def test_a_segmentation_model_reads_without_user_code(photo):
    model = segmenter("fcn_resnet50")
    before = ModelState.of(model)
    ex = Explainer(model, labels=["background", "cat", "dog", "car", "tree"])
    top = ex.predict(photo, k=5)
    assert sum(share for _, _, share in top) == pytest.approx(1.0, abs=1e-6)
    e = ex.explain(photo)  # the class with the most pixels, over its predicted pixels
    assert isinstance(e.target, targets.Region) and e.target.index == top[0][0]
    assert e.label == f"{top[0][1]} over its predicted pixels" and e.probability is None
    assert ex.explain(photo, target=top[0][0]).raw.tobytes() == e.raw.tobytes()
    before.assert_same(model)


def test_region_masks_at_the_image_size_and_wrong_ones(photo_tensor):
    model = segmenter("fcn_resnet50")
    ex = Explainer(model)
    half = np.zeros((224, 224), bool)
    half[:, :112] = True
    small = np.zeros((28, 28), bool)
    small[:, :14] = True  # the same region on the output's 28×28 grid (stride 8)
    a = ex.explain(photo_tensor, "backbone.layer3", targets.Region(1, half))
    b = ex.explain(
        photo_tensor, "backbone.layer3", targets.Region(1, np.kron(small, np.ones((8, 8))))
    )
    np.testing.assert_array_equal(a.raw, b.raw)
    with pytest.raises(CamwidgetError, match="does not match the output's"):
        ex.explain(photo_tensor, target=targets.Region(1, np.ones((10, 40), bool)))
    with pytest.raises(CamwidgetError, match="must be 2-D"):
        targets.Region(1, np.ones((2, 3, 4), bool))


def detector() -> nn.Module:
    """Random weights, every box kept (score threshold 0); the box head's weights are
    drawn wider than torchvision's near-zero init, so that gradients are well above
    float32 noise."""
    torch.manual_seed(0)
    builder = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn
    model = builder(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.roi_heads.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.1, generator=generator)
    return model


def test_box_equals_pytorch_grad_cam():
    model = detector()
    x = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(0))
    ex = Explainer(model)
    found = ex.detections(x)
    assert found and ex.default_layer == "backbone.body.16"
    for layer in ("backbone.body.13", "backbone.body.16"):
        with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as peer:
            for detection in found[:2]:
                box = torch.tensor([detection.box])
                target = FasterRCNNBoxScoreTarget([detection.label], box, iou_threshold=0.5)
                theirs = peer(x[None], targets=[target])[0]
                ours = ex.explain(x, layer, targets.Box(detection.label, detection.box))
                assert ours.score == pytest.approx(detection.score + 1.0, rel=1e-5)  # IoU 1
                close_to_the_peer(ours.heatmap, theirs)


def test_a_box_with_no_matching_detection_gives_a_zero_map_and_says_so():
    ex = Explainer(detector())
    x = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(0))
    e = ex.explain(x, target=targets.Box(3, (0, 0, 2, 2)))
    assert e.score == 0 and not e.raw.any() and "no positive evidence" in e.message


def test_similarity_equals_a_hand_written_reference(resnet18, photo_tensor):
    model = copy.deepcopy(resnet18)
    model.fc = nn.Identity()
    ex = Explainer(model)
    other = photo_tensor.flip(-1)
    reference = model(other[None])[0].detach()
    e = ex.explain(photo_tensor, "layer3", targets.Similarity(reference))
    store = {}
    handle = model.layer3.register_forward_hook(lambda m, i, o: store.update(a=o))
    embedding = model(photo_tensor[None])[0]
    handle.remove()
    similarity = nn.functional.cosine_similarity(embedding, reference, dim=0)
    (g,) = torch.autograd.grad(similarity, store["a"])
    a = store["a"][0].detach()
    expected = torch.relu((g[0].mean(dim=(1, 2))[:, None, None] * a).sum(0)).numpy()
    np.testing.assert_allclose(e.raw, expected, rtol=1e-5, atol=1e-7)
    assert e.score == pytest.approx(float(similarity.detach()), rel=1e-6)
    assert e.label == "similarity to the reference"


def test_targets_are_cached_by_value(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    ex.explain(photo_tensor, "layer4", 3)
    ex.explain(photo_tensor, "layer4", targets.Class(3))  # the same class: no backward
    mask = np.ones((7, 7), bool)
    assert ex.passes["backward"] == 1
    seg = Explainer(segmenter("fcn_resnet50"))
    seg.explain(photo_tensor, "backbone.layer4", targets.Region(1, mask.copy()))
    seg.explain(photo_tensor, "backbone.layer4", targets.Region(1, mask.copy()))
    assert seg.passes["backward"] == 1
    seg.explain(photo_tensor, "backbone.layer4", targets.Region(2, mask))
    assert seg.passes["backward"] == 2


def test_any_callable_target_and_bad_ones(resnet18, photo_tensor):
    ex = Explainer(resnet18)

    def margin(logits):
        return logits[3] - logits[5]

    e = ex.explain(photo_tensor, "layer4", margin)
    assert e.label == "margin" and e.target is margin and e.probability is None
    logits = resnet18(photo_tensor[None])[0]
    assert e.score == pytest.approx(float((logits[3] - logits[5]).detach()), rel=1e-5)
    with pytest.raises(CamwidgetError, match="a target must return one number"):
        ex.explain(photo_tensor, "layer4", lambda logits: logits[:3])
    with pytest.raises(CamwidgetError, match="the target failed: IndexError"):
        ex.explain(photo_tensor, "layer4", lambda logits: logits[5000])
    with pytest.raises(CamwidgetError, match="CAM explains one class of a classifier"):
        ex.explain(photo_tensor, "layer4", margin, method="cam")


class OneOutput(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_one_output_is_a_sigmoid_and_multi_label_lists_every_class_above_half():
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = OneOutput().eval()
    ex = Explainer(model)
    ((index, _, probability),) = ex.predict(x)
    assert index == 0 and probability == pytest.approx(float(torch.sigmoid(model(x[None])[0, 0])))
    assert ex.explain(x).probability == pytest.approx(probability)

    multi = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        multi[0].bias.copy_(torch.tensor([4.0, -4.0, 3.0, -3.0, 5.0, -5.0]))
    ex = Explainer(multi, activation="sigmoid")
    above = ex.predict(x, k=1)
    assert sorted(index for index, _, _ in above) == [0, 2, 4]
    assert all(p > 0.5 for _, _, p in above)
    with pytest.raises(CamwidgetError, match="activation must be"):
        Explainer(multi, activation="relu")


def test_an_output_function_picks_what_to_explain(resnet18, photo_tensor):
    class Odd(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"scores": self.net(x), "extra": 1}

    with pytest.raises(CamwidgetError, match="output=fn"):
        Explainer(Odd(resnet18)).explain(photo_tensor)
    ex = Explainer(Odd(resnet18), output=lambda out: out["scores"])
    reference = Explainer(resnet18).explain(photo_tensor, "layer3", 4)
    np.testing.assert_allclose(ex.explain(photo_tensor, "net.layer3", 4).raw, reference.raw)
