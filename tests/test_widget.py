"""The panel, kernel side: traits and controls, counted passes, errors in words, close()."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import ModelState
from PIL import Image
from traitlets import TraitError

import camwidget
from camwidget import CAMWidget, Explainer, render, samples, zoo


@pytest.fixture(scope="module")
def lite0():
    return zoo.load("efficientnet_lite0")


@pytest.fixture
def panel(lite0):
    model, preprocess, labels = lite0
    widget = CAMWidget(model, samples.load("chelsea"), preprocess=preprocess, labels=labels)
    yield widget
    widget.close()


def expected(panel, image=None, **options):
    """What Explainer.explain + camwidget.overlay give for the panel's state."""
    ex = Explainer(panel.explainer.model, panel.explainer.preprocess, panel.explainer.labels)
    for name, value in options.items():
        setattr(ex, name, value)
    image = samples.load("chelsea") if image is None else image
    e = ex.explain(image, panel.layer, panel.target, panel.method)
    overlay = camwidget.overlay(image, e.heatmap, panel.colormap, panel.alpha, panel.threshold)
    return e.heatmap, overlay


def shown(panel, view=0):
    """The bytes the view shows must be the blend of the current state at frame size."""
    e = panel._views[view].explanation
    frame = render.blend(
        panel._frame_rgb,
        e.heatmap_at(panel._frame_rgb.shape[:2]),
        panel.colormap,
        panel.alpha,
        panel.threshold,
    )
    assert panel._views[view].image.value == render.encode(frame, "jpeg")
    return panel._views[view].image.value


def upload(panel, name, content):
    """A file chosen in the browser's upload button, as the front end sends it."""
    panel._upload.set_state(
        {
            "value": [
                {
                    "name": name,
                    "type": "",
                    "size": len(content),
                    "content": memoryview(content),
                    "last_modified": 1_700_000_000_000,
                }
            ]
        }
    )


CHANGES = [
    ("colormap", "viridis"),
    ("alpha", 0.8),
    ("layer", "blocks.12"),
    ("method", "cam"),
    ("target", 281),
    ("threshold", 0.0),
]


@pytest.mark.parametrize(("trait", "value"), CHANGES)
def test_setting_a_trait_shows_what_the_engine_gives(panel, trait, value):
    before = shown(panel)
    setattr(panel, trait, value)
    heatmap, overlay = expected(panel)
    np.testing.assert_array_equal(panel.heatmap, heatmap)
    np.testing.assert_array_equal(panel.overlay, overlay)
    after = shown(panel)
    # CAM and Grad-CAM normalise to the same map where CAM >= 0 (true here at head)
    assert (after != before) == (trait in ("colormap", "alpha", "layer", "target"))


def test_threshold_hides_heat_below_it(panel):
    panel.threshold = 0.6
    photo = np.asarray(samples.load("chelsea"))
    below = panel.heatmap < 0.6
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(panel.overlay[below], photo[below])
    assert (panel.overlay[~below] != photo[~below]).any()
    shown(panel)


def test_controls_drive_the_traits(panel):
    """Browser-style changes: set_state as the front end sends it (ipywidgets 8 syncs
    a selection's index, a slider's value)."""
    layers = [name for _, name in panel._layer_control.options]
    panel._layer_control.set_state({"index": layers.index("blocks.9")})
    assert panel.layer == "blocks.9"
    panel._colormap_control.set_state(
        {"index": list(panel._colormap_control.options).index("magma")}
    )
    assert panel.colormap == "magma"
    panel._alpha_control.set_state({"value": 0.25})
    panel._threshold_control.set_state({"value": 0.1})
    assert (panel.alpha, panel.threshold) == (0.25, 0.1)
    panel._picker.quick.set_state({"index": 2})
    assert panel.target == panel._picker.quick.options[2][1]
    panel._picker.search.set_state({"value": "Espresso"})
    assert panel.target == 967
    heatmap, overlay = expected(panel)
    np.testing.assert_array_equal(panel.heatmap, heatmap)
    np.testing.assert_array_equal(panel.overlay, overlay)
    shown(panel)
    assert "espresso (967)" in panel._status.value and "blocks.9" in panel._status.value


