"""A preprocess that crops or pads: where its input lies on the photo (found by probes),
the map placed there with the rest of the photo veiled, boxes and metrics in the same
frame, and the preprocess's normalisation as the model input's bounds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from camwidget import Explainer, framing, metrics, render, zoo
from camwidget.explanation import to_image
from camwidget.framing import Frame

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])


def tensors(transform):
    return lambda rgb: transform(Image.fromarray(rgb))[None]


def centre_crop(size: tuple[int, int], short: int = 256, crop: int = 224) -> Frame:
    """Resize(short) then CenterCrop(crop) as torchvision computes them, by hand."""
    height, width = size
    resized = (short, int(short * width / height)) if height <= width else (
        int(short * height / width), short)  # fmt: skip
    top, left = (round((side - crop) / 2.0) for side in resized)
    return Frame(top / resized[0], left / resized[1], crop / resized[0], crop / resized[1])


@pytest.mark.parametrize("size", [(300, 451), (451, 300), (64, 80), (1200, 1600)])
def test_a_centre_crop_is_found_where_torchvision_puts_it(size):
    found = framing.probe(tensors(CROP), size)
    expected = centre_crop(size)
    one_pixel = 1.0 / min(size)
    for got, want in zip(
        (found.frame.top, found.frame.left, found.frame.height, found.frame.width),
        (expected.top, expected.left, expected.height, expected.width),
        strict=True,
    ):
        assert got == pytest.approx(want, abs=one_pixel), (found.frame, expected)
    np.testing.assert_allclose(found.low, (0.0 - np.array(MEAN)) / STD, rtol=1e-5)
    np.testing.assert_allclose(found.high, (1.0 - np.array(MEAN)) / STD, rtol=1e-5)


@pytest.mark.parametrize("size", [(300, 451), (451, 300)])
def test_a_centre_crop_to_one_gray_channel_is_found_as_in_colour(size):
    """A preprocess for a one-channel model: each ramp is probed as a gray photo."""
    gray = T.Compose([T.Grayscale(), T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    found, colour = framing.probe(tensors(gray), size), framing.probe(tensors(CROP), size)
    assert found.frame is not None and found.note is None
    for side in ("top", "left", "height", "width"):
        got, want = getattr(found.frame, side), getattr(colour.frame, side)
        assert got == pytest.approx(want, abs=1.0 / min(size)), (found.frame, colour.frame)
    np.testing.assert_allclose((found.low, found.high), ([0.0], [1.0]), atol=1e-6)


def test_a_plain_resize_has_no_frame_and_anything_else_is_said():
    whole = framing.probe(tensors(T.Compose([T.Resize((224, 224)), T.ToTensor()])), (300, 451))
    assert whole.frame is None and whole.note is None
    lite0 = framing.probe(tensors(zoo.efficientnet_lite.preprocess), (300, 451))
    assert lite0.frame is None and lite0.note is None
    np.testing.assert_allclose(lite0.low, -127 / 128, rtol=1e-6)  # (x - 127) / 128
    flipped = T.Compose([T.Resize((224, 224)), T.RandomHorizontalFlip(1.0), T.ToTensor()])
    flip = framing.probe(tensors(flipped), (300, 451))
    assert flip.frame is None and "more than resize, crop or pad" in flip.note
    grey = T.Compose([T.Grayscale(3), T.ToTensor()])
    assert framing.probe(tensors(grey), (40, 50)).frame is None  # the channels are mixed


def test_padding_reaches_beyond_the_photo():
    padded = framing.probe(tensors(T.Compose([T.Pad((20, 10)), T.ToTensor()])), (300, 451))
    frame = padded.frame
    assert frame.left == pytest.approx(-20 / 451, abs=1e-3)
    assert frame.top == pytest.approx(-10 / 300, abs=1e-3)
    assert frame.width == pytest.approx(491 / 451, abs=1e-3)
    assert frame.height == pytest.approx(320 / 300, abs=1e-3)


def test_place_and_cut_back_are_inverse():
    """A map placed in a frame and cut back out of it is the map again (bilinear both
    ways, at the same resolution)."""
    frame = Frame(0.1, 0.25, 0.75, 0.5)
    raw = np.random.default_rng(0).random((60, 40)).astype(np.float32)
    placed = render.upsample(raw, (80, 80), frame)
    inside = render.inside((80, 80), frame)
    assert inside.sum() == 60 * 40 and inside[8:68, 20:60].all()
    np.testing.assert_allclose(placed[inside].reshape(60, 40), raw, atol=1e-6)
    np.testing.assert_allclose(render.upsample(placed, (60, 40), frame.inverse), raw, atol=1e-6)


@pytest.fixture(scope="module")
def cropped(resnet18, photo):
    ex = Explainer(resnet18, preprocess=CROP)
    return ex, ex.explain(photo, "layer4", 0)


def test_the_map_lies_on_the_photos_own_pixels(cropped, photo):
    ex, e = cropped
    frame = e.frame
    assert frame == ex.prepare(photo).frame and frame is not None
    expected = centre_crop(photo.size[::-1])
    assert frame.top == pytest.approx(expected.top, abs=2e-3)
    heat = e.heatmap
    outside = ~render.inside(heat.shape, frame)
    assert outside.any() and not heat[outside].any()  # nothing where the model saw nothing
    back = render.upsample(heat, (224, 224), frame.inverse)
    seen = render.normalise(render.upsample(e.raw, (224, 224)))
    assert np.corrcoef(back.ravel(), seen.ravel())[0, 1] > 0.999
    assert any("the model sees rows" in note for note in ex.prepare(photo).notes)


def test_a_box_and_a_heatmap_map_between_input_and_photo(cropped, photo):
    ex, _ = cropped
    prepared = ex.prepare(photo)
    whole = to_image((0, 0, 224, 224), prepared)  # a detector's box, input -> photo
    height, width = prepared.size
    frame = prepared.frame
    expected = (frame.left * width, frame.top * height)
    expected += (expected[0] + frame.width * width, expected[1] + frame.height * height)
    np.testing.assert_allclose(whole, expected, rtol=1e-6)
    patch = np.zeros(prepared.size, np.float32)  # hot where the input's top-left corner is
    x, y = round(expected[0]), round(expected[1])
    patch[y : y + 30, x : x + 30] = 1.0
    ranks = metrics._resized(patch, prepared)
    assert ranks.shape == (224, 224) and ranks[:5, :5].min() == 1.0 and ranks[60:, 60:].max() == 0


def test_the_preprocess_bounds_the_input_for_lrp(cropped, photo):
    """LRP's first rule needs the lowest and highest input: through the preprocess they
    are its own (here ImageNet's), as for a model explained with its own statistics."""
    ex, _ = cropped
    low, high = ex.preparation.input_bounds()
    np.testing.assert_allclose(low.flatten(), (0.0 - np.array(MEAN)) / STD, rtol=1e-5)
    np.testing.assert_allclose(high.flatten(), (1.0 - np.array(MEAN)) / STD, rtol=1e-5)
    box = "epsilon-gamma-box"  # the rule at the input layer that reads the bounds
    lrp = Explainer(ex.model, preprocess=CROP, lrp_composite=box)
    own = Explainer(ex.model, lrp_composite=box)  # ImageNet's statistics, its default
    unprobed = Explainer(ex.model, preprocess=CROP, lrp_composite=box)
    framed = lrp.explain(photo, "layer4", 0, method="lrp").raw
    imagenet = own.explain(CROP(photo), "layer4", 0, method="lrp").raw
    np.testing.assert_allclose(framed, imagenet, rtol=1e-4, atol=1e-6 * np.abs(imagenet).max())
    unbounded = unprobed.explain(CROP(photo), "layer4", 0, method="lrp").raw  # a tensor: its range
    assert np.abs(unbounded - imagenet).max() > 1e-3 * np.abs(imagenet).max()


@pytest.mark.parametrize("compose", ["page", "kernel"])
def test_the_panel_veils_what_the_model_did_not_see(resnet18, photo, compose):
    from camwidget import CAMWidget

    panel = CAMWidget(resnet18, photo, preprocess=CROP, compose=compose)
    panel.wait()
    view = panel.main_view
    outside = ~render.inside(view.rgb.shape[:2], view.explanation.frame)
    assert outside.any() and not view.heat[outside].any()
    if compose == "page":  # a layer over the map: black, see-through inside the frame
        marks = np.asarray(Image.open(io.BytesIO(bytes(view.marks.value))))
        assert view.marks.layout.display is None and marks.shape[2] == 4
        np.testing.assert_array_equal(marks[..., 3] > 0, outside)
        assert marks[outside].max(axis=0).tolist() == [0, 0, 0, round(255 * (1 - render.VEIL))]
        sent = []
        view.marks.observe(sent.append, "value")
        panel.layer = "layer3"  # a new map over the same photo: the veil is not sent again
        panel.wait()
        assert view.explanation.layer == "layer3" and sent == []
    else:
        plain = render.blend(view.rgb, view.heat, panel.colormap, panel.alpha, panel.threshold)
        np.testing.assert_array_equal(view.frame[~outside], plain[~outside])
        dimmed = (plain[outside] * render.VEIL).astype(np.uint8)
        np.testing.assert_array_equal(view.frame[outside], dimmed)
    panel.close()


def test_a_hugging_face_processors_crop_and_statistics_are_read():
    """CLIP's processor: shortest edge to 64, then a 64×64 centre crop (a 300×451 photo:
    64×96, columns 16–80); ViT's: the whole photo to 64×64."""
    transformers = pytest.importorskip("transformers")
    from camwidget.preparation import pixel_values

    def of(processor):
        return lambda rgb: pixel_values(processor(Image.fromarray(rgb), return_tensors="pt"))

    clip = transformers.CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    found = framing.probe(of(clip), (300, 451))
    assert found.frame.left == pytest.approx(16 / 96, abs=2e-3)
    assert found.frame.width == pytest.approx(64 / 96, abs=2e-3)
    assert abs(found.frame.top) < 2e-3 and found.frame.height == pytest.approx(1, abs=2e-3)
    mean, std = np.array(clip.image_mean), np.array(clip.image_std)
    np.testing.assert_allclose(found.low, -mean / std, rtol=1e-5)
    np.testing.assert_allclose(found.high, (1 - mean) / std, rtol=1e-5)
    vit = transformers.ViTImageProcessor(size={"height": 64, "width": 64})
    assert framing.probe(of(vit), (300, 451)).frame is None
