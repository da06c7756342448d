"""The panel, kernel side: traits and controls, counted passes, errors in words, close()."""

from __future__ import annotations

import copy
import io

import ipywidgets as widgets
import numpy as np
import pytest
import torch
from conftest import ModelState, assert_page_shows, on_page, page_legend
from PIL import Image, ImageOps
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
    """The bytes the view shows must be the blend of the current state at frame size
    (once the work started from the page is done)."""
    panel.wait()
    view = panel.views[view]
    e = view.explanation
    frame = render.blend(
        view.rgb, e.heatmap_at(view.rgb.shape[:2]), panel.colormap, panel.alpha, panel.threshold
    )
    assert_page_shows(view, frame)
    return on_page(view)


def descendants(widget):
    """Every widget inside ``widget``."""
    found = []
    for child in getattr(widget, "children", ()):
        found += [child, *descendants(child)]
    return found


def upload(panel, name, content):
    """A file chosen in the browser's upload button, as the front end sends it."""
    panel.controls["upload"].set_state(
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
    panel.wait()  # the upload's work runs beside the kernel


CHANGES = [
    ("colormap", "magma"),
    ("alpha", 0.8),
    ("layer", "blocks.12"),
    ("method", "cam"),
    ("target", 281),
    ("threshold", 0.0),
]


@pytest.mark.parametrize(("trait", "value"), CHANGES)
def test_setting_a_trait_shows_what_the_engine_gives(panel, trait, value):
    before, heat_before = shown(panel), panel.heatmap
    setattr(panel, trait, value)
    heatmap, overlay = expected(panel)
    np.testing.assert_array_equal(panel.heatmap, heatmap)
    np.testing.assert_array_equal(panel.overlay, overlay)
    after = shown(panel)
    if trait in ("method", "threshold"):
        # CAM and Grad-CAM normalise to the same map where CAM >= 0 (true here at head),
        # up to float rounding; a zero threshold is the default
        np.testing.assert_allclose(panel.heatmap, heat_before, atol=1e-5)
    else:
        assert after != before


def test_threshold_hides_heat_below_it(panel):
    panel.threshold = 0.6
    photo = np.asarray(samples.load("chelsea"))
    below = np.rint(panel.heatmap * 255) / 255 < 0.6  # the map's level, of 256
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(panel.overlay[below], photo[below])
    assert (panel.overlay[~below] != photo[~below]).any()
    shown(panel)


def test_controls_drive_the_traits(panel):
    """Browser-style changes: set_state as the front end sends it (ipywidgets 8 syncs
    a selection's index, a slider's value)."""
    layers = [name for _, name in panel.controls["layer"].options]
    panel.controls["layer"].set_state({"index": layers.index("blocks.9")})
    assert panel.layer == "blocks.9"
    panel.controls["colormap"].set_state(
        {"index": list(panel.controls["colormap"].options).index("magma")}
    )
    assert panel.colormap == "magma"
    panel.controls["opacity"].set_state({"value": 0.25})
    panel.controls["threshold"].set_state({"value": 0.1})
    assert (panel.alpha, panel.threshold) == (0.25, 0.1)
    panel.controls["classes"].quick.set_state({"index": 2})
    assert panel.target == panel.controls["classes"].quick.options[2][1]
    panel.controls["classes"].search.set_state({"value": "Espresso"})
    assert panel.target == 967
    heatmap, overlay = expected(panel)
    np.testing.assert_array_equal(panel.heatmap, heatmap)
    np.testing.assert_array_equal(panel.overlay, overlay)
    shown(panel)
    assert (
        "espresso (967)" in panel.controls["status"].value
        and "blocks.9" in panel.controls["status"].value
    )


def test_controls_start_at_the_traits_values(lite0):
    model, preprocess, labels = lite0
    panel = CAMWidget(
        model,
        samples.load("chelsea"),
        preprocess=preprocess,
        labels=labels,
        colormap="magma",
        alpha=0.35,
        threshold=0.2,
        layer="blocks.14",
    )
    c = panel.controls
    assert (c["colormap"].value, c["opacity"].value, c["threshold"].value) == ("magma", 0.35, 0.2)
    assert (c["layer"].value, c["method"].value, c["compare"].value) == (
        "blocks.14",
        "gradcam",
        False,
    )
    assert c["classes"].target == panel.target and c["region"].value == "predicted"
    panel.close()


def test_traits_drive_the_controls(panel):
    panel.layer = "blocks.14"
    panel.colormap = "twilight"  # any matplotlib name, not only the short list
    panel.target = 0
    assert panel.controls["layer"].value == "blocks.14"
    assert panel.controls["colormap"].value == "twilight"
    assert panel.controls["classes"].quick.value is None  # 'tench' is not among the top 5


def test_counted_passes(panel):
    ex = panel.explainer
    ex.passes.clear()
    for trait, value in [("colormap", "gray"), ("alpha", 0.9), ("threshold", 0.3)]:
        setattr(panel, trait, value)
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 0
    panel.layer = "blocks.10"  # earlier than shown so far: one backward completes all
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 1
    for trait, value in [
        ("method", "gradcam++"),
        ("layer", "blocks.3"),
        ("layer", "head"),
        ("method", "cam"),
    ]:
        setattr(panel, trait, value)
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 1
    panel.target = 281  # CAM needs no gradients: no pass at all
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 1
    panel.method = "gradcam"
    assert ex.passes["forward"] == 0 and ex.passes["backward"] == 2
    panel.set_image(samples.load("coffee"))
    assert ex.passes["forward"] == 1 and ex.passes["backward"] == 3
    assert panel.controls["classes"].quick.options[0][0].startswith("espresso")


def test_a_new_image_paints_each_view_once(panel):
    panel.compare = True
    painted = []
    for view in panel.views:
        paint = view.paint
        view.paint = lambda *look, view=view, paint=paint: painted.append(view) or paint(*look)
    panel.set_image(ImageOps.mirror(samples.load("chelsea")))  # the same top classes
    assert painted == [panel.main_view, panel.compare_view]
    assert panel.compare_target == panel.controls["compare_classes"].quick.options[1][1]


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
        assert (len(forwards), len(backwards)) == (0, 0)
        panel.layer = "blocks.13"  # earlier than shown so far: completes the backward
        assert (len(forwards), len(backwards)) == (0, 1)
        panel.target = 300
        panel.layer = "blocks.14"  # after the shown one: on the way
        assert (len(forwards), len(backwards)) == (0, 2)
        panel.layer = "blocks.2"
        panel.layer = "blocks.5"
        assert (len(forwards), len(backwards)) == (0, 3)
    finally:
        handle.remove()


def test_changes_make_no_new_widget(panel):
    from ipywidgets.widgets.widget import _instances

    before = len(_instances)
    for layer, method in (("blocks.12", "gradcam++"), ("blocks.15", "lrp"), ("head", "gradcam")):
        panel.layer, panel.method = layer, method
        panel.target, panel.colormap = panel.target + 1, "viridis" if layer == "head" else "jet"
    assert len(_instances) == before  # every control and view was made once, with the panel


def test_each_change_sends_only_what_it_changes(panel, monkeypatch):
    """The photo travels once per image and the map's levels once per map (a layer,
    class or method change); colormap, threshold and opacity are markup (SVG filters
    and a style rule) and send no image: the legend is a grey ramp the page colours."""
    import ipywidgets

    view, sent = panel.main_view, []
    names = {view.photo: "photo", view.map: "map", view.marks: "marks", view.bar: "legend"}
    real = ipywidgets.Widget._send

    def spy(widget, message, buffers=None):
        if isinstance(widget, ipywidgets.Image):
            sent.append((names.get(widget, "another image"), sum(len(b) for b in buffers or ())))
        return real(widget, message, buffers)

    monkeypatch.setattr(ipywidgets.Widget, "_send", spy)
    for trait, value, images, markup in (
        ("alpha", 0.8, [], "sheet"),
        ("layer", "blocks.12", ["map"], None),
        ("target", 281, ["map"], None),
        ("colormap", "magma", [], "colours"),
        ("threshold", 0.3, [], "colours"),
        ("alpha", 0.35, [], "sheet"),
    ):
        sent.clear()
        before = {"sheet": view.sheet.value, "colours": view.colours.value}
        setattr(panel, trait, value)
        assert [name for name, _ in sent] == images, trait
        assert [k for k in before if getattr(view, k).value != before[k]] == (
            [markup] if markup else []
        )
        assert all(size < 60_000 for _, size in sent)  # the map's levels alone: a grey PNG
    sent.clear()
    panel.set_image(samples.load("coffee"))
    assert sorted(name for name, _ in sent) == ["map", "photo"]


def test_the_page_follows_the_colormap_list_by_itself(panel):
    """The panel's style sheet holds a tint filter for each main colormap and picks it
    by the colormap list's checked option, after the view's own cut (the threshold):
    together they colour the map as the kernel's filters do, so the page shows a
    colormap change before the kernel answers."""
    import re

    from conftest import filter_palette

    listed, follower = panel.controls["colormap"], panel.children[-1].value
    (mark,) = [c for c in listed._dom_classes if re.fullmatch(r"camwidget-panel-\d+-colormap", c)]
    css = mark.removesuffix("-colormap")
    assert css in panel._dom_classes
    panel.threshold = 0.4
    for name in render.COLORMAPS:
        chosen = f'.{css}:has(.{mark} option:checked[data-value="{name}"])'
        for view in (panel.main_view, panel.compare_view):
            tinted = f"url(#{view.name}-cut) url(#{css}-{name})"
            assert f"{chosen} .{view.name} .camwidget-map {{filter: {tinted}}}" in follower
        assert f"{chosen} :is(.{panel.main_view.name} .camwidget-bar" in follower
        tint = re.search(rf'<filter id="{css}-{name}".*?</filter>', follower).group(0)
        cut = re.search(
            rf'<filter id="{panel.main_view.name}-cut".*?</filter>', panel.main_view.colours.value
        )
        np.testing.assert_array_equal(
            filter_palette(tint + cut.group(0)), render.palette(name, 0.4)
        )
    assert "plasma" in listed.options and "-plasma)" not in follower  # the kernel's filter


def test_the_page_follows_the_opacity_slider_by_itself(panel):
    """The panel's style sheet gives its maps every opacity on the slider's steps, keyed
    by the value the slider's handle announces, so the page shows an opacity change
    before the kernel answers (the browser tests show it); an opacity set from code off
    those steps is the kernel's rule alone, marked important."""
    import re

    slider, sheet = panel.controls["opacity"], panel.children[-1].value
    (mark,) = [c for c in slider._dom_classes if re.fullmatch(r"camwidget-panel-\d+-opacity", c)]
    rules = re.findall(
        rf'\.(\S+):has\(\.{mark} \[role="slider"\]:is\(\[aria-valuetext="([0-9.]+)"\], '
        r'\[aria-valuetext="([0-9.]+)"\]\)\) :is\(([^)]*)\) \{opacity: ([0-9.]+)\}',
        sheet,
    )
    steps = [round(k * slider.step, 2) for k in range(round(1 / slider.step) + 1)]
    assert [float(rule[-1]) for rule in rules] == steps
    assert all(float(short) == float(fixed) == float(o) for _, short, fixed, _, o in rules)
    assert {rule[0] for rule in rules} <= set(panel._dom_classes)
    views = {f".{v.name} .camwidget-map" for v in (panel.main_view, panel.compare_view)}
    assert all(set(rule[3].split(", ")) == views for rule in rules)
    panel.alpha = 0.35
    assert "opacity: 0.350}" in panel.main_view.sheet.value
    panel.alpha = 0.33  # between the steps
    assert "opacity: 0.330 !important}" in panel.main_view.sheet.value
    assert_page_shows(panel.main_view, panel.main_view.frame)


def test_a_panel_composed_in_the_kernel_sends_whole_frames(lite0):
    model, preprocess, labels = lite0
    panel = CAMWidget(
        model, samples.load("chelsea"), preprocess=preprocess, labels=labels, compose="kernel"
    )
    view = panel.main_view
    for trait, value in (("colormap", "magma"), ("alpha", 0.8), ("layer", "blocks.12")):
        setattr(panel, trait, value)
        assert bytes(view.photo.value) == render.encode(view.frame, "jpeg")
        assert view.map.layout.display == "none" and view.marks.layout.display == "none"
    expected = render.blend(view.rgb, view.heat, "magma", 0.8)
    np.testing.assert_array_equal(view.frame, expected)
    with pytest.raises(camwidget.CamwidgetError, match="compose must be 'page' or 'kernel'"):
        CAMWidget(model, samples.load("chelsea"), compose="server")
    panel.close()


def test_cam_offered_only_where_it_applies(panel):
    panel.layer = "head"
    tooltip = panel.controls["method"].tooltip
    assert ("CAM", "cam") in panel.controls["method"].options and "Not offered" not in tooltip
    assert tooltip.startswith("class activation maps: Grad-CAM (Selvaraju et al., ICCV 2017)")
    panel.method = "cam"
    panel.layer = "blocks.12"  # CAM does not apply: the panel switches to Grad-CAM
    assert panel.method == "gradcam"
    assert ("CAM", "cam") not in panel.controls["method"].options
    assert "global average pooling" in panel.controls["method"].tooltip
    assert "switched to Grad-CAM" in panel.controls["messages"].value
    with pytest.raises(TraitError, match="CAM does not apply at layer 'blocks.12'"):
        panel.method = "cam"


def test_compare_mode_two_classes(lite0):
    model, preprocess, labels = lite0
    image = samples.composite(["chelsea", "coffee"])
    panel = CAMWidget(model, image, preprocess=preprocess, labels=labels)
    panel.compare = True
    panel.target, panel.compare_target = 285, 967
    assert panel.controls["compare_panel"].layout.display == "flex"
    cat, cup = panel.main_view.explanation, panel.compare_view.explanation
    assert (cat.label, cup.label) == ("Egyptian cat", "espresso")
    assert shown(panel, 0) != shown(panel, 1)
    panel.compare_layer = "blocks.12"
    assert panel.compare_view.explanation.layer == "blocks.12" and panel.layer == "head"
    panel.colormap = "viridis"  # shared look: both views repaint
    shown(panel, 0), shown(panel, 1)
    panel.close()


def test_rapid_changes_end_on_the_final_state(panel):
    for alpha in np.linspace(0.0, 1.0, 21):
        panel.alpha = float(alpha)
    for name in ("blocks.8", "blocks.11", "blocks.15", "head"):
        panel.layer = name
    panel.alpha = 0.35
    assert panel.explanation.layer == "head"
    shown(panel)


def test_bad_upload_is_reported_and_the_panel_keeps_working(panel):
    before = on_page(panel.main_view)
    upload(panel, "notes.txt", b"hello")
    assert (
        "notes.txt" in panel.controls["messages"].value
        and "could not read" in panel.controls["messages"].value
    )
    assert on_page(panel.main_view) == before
    panel.colormap = "magma"
    shown(panel)


def test_good_upload(panel, tmp_path):
    path = tmp_path / "cup.png"
    samples.load("coffee").save(path)
    upload(panel, "cup.png", path.read_bytes())
    assert panel.explanation.label == "espresso" and panel.heatmap.shape == (400, 600)
    assert "600×400" in panel.controls["status"].value


def test_unknown_class_in_the_search_box(panel):
    target = panel.target
    panel.controls["classes"].search.set_state({"value": "unicornfish"})
    assert "unknown class 'unicornfish'" in panel.controls["messages"].value
    assert panel.target == target


def test_a_class_searched_again_after_another_pick_is_shown_again(panel):
    """The box empties when another class is picked, so typing the same name again
    is a change the panel sees."""
    picker = panel.controls["classes"]
    picker.search.set_state({"value": "Espresso"})
    assert (panel.target, picker.search.value) == (967, "Espresso")
    picker.quick.set_state({"index": 1})
    assert panel.target == picker.quick.options[1][1] != 967
    assert picker.search.value == ""
    picker.search.set_state({"value": "Espresso"})
    assert panel.target == 967
    panel.target = 1
    assert picker.search.value == ""


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
    assert "could not read" in panel.controls["messages"].value
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
    assert "input too wide for this model" in panel.controls["messages"].value
    assert panel.heatmap.shape == (64, 64)  # the previous image is still explained
    panel.alpha = 0.7
    shown(panel)
    panel.close()


def test_no_image_yet(lite0):
    model, preprocess, labels = lite0
    panel = CAMWidget(model, preprocess=preprocess, labels=labels)
    assert "No image yet" in panel.controls["status"].value
    with pytest.raises(camwidget.CamwidgetError, match="no image yet"):
        panel.heatmap  # noqa: B018
    panel.colormap = "gray"  # no image: nothing to render, no error
    panel.controls["save"].click()
    assert "nothing to save" in panel.controls["messages"].value
    panel.set_image(samples.load("grace_hopper"))
    assert panel.explanation.label == "military uniform"
    panel.close()


def test_save(panel, tmp_path):
    path = panel.save(tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), panel.overlay)