def test_traits_drive_the_controls(panel):
    panel.layer = "blocks.14"
    panel.colormap = "twilight"  # any matplotlib name, not only the short list
    panel.target = 0
    assert panel._layer_control.value == "blocks.14"
    assert panel._colormap_control.value == "twilight"
    assert panel._picker.quick.value is None  # 'tench' is not among the top 5


def test_counted_passes(panel):
    ex = panel.explainer
    ex.passes.clear()
    for trait, value in [
        ("colormap", "gray"),
        ("alpha", 0.9),
        ("threshold", 0.3),
        ("layer", "blocks.10"),
        ("method", "gradcam"),
        ("layer", "head"),
        ("method", "cam"),
    ]:
        setattr(panel, trait, value)
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 0
    panel.target = 281  # CAM needs no gradients: no pass at all
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 0
    panel.method = "gradcam"
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 1
    panel.set_image(samples.load("coffee"))
    assert ex.passes["forward"] == 1 and ex.passes["backward"] == 2
    assert panel._picker.quick.options[0][0].startswith("espresso")


def test_class_change_runs_one_backward_and_no_forward_independently(panel, monkeypatch):
    forwards = []
    handle = panel.explainer.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    backwards = []
    grad = torch.autograd.grad
    monkeypatch.setattr(
        torch.autograd, "grad", lambda *a, **k: backwards.append(1) or grad(*a, **k)
    )
    try:
        panel.colormap = "inferno"
        panel.layer = "blocks.13"
        assert (len(forwards), len(backwards)) == (0, 0)
        panel.target = 300
        assert (len(forwards), len(backwards)) == (0, 1)
    finally:
        handle.remove()


def test_cam_offered_only_where_it_applies(panel):
    panel.layer = "head"
    assert ("CAM", "cam") in panel._method_control.options and panel._method_control.tooltip is None
    panel.method = "cam"
    panel.layer = "blocks.12"  # CAM does not apply: the panel switches to Grad-CAM
    assert panel.method == "gradcam"
    assert ("CAM", "cam") not in panel._method_control.options
    assert "global average pooling" in panel._method_control.tooltip
    assert "switched to Grad-CAM" in panel._messages.value
    with pytest.raises(TraitError, match="CAM does not apply at layer 'blocks.12'"):
        panel.method = "cam"


def test_compare_mode_two_classes(lite0):
    model, preprocess, labels = lite0
    image = samples.composite(["chelsea", "coffee"])
    panel = CAMWidget(model, image, preprocess=preprocess, labels=labels)
    panel.compare = True
    panel.target, panel.compare_target = 285, 967
    assert panel._compare_box.layout.display == "flex"
    cat, cup = panel._views[0].explanation, panel._views[1].explanation
    assert (cat.label, cup.label) == ("Egyptian cat", "espresso")
    assert shown(panel, 0) != shown(panel, 1)
    panel.compare_layer = "blocks.12"
    assert panel._views[1].explanation.layer == "blocks.12" and panel.layer == "head"
    panel.colormap = "viridis"  # shared look: both views repaint
    shown(panel, 0), shown(panel, 1)
    panel.close()


def test_rapid_changes_end_on_the_final_state(panel):
    for alpha in np.linspace(0.0, 1.0, 21):
        panel.alpha = float(alpha)
    for name in ("blocks.8", "blocks.11", "blocks.15", "head"):
        panel.layer = name
    panel.alpha = 0.35
    assert panel._views[0].explanation.layer == "head"
    shown(panel)


def test_bad_upload_is_reported_and_the_panel_keeps_working(panel):
    before = panel._views[0].image.value
    upload(panel, "notes.txt", b"hello")
    assert "notes.txt" in panel._messages.value and "could not read" in panel._messages.value
    assert panel._views[0].image.value == before
    panel.colormap = "magma"
    shown(panel)


def test_good_upload(panel, tmp_path):
    path = tmp_path / "cup.png"
    samples.load("coffee").save(path)
    upload(panel, "cup.png", path.read_bytes())
    assert panel.explanation.label == "espresso" and panel.heatmap.shape == (400, 600)
    assert "600×400" in panel._status.value


def test_unknown_class_in_the_search_box(panel):
    target = panel.target
    panel._picker.search.set_state({"value": "unicornfish"})
    assert "unknown class 'unicornfish'" in panel._messages.value
    assert panel.target == target


