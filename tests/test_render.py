"""Rendering: numpy upsampling equals torch's bilinear, normalisation, colormaps, blending."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

import camwidget
from camwidget import CamwidgetError, render


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [
        ((7, 7), (224, 224)),
        ((3, 5), (17, 40)),
        ((16, 19), (600, 512)),
        ((1, 1), (4, 6)),
        ((30, 20), (7, 9)),
        ((5, 5), (5, 5)),
    ],
)
def test_upsample_equals_torch_bilinear(size_in, size_out):
    raw = np.random.default_rng(0).normal(size=size_in).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(raw)[None, None].double(),
        size=size_out,
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    np.testing.assert_allclose(render.upsample(raw, size_out), expected, atol=1e-6)


def test_normalise():
    np.testing.assert_allclose(
        render.normalise(np.array([[2.0, 4.0], [3.0, 6.0]])), [[0, 0.5], [0.25, 1]]
    )
    for constant in (np.zeros((3, 3)), np.full((3, 3), 7.0)):
        out = render.normalise(constant)
        assert out.dtype == np.float32 and not out.any()


def test_colorize_uses_matplotlib_colormaps():
    heat = np.array([[0.0, 0.5, 1.0]])
    for name in ("jet", "viridis", "cividis", "gray"):
        expected = np.rint(matplotlib.colormaps[name](np.array([0, 128, 255]) / 255)[:, :3] * 255)
        np.testing.assert_array_equal(render.colorize(heat, name)[0], expected)
    with pytest.raises(CamwidgetError, match="unknown colormap 'nope'.*matplotlib.colormaps"):
        render.colorize(heat, "nope")


def test_blend_alpha_and_threshold():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    heat = np.array([[0.0, 0.2], [0.6, 1.0]], np.float32)
    colored = render.colorize(heat, "gray").astype(float)
    out = render.blend(rgb, heat, "gray", alpha=0.25)
    np.testing.assert_array_equal(out, np.rint(0.75 * 100 + 0.25 * colored))
    out = render.blend(rgb, heat, "gray", alpha=0.25, threshold=0.5)
    np.testing.assert_array_equal(out[0], rgb[0])  # below the threshold: the photo
    np.testing.assert_array_equal(out[1], np.rint(0.75 * 100 + 0.25 * colored[1]))
    assert (render.blend(rgb, heat, alpha=0.0) == rgb).all()
    with pytest.raises(CamwidgetError, match="alpha"):
        render.blend(rgb, heat, alpha=1.5)


def test_overlay_resizes_the_heatmap_to_the_image(photo):
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1.0
    out = camwidget.overlay(photo, heat, colormap="inferno", alpha=0.6)
    assert out.shape == (600, 512, 3) and out.dtype == np.uint8
    full = render.upsample(heat, (600, 512))  # resized as given, not re-normalised
    np.testing.assert_array_equal(out, render.blend(np.asarray(photo), full, "inferno", 0.6))


def test_encode_roundtrip():
    from io import BytesIO

    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert (np.asarray(Image.open(BytesIO(render.encode(rgb, "png")))) == rgb).all()
    assert Image.open(BytesIO(render.encode(rgb, "jpeg"))).size == (30, 20)


def test_a_signed_map_is_stretched_at_a_percentile_and_keeps_its_zero():
    values = np.array([[-4.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(render.stretch_signed(values, 100.0), [[-1.0, 0.0, 0.25, 0.5]])
    # the 50th percentile of |values| is 1.5: larger magnitudes are clipped
    stretched = render.stretch_signed(values, 50.0)
    np.testing.assert_allclose(stretched, [[-1.0, 0.0, 1 / 1.5, 1.0]], rtol=1e-6)
    assert not render.stretch_signed(np.zeros((2, 2))).any()
    sparse = np.zeros((10, 10), dtype=np.float32)
    sparse[0, 0] = -3.0  # the percentile is 0: the largest magnitude is used
    assert render.stretch_signed(sparse)[0, 0] == -1.0


def test_a_signed_blend_leaves_zero_grey_and_colours_by_sign():
    rgb = np.full((1, 3, 3), 100, dtype=np.uint8)
    signed = np.array([[-1.0, 0.0, 0.0625]], dtype=np.float32)
    assert render.levels(signed, signed=True).tolist() == [[1, 128, 136]]  # 0 at 128
    grey = 100 * 0.6 + 60.0  # the photo in grey: 120
    lut = render.colormap_lut(render.DIVERGING).astype(np.float32)
    out = render.blend_signed(rgb, signed, alpha=0.5)
    assert tuple(out[0, 1]) == (120, 120, 120)  # zero: the grey photo
    blue = lut[0]  # magnitude 1: covered fully, at the opacity
    np.testing.assert_array_equal(out[0, 0], np.rint(grey * 0.5 + blue * 0.5))
    np.testing.assert_array_equal(render.blend_signed(rgb, signed, alpha=1.0)[0, 0], blue)
    red = lut[136]  # level 136 = 8/127 above 0: the colour at (8/127 + 1) / 2 of the map
    coverage = round(255 * 2 * np.sqrt(8 / 127)) / 255  # min(1, 2 sqrt m), in 256 steps
    weight = np.float32(0.5 * coverage)
    np.testing.assert_array_equal(out[0, 2], np.rint(grey * (1 - weight) + red * weight))
    assert red[0] > red[2]  # above zero is red
    hidden = render.blend_signed(rgb, signed, alpha=0.5, threshold=0.5)
    assert tuple(hidden[0, 2]) == (120, 120, 120)
