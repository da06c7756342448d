"""The panel beyond one class: segmentation regions, detection boxes, similarity to a
reference, multi-label probabilities; bad targets reported in the panel."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_page_shows, on_page
from test_targets import detector, segmenter
from torch import nn

from camwidget import CAMWidget, Explainer, render, targets


def shown_frame_is_the_overlay_with(panel, decorate):
    panel.wait()  # a change from the page runs beside the kernel
    view = panel.main_view
    frame = render.blend(view.rgb, view.heat, panel.colormap, panel.alpha, panel.threshold)
    assert_page_shows(view, decorate(frame))


def test_a_segmentation_panel(photo):
    model = segmenter("fcn_resnet50")
    labels = ["background", "cat", "dog", "car", "tree"]
    panel = CAMWidget(model, photo, labels=labels)
    ex = Explainer(model, labels=labels)
    top = ex.predict(photo, k=5)
    options = panel.controls["classes"].quick.options
    assert [value for _, value in options] == [index for index, _, _ in top]
    assert options[0][0].endswith(" of pixels")
    assert "classes present" in panel.controls["heading"].value
    assert panel.controls["region"].layout.display is None  # shown for a segmentation
    assert panel.target == top[0][0] and panel.layer == "backbone.layer4"
    expected = ex.explain(photo, "backbone.layer4", targets.Region(top[0][0]))
    np.testing.assert_array_equal(panel.heatmap, expected.heatmap)
    region = panel.main_view.region
    assert region.any() and region.shape == panel.main_view.rgb.shape[:2]
    shown_frame_is_the_overlay_with(panel, lambda frame: render.outline(frame, region))
    panel.region = "image"  # the class over the whole image
    assert panel.explanation.region.all()
    whole = ex.explain(photo, "backbone.layer4", targets.Region(top[0][0], np.ones((600, 512))))
    np.testing.assert_array_equal(panel.heatmap, whole.heatmap)
    panel.controls["classes"].quick.set_state({"index": 1})
    assert panel.target == top[1][0] and "over the given region" in panel.explanation.label
    panel.close()


def test_a_detection_panel():
    model = detector()
    x = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(0))
    panel = CAMWidget(model, x)
    found = Explainer(model).detections(x)
    options = panel.controls["classes"].quick.options
    assert [value for _, value in options] == [d.target for d in found[:5]]
    x1, y1, x2, y2 = (round(v) for v in found[0].box)
    assert options[0][0] == f"class {found[0].label} box ({x1}, {y1})–({x2}, {y2}) · " + (
        f"{found[0].score:.2f}"
    )
    assert len({caption for caption, _ in options}) == len(options)  # told apart
    assert "<b>detections</b>" in panel.controls["heading"].value
    assert panel.target == found[0].target and panel.layer == "backbone.body.16"
    assert panel.explanation.box == pytest.approx(found[0].box)
    assert "box" in panel.explanation.label and panel.explanation.probability is None
    panel.controls["classes"].quick.set_state({"index": 2})
    assert panel.target == found[2].target
    view = panel.main_view
    scale = view.rgb.shape[1] / 320
    box = tuple(v * scale for v in found[2].box)
    shown_frame_is_the_overlay_with(panel, lambda frame: render.draw_box(frame, box))
    panel.close()


def test_a_similarity_panel(resnet18, photo):
    model = copy.deepcopy(resnet18)
    model.fc = nn.Identity()
    reference = photo.rotate(20)
    panel = CAMWidget(model, photo, reference=reference, layer="layer3")
    assert panel.controls["classes"].layout.display == "none"
    assert "reference image" in panel.controls["heading"].value
    assert panel.controls["reference_image"].value  # the thumbnail
    ex = Explainer(model)
    expected = ex.explain(photo, "layer3", targets.Similarity(ex.embedding(reference)))
    np.testing.assert_array_equal(panel.heatmap, expected.heatmap)
    assert panel.explanation.label == "similarity to the reference"
    panel.close()


def test_multi_label_probabilities_in_the_panel():
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    multi = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        multi[0].bias.copy_(torch.tensor([4.0, -4.0, 3.0, -3.0, 5.0, -5.0]))
    panel = CAMWidget(multi.eval(), x, activation="sigmoid", top_k=1)
    options = panel.controls["classes"].quick.options
    assert sorted(value for _, value in options) == [0, 2, 4]  # every class above 0.5
    assert "top predictions" in panel.controls["heading"].value
    assert panel.target == 4 and panel.explanation.probability > 0.99
    panel.close()


def test_bad_targets_are_reported_in_the_panel(photo):
    model = segmenter("fcn_resnet50")
    panel = CAMWidget(model, photo)
    before = on_page(panel.main_view)
    panel.target = targets.Region(1, np.ones((10, 40), bool))
    assert "does not match the output's" in panel.controls["messages"].value
    assert on_page(panel.main_view) == before  # the previous overlay stays
    panel.target = lambda scores: scores[:, :3]
    assert "a target must return one number" in panel.controls["messages"].value
    panel.target = 1  # and the panel keeps working
    assert isinstance(panel.explanation.target, targets.Region)
    assert panel.explanation.target.index == 1
    assert "#b00020" not in panel.controls["messages"].value  # no error shown
    panel.close()