def test_invalid_values_are_refused_in_words(panel):
    with pytest.raises(TraitError, match="unknown layer 'layer4'"):
        panel.layer = "layer4"
    with pytest.raises(TraitError, match="out of range"):
        panel.target = 1000
    with pytest.raises(TraitError, match="unknown colormap"):
        panel.colormap = "nope"
    with pytest.raises(TraitError, match=r"alpha must lie in \[0, 1\]"):
        panel.alpha = 2.0
    with pytest.raises(camwidget.CamwidgetError, match="could not read"):
        panel.set_image(b"junk")
    assert "could not read" in panel._messages.value
    shown(panel)


class Fragile(torch.nn.Module):
    """Fails on inputs wider than 300 pixels."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[-1] > 300:
            raise RuntimeError("input too wide for this model")
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_a_model_that_fails_on_an_image(tmp_path):
    panel = CAMWidget(Fragile(), np.full((64, 64, 3), 90, np.uint8))
    wide = Image.new("RGB", (400, 64), "white")
    path = tmp_path / "wide.png"
    wide.save(path)
    upload(panel, "wide.png", path.read_bytes())
    assert "input too wide for this model" in panel._messages.value
    assert panel.heatmap.shape == (64, 64)  # the previous image is still explained
    panel.alpha = 0.7
    shown(panel)
    panel.close()


def test_no_image_yet(lite0):
    model, preprocess, labels = lite0
    panel = CAMWidget(model, preprocess=preprocess, labels=labels)
    assert "No image yet" in panel._status.value
    with pytest.raises(camwidget.CamwidgetError, match="no image yet"):
        panel.heatmap  # noqa: B018
    panel.colormap = "gray"  # no image: nothing to render, no error
    panel._save_button.click()
    assert "nothing to save" in panel._messages.value
    panel.set_image(samples.load("grace_hopper"))
    assert panel.explanation.label == "military uniform"
    panel.close()


def test_save(panel, tmp_path):
    path = panel.save(tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), panel.overlay)


def test_inspector_follows_the_panel(panel):
    panel._inspect_control.value = True
    inspector = panel._inspector
    assert panel._inspect_box.children == (inspector.canvas,)
    panel.layer = "blocks.12"
    np.testing.assert_array_equal(inspector.heat.get_array(), panel._views[0].frame_heat)
    y, x = np.unravel_index(panel._views[0].frame_heat.argmax(), panel._views[0].frame_heat.shape)
    assert inspector._readout(x, y).endswith("heat=1.000")
    panel.set_image(samples.load("coffee"))  # another shape: the figure follows it
    assert inspector.photo.get_array().shape == panel._frame_rgb.shape == (299, 448, 3)
    assert tuple(inspector.figure.get_size_inches() * inspector.figure.dpi) == (448, 299)
    panel._inspect_control.value = False
    assert panel._inspector is None and panel._inspect_box.children == ()


def test_close_leaves_the_model_as_it_was(resnet18, photo):
    model = copy.deepcopy(resnet18).train()
    before = ModelState.of(model)
    panel = CAMWidget(model, photo)
    panel.target, panel.layer, panel.compare = 3, "layer2", True
    panel._inspect_control.value = True
    children = panel._all_controls()
    panel.close()
    before.assert_same(model)
    assert all(child.comm is None for child in children)
    assert panel.comm is None


def test_method_switches_run_no_pass_except_the_first_scorecam(panel):
    ex = panel.explainer
    ex.scorecam_channels = 8  # keep the test quick: Score-CAM on 8 channels
    panel.layer = "blocks.15"
    ex.passes.clear()
    for method in ("gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "gradcam"):
        panel.method = method
        shown(panel)
    assert sum(ex.passes.values()) == 0
    panel.method = "eigencam"
    assert "class-agnostic" in panel._messages.value
    panel.method = "scorecam"
    scored = ex.passes["scored"]
    assert 0 < scored <= 8 and ex.passes["forward"] == ex.passes["backward"] == 0
    assert panel._progress.value == panel._progress.max == scored
    assert panel._progress.layout.display == "none"  # hidden again when done
    panel.method = "gradcam"
    panel.method = "scorecam"
    assert ex.passes["scored"] == scored  # cached
    heatmap, overlay = expected(panel, scorecam_channels=8)
    np.testing.assert_array_equal(panel.heatmap, heatmap)
    np.testing.assert_array_equal(panel.overlay, overlay)