def test_inspector_follows_the_panel(panel):
    panel.controls["inspect"].value = True
    inspector = panel.inspector
    assert panel.controls["inspector"].children == (inspector.canvas,)
    panel.layer = "blocks.12"
    heat = panel.main_view.heat
    np.testing.assert_array_equal(inspector.heat.get_array(), heat)
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert inspector.readout(x, y).endswith("heat=1.000")
    panel.set_image(samples.load("coffee"))  # another shape: the figure follows it
    assert inspector.photo.get_array().shape == panel.main_view.rgb.shape == (299, 448, 3)
    assert tuple(inspector.figure.get_size_inches() * inspector.figure.dpi) == (448, 299)
    panel.controls["inspect"].value = False
    assert panel.inspector is None and panel.controls["inspector"].children == ()


def test_close_leaves_the_model_as_it_was(resnet18, photo):
    model = copy.deepcopy(resnet18).train()
    before = ModelState.of(model)
    panel = CAMWidget(model, photo)
    panel.target, panel.layer, panel.compare = 3, "layer2", True
    panel.controls["inspect"].value = True
    children = descendants(panel)
    panel.close()
    before.assert_same(model)
    assert all(child.comm is None for child in children)
    assert panel.comm is None


def test_close_twice_is_harmless(resnet18, photo):
    panel = CAMWidget(resnet18, photo)
    panel.controls["inspect"].value = True
    panel.close()
    panel.close()
    assert panel.comm is None and panel.inspector is None


