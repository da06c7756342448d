"""The Gallery: sorting, filters, the confusion table, restyling without model passes,
the click-through to a panel, and the HTML report, on a folder of the shipped photos."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from conftest import filter_palette
from PIL import Image

from camwidget import CAMWidget, Explainer, Gallery, explain_dataset, render, zoo
from camwidget.widget.gallery import ALL


@pytest.fixture(scope="module")
def explainer():
    model, _, labels = zoo.load("efficientnet_lite0")
    return Explainer(model, labels=labels)


@pytest.fixture(scope="module")
def audit(explainer, photo_folder):
    return explain_dataset(explainer, photo_folder, layer="blocks.12", progress=False)


@pytest.fixture
def gallery(explainer, audit):
    widget = Gallery(explainer, audit)
    yield widget
    widget.close()


def shown_rows(gallery):
    return [card.row for card in gallery.grid.children]


def test_wrong_first_then_by_loss(gallery, audit):
    frame = audit.to_pandas()
    wrong = frame[~frame["correct"]].sort_values("loss", ascending=False)
    right = frame[frame["correct"]].sort_values("loss", ascending=False)
    assert shown_rows(gallery) == [*wrong["index"], *right["index"]]
    assert gallery.status.value.startswith(f"15 of 15 images ({len(wrong)} wrong)")
    gallery.order = "lowest confidence"
    assert shown_rows(gallery) == list(frame.sort_values("probability")["index"])
    gallery.order = "most border mass"
    borders = [frame.set_index("index").loc[row, "border"] for row in shown_rows(gallery)]
    assert borders == sorted(borders, reverse=True)


def test_filters_and_pages(gallery, audit, explainer):
    frame = audit.to_pandas()
    cat = explainer.check_target("Egyptian cat")
    gallery.controls["true_class"].value = cat  # as the front end sets it
    assert set(shown_rows(gallery)) == set(frame[frame["label"] == cat]["index"])
    gallery.wrong_only = True
    assert set(shown_rows(gallery)) == set(
        frame[(frame["label"] == cat) & ~frame["correct"]]["index"]
    )
    gallery.true_class, gallery.wrong_only = ALL, False
    gallery.page_size = 24
    assert gallery.pages == 1 and len(gallery.grid.children) == 15
    gallery.page_size = 36
    gallery.controls["next"].click()  # one page only: stays
    assert gallery.page == 0


def test_a_confusion_cell_filters_the_grid(gallery, audit, explainer):
    frame = audit.to_pandas()
    mistakes = frame[~frame["correct"]]
    true, guess = int(mistakes.iloc[0]["label"]), int(mistakes.iloc[0]["predicted"])
    cell = next(
        child
        for child in gallery.confusion.children
        if getattr(child, "tooltip", None)
        == f"true {explainer.label(true)}, predicted {explainer.label(guess)}"
    )
    assert int(cell.description) == len(
        frame[(frame["label"] == true) & (frame["predicted"] == guess)]
    )
    cell.click()
    assert (gallery.true_class, gallery.predicted_class) == (true, guess)
    expected = frame[(frame["label"] == true) & (frame["predicted"] == guess)]["index"]
    assert set(shown_rows(gallery)) == set(expected)


def test_restyling_runs_no_model_pass_and_sends_no_image(gallery):
    def sent():
        return [
            bytes(image.value)
            for card in gallery.grid.children
            for image in card.children[0].children
        ]

    before, colours = sent(), gallery.colours.value
    forwards = []
    handle = gallery.explainer.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        gallery.controls["colormap"].value = "magma"  # the colour filter only
        assert gallery.colours.value != colours
        gallery.alpha = 0.8  # one style rule, for the cards' maps (not a panel's below)
        assert "opacity: 0.800" in gallery.sheet.value
        scope = gallery.sheet.value.removeprefix("<style>.").split(" ")[0]
        assert scope in gallery.grid._dom_classes
    finally:
        handle.remove()
    assert forwards == [] and sent() == before
    card = gallery.grid.children[0]  # the page composes what the report shows
    levels = np.asarray(Image.open(io.BytesIO(card.map.value)))
    colours = filter_palette(gallery.colours.value)
    np.testing.assert_array_equal(colours, render.palette("magma"))
    weight = colours[levels][:, :, 3:] / 255 * 0.8
    photo = gallery._picture(card.row).astype(np.float32)
    page = np.rint(photo * (1 - weight) + colours[levels][:, :, :3] * weight)
    report = np.asarray(Image.open(io.BytesIO(gallery._overlay(card.row))), np.float32)
    assert np.abs(page - report).mean() < 3  # the report's JPEG apart


def test_open_explains_the_image_in_a_panel_below(gallery, audit):
    card = gallery.grid.children[0]
    forwards = []
    handle = gallery.explainer.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        card.children[2].click()  # the "open" button: the panel comes at once
        panel = gallery.panel
        assert isinstance(panel, CAMWidget)
        panel.wait()  # its explanation is made in the panel's worker
    finally:
        handle.remove()
    assert isinstance(panel, CAMWidget) and gallery.below.children == (panel,)
    assert panel.explainer is gallery.explainer  # the same explainer, its caches shared
    image = audit[card.row]
    assert panel.layer == "blocks.12" and panel.target == image.target
    assert len(forwards) <= 2  # one forward (two for a model with in-place maps)
    shown = panel.main_view.explanation  # the image as the audit saw it: the same map
    assert shown.score == pytest.approx(image.score, rel=1e-4)
    scale = float(np.abs(image.raw).max())
    np.testing.assert_allclose(shown.raw, image.raw, atol=1e-3 * scale + 1e-6)


def test_the_html_report(gallery, tmp_path, audit):
    gallery.wrong_only = True
    path = gallery.export(tmp_path / "report.html")
    text = path.read_text()
    wrong = int((~audit.to_pandas()["correct"]).sum())
    assert len(re.findall(r"<img src='data:image/jpeg;base64,", text)) == wrong
    assert text.count("<tr class='wrong'>") == wrong and "<title>camwidget audit" in text


def test_a_gallery_from_a_parquet_store(explainer, photo_folder, tmp_path):
    path = tmp_path / "audit.parquet"
    explain_dataset(explainer, photo_folder, store=path, progress=False)
    gallery = Gallery(explainer, path)
    try:
        assert len(gallery.grid.children) == 15
    finally:
        gallery.close()