class Broken(torch.nn.Module):
    """A model whose forward raises, as a user's model with a bug does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a bug in the user's model")


@pytest.mark.parametrize("model", [Broken(), "no model"], ids=["forward raises", "not a model"])
def test_a_panel_whose_constructor_raised_closes_quietly(model, photo, monkeypatch):
    import gc
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(Exception) as raised:
        CAMWidget(model, photo)
    raised.value.__traceback__ = None  # the traceback's frames hold the half-built panel
    del raised
    gc.collect()
    assert not unraisable, [str(u.exc_value) for u in unraisable]


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
    assert "class-agnostic" in panel.controls["messages"].value
    panel.method = "scorecam"
    scored = ex.passes["scored"]
    assert 0 < scored <= 8 and ex.passes["forward"] == ex.passes["backward"] == 0
    assert panel.controls["progress"].value == panel.controls["progress"].max == scored
    assert panel.controls["work"].layout.display == "none"  # hidden again when done
    panel.method = "gradcam"
    panel.method = "scorecam"
    assert ex.passes["scored"] == scored  # cached
    heatmap, overlay = expected(panel, scorecam_channels=8)
    np.testing.assert_array_equal(panel.heatmap, heatmap)
    np.testing.assert_array_equal(panel.overlay, overlay)


def test_the_faithfulness_view(panel, monkeypatch):
    ex = panel.explainer
    ex.scorecam_channels = ex.sscam_channels = ex.iscam_channels = 8  # a quick ranking
    ex.sscam_samples = ex.iscam_samples = 2
    panel.controls["faithfulness"].value = True
    panel.wait()  # the numbers are computed beside the kernel
    view = panel.faithfulness
    assert view.box.layout.display == "flex" and bytes(view.plot.value[:4]) == b"\x89PNG"
    e = panel.explanation
    deleted, inserted = camwidget.metrics.deletion_insertion(
        ex, samples.load("chelsea"), e.heatmap, e.target
    )
    assert f"insertion AUC {inserted.auc:.3f}" in view.summary.value
    assert f"deletion AUC {deleted.auc:.3f}" in view.summary.value
    forwards = []
    handle = ex.model.register_forward_pre_hook(lambda m, a: forwards.append(len(a[0])))
    try:
        panel.colormap = "viridis"  # a look change: no model pass, the numbers stay
        assert forwards == []
        panel.layer = "blocks.15"  # a new map: 39 perturbed inputs, 1 for Average Drop
        assert forwards == [8] * 4 + [7, 1]  # batched (8 on CPU); the original from the cache
        forwards.clear()
        panel.layer = "head"  # back: cached
        assert forwards == []
    finally:
        handle.remove()
    shown = []  # the table as it fills: one method more each time
    view.table.observe(lambda change: shown.append(change["new"]), "value")
    view.rank_button.click()
    panel.wait()
    rows = view.table.value.count("<tr>") - 1
    applicable = [m for m in camwidget.methods.REGISTRY if ex.why_not(m, "head") is None]
    assert rows == len(applicable) + 1 and "random maps" in view.table.value
    assert "being scored" not in view.table.value
    assert view.progress.layout.display == "none"
    assert [table.count("<tr>") - 1 for table in shown] == list(range(2, len(applicable) + 2))
    assert f"{len(applicable) - 1} more being scored" in shown[0]
    slow = {camwidget.methods.get(m).title: camwidget.methods.get(m).perturbing for m in applicable}
    order = [  # whether each method scored, in turn, runs many passes
        next(slow[t] for t in slow if f"<td>{t}</td>" in now and f"<td>{t}</td>" not in before)
        for before, now in zip(["", *shown[:-1]], shown, strict=True)
    ]
    assert order == sorted(order) and any(order)  # the slow ones last


def test_the_legend_follows_the_colormap_and_the_map(panel):
    """A legend without a tick is a grey ramp that the page tints with the map's
    colormap (a colormap change sends no image); one with a tick at 0 is a colorbar."""
    view = panel.main_view
    ramp = bytes(view.bar.value)
    np.testing.assert_array_equal(page_legend(view), render.legend("viridis"))  # no tick
    assert "0 (no evidence) → high evidence" in view.bar_text.value
    forwards = []
    handle = panel.explainer.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        panel.colormap = "cividis"
    finally:
        handle.remove()
    assert bytes(view.bar.value) == ramp
    np.testing.assert_array_equal(page_legend(view), render.legend("cividis"))
    assert forwards == []  # no model pass for a new legend
    panel.layer, panel.method = "head", "cam"  # CAM is signed: no ReLU
    assert panel.explanation.raw.min() > 0 and view.zero is None  # the cat: all positive
    assert "low → high" in view.bar_text.value
    panel.target = 0  # tench: negative and positive evidence
    raw = panel.explanation.raw
    assert raw.min() < 0 < raw.max()
    assert view.zero == pytest.approx(-raw.min() / (raw.max() - raw.min()))
    assert "negative ← 0 → positive" in view.bar_text.value
    np.testing.assert_array_equal(page_legend(view), render.legend("cividis", zero=view.zero))


def test_legend_bars_by_hand():
    bar = render.legend("gray", width=5, height=4)
    assert bar.shape == (4, 5, 3) and (bar[0, :, 0] == [0, 64, 128, 191, 255]).all()
    ticked = render.legend("gray", width=11, height=8, zero=0.5)
    assert (ticked[:, 4:7][ticked[:, 4:7] != 255] == 0).all() and (ticked[2:6, 5] == 255).all()


def test_the_static_picture_saved_with_a_notebook(panel):
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # the live widget
    picture = np.asarray(Image.open(io.BytesIO(bundle["image/png"])))
    np.testing.assert_array_equal(picture, panel.picture())
    frame = panel.main_view.frame
    np.testing.assert_array_equal(picture[: frame.shape[0], : frame.shape[1]], frame)
    summary = bundle["text/plain"]
    assert summary.startswith("camwidget panel: 451×300 image · layer head")
    assert "Egyptian cat (285) · Grad-CAM" in summary
    panel.compare = True  # both views, side by side
    assert panel.picture().shape[1] == 2 * (frame.shape[1] + 4)


def test_pixel_level_methods_show_a_signed_map_without_the_layer(panel):
    layer = panel.controls["layer"]
    toggle = panel.controls["positive_only"]
    assert not layer.disabled and toggle.layout.display == "none"
    panel.method = "guided-backprop"
    assert layer.disabled and "reads no layer of your choosing" in layer.tooltip
    assert toggle.layout.display == "flex"
    options = panel.controls["method"].options
    labels = dict((v, k) for k, v in options)
    assert labels["guided-backprop"] == "Guided Backprop (pixels)"
    assert labels["guided-gradcam"] == "Guided Grad-CAM (pixels × layer)"
    assert labels["occlusion"] == "Occlusion (pixels) · slow"
    groups = [camwidget.methods.get(name).group for _, name in options]
    assert groups == sorted(groups, key=camwidget.methods.GROUPS.index)  # group by group
    tooltip = panel.controls["method"].tooltip
    assert tooltip.startswith("attributions at the pixels: Guided Backpropagation (")
    view = panel.main_view
    e, rgb = view.explanation, view.rgb
    signed = render.stretch_signed(e.heatmap_signed_at(rgb.shape[:2]))
    assert signed.min() < 0 < signed.max()
    expected = render.blend_signed(rgb, signed, panel.alpha)
    assert_page_shows(view, expected, photo=render.greyed(rgb))  # the grey photo is sent
    assert "against (blue) ← 0 → for the target (red)" in view.bar_text.value
    np.testing.assert_array_equal(page_legend(view), render.legend(render.DIVERGING, zero=0.5))
    height, width = view.frame.shape[:2]  # the picture's legend is the panel's
    below = panel.picture()[height : height + 14, :width]
    np.testing.assert_array_equal(
        below, render.legend(render.DIVERGING, width + 4, 14, 0.5)[:, :width]
    )

    forwards = []
    handle = panel.explainer.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        panel.positive_only = True  # a look change: no model pass
        positive = render.stretch_signed(e.heatmap_at(rgb.shape[:2]))
        assert positive.min() == 0.0
        expected = render.blend(rgb, positive, panel.colormap, panel.alpha)
        np.testing.assert_array_equal(view.frame, expected)
        panel.layer = "blocks.12"  # reads no layer: the guided gradient is cached
        panel.method = "guided-gradcam"  # Grad-CAM at blocks.12 and the cached gradient
        assert forwards == []
    finally:
        handle.remove()
    assert not layer.disabled
    panel.method = "gradcam"
    assert toggle.layout.display == "none"


def test_a_model_without_relu_modules_is_told_in_the_panel():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.GELU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    widget = CAMWidget(model, samples.load("chelsea"))
    try:
        widget.method = "guided-backprop"
        assert "needs ReLU modules" in widget.controls["messages"].value
    finally:
        widget.close()


def test_compare_grad_cam_with_guided_grad_cam(panel):
    panel.compare = True
    panel.compare_layer = panel.layer
    panel.compare_target = panel.target
    panel.compare_method = "guided-gradcam"
    main, second = panel.main_view.explanation, panel.compare_view.explanation
    assert main.method == "gradcam" and second.method == "guided-gradcam"
    assert second.layer == main.layer and second.attribution is not None
    assert panel.compare_view.signed and not panel.main_view.signed
    assert panel.controls["positive_only"].layout.display == "flex"
    panel.compare_method = "lrp"  # reads no layer: its layer control is off
    assert panel.controls["compare_layer"].disabled and not panel.controls["layer"].disabled
    panel.compare_method = "fullgrad"  # at the pixels, but never negative: shown as a CAM
    assert not panel.compare_view.signed and panel.controls["compare_layer"].disabled
    assert panel.controls["positive_only"].layout.display == "none"
    heat = panel.compare_view.explanation.heatmap
    assert heat.min() == 0.0 and heat.max() == 1.0  # min-max, as pytorch-grad-cam
    with pytest.raises(TraitError, match="unknown method 'nonsense'"):
        panel.compare_method = "nonsense"
    panel.compare_method = ""  # back to the main view's method
    assert panel.compare_view.explanation.method == "gradcam"
    assert panel.controls["positive_only"].layout.display == "none"


def test_aug_smooth_is_a_checkbox_beside_every_layer_method(panel):
    box = panel.controls["aug_smooth"]
    assert isinstance(box, widgets.Checkbox) and box.layout.display == "flex"  # Grad-CAM
    first = panel.main_view.explanation.raw
    box.value = True  # as the front end sets it
    panel.wait()
    assert panel.explainer.aug_smooth is True
    smoothed = panel.main_view.explanation.raw
    assert not np.array_equal(smoothed, first) and 0 <= smoothed.min() <= smoothed.max() <= 1
    panel.method = "guided-backprop"  # reads no layer: nothing to smooth
    assert box.layout.display == "none"
    panel.method = "gradcam"
    assert box.layout.display == "flex"
    box.value = False
    panel.wait()
    np.testing.assert_array_equal(panel.main_view.explanation.raw, first)  # kept


def test_finercam_compares_with_the_classes_typed(panel):
    box = panel.controls["finercam_against"]
    assert isinstance(box, widgets.Text) and box.layout.display == "none"
    panel.method = "finercam"
    assert box.layout.display == "flex"
    nearest = panel.main_view.explanation.target.others  # the three nearest classes
    assert len(nearest) == 3
    box.value = "tabby, 285"  # as the front end sets it: a name and an index
    panel.wait()
    assert panel.explainer.finercam_against == (281, 285)
    e = panel.main_view.explanation
    assert e.target.others == (281, 285) and e.label.endswith("against tabby, Egyptian cat")
    box.value = "tabby, no such class"  # told in the panel, nothing changed
    assert "no such class" in panel.controls["messages"].value
    assert panel.explainer.finercam_against == (281, 285)
    box.value = ""  # back to the nearest classes
    panel.wait()
    assert panel.explainer.finercam_against is None
    assert panel.main_view.explanation.target.others == nearest
    panel.method = "gradcam"


def test_lrp_in_the_panel_with_its_rules(panel):
    rules = panel.controls["lrp_composite"]
    assert rules.layout.display == "none"
    panel.method = "lrp"
    assert rules.layout.display == "flex" and rules.value == "epsilon-plus-flat"
    first = panel.main_view.explanation.attribution
    rules.value = "epsilon-alpha2-beta1"  # as the front end sets it
    panel.wait()
    assert panel.explainer.lrp_composite == "epsilon-alpha2-beta1"
    assert not np.array_equal(panel.main_view.explanation.attribution, first)
    assert panel.controls["layer"].disabled


def test_a_tiny_image_is_enlarged_with_its_pixels_sharp():
    from camwidget.widget.views import display_frame

    digit = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    shown = display_frame(digit, 448)  # 16× larger: each pixel a 16×16 square
    np.testing.assert_array_equal(shown, digit.repeat(16, axis=0).repeat(16, axis=1))
    photo = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(photo).resize((299, 448), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(display_frame(photo, 448), smooth)
