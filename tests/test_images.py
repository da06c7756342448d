"""Reading images: every accepted kind, odd modes, and refusals in words."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from camwidget import CamwidgetError
from camwidget.images import fit, to_rgb


def test_modes_become_rgb(photo):
    rgb = np.asarray(photo)
    assert to_rgb(photo.convert("L")).shape == rgb.shape
    gray = to_rgb(photo.convert("L"))
    assert (gray[..., 0] == gray[..., 2]).all()
    assert to_rgb(photo.convert("P")).shape == rgb.shape
    assert to_rgb(photo.convert("CMYK")).shape == rgb.shape


def test_transparency_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = (255, 0, 0, 255)  # opaque red on top, transparent below
    out = to_rgb(Image.fromarray(rgba, "RGBA"))
    assert (out[0, 0] == (255, 0, 0)).all() and (out[3, 3] == (255, 255, 255)).all()
    np.testing.assert_array_equal(to_rgb(rgba), out)


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    out = to_rgb(buffer.getvalue())
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 120 < out[32, 0, 0] < 135


def test_arrays_and_tensors():
    assert to_rgb(np.ones((5, 6), bool)).shape == (5, 6, 3)
    assert to_rgb(np.full((5, 6, 3), 0.5)).max() == 128
    assert to_rgb(np.zeros((5, 6, 1), np.uint8)).shape == (5, 6, 3)
    out = to_rgb(torch.linspace(-2, 2, 3 * 4 * 5).view(3, 4, 5))
    assert out.shape == (4, 5, 3) and out.min() == 0 and out.max() == 255
    with pytest.raises(CamwidgetError, match=r"\(H, W\), \(H, W, 3\) or \(H, W, 4\)"):
        to_rgb(np.zeros((5, 6, 2)))
    with pytest.raises(CamwidgetError, match="NaN"):
        to_rgb(np.full((5, 6, 3), np.nan))
    with pytest.raises(CamwidgetError, match="cannot use a dict as an image"):
        to_rgb({})


def test_corrupt_and_missing_files(tmp_path, photo):
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[:2000])
    for bad in (truncated, b"this is not an image", b""):
        with pytest.raises(CamwidgetError, match="could not read .* as an image"):
            to_rgb(bad)
    with pytest.raises(CamwidgetError, match="no image file at"):
        to_rgb(tmp_path / "missing.png")


def test_decompression_bomb_is_refused():
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144 Mpx, 20 kB on disk
    with pytest.raises(CamwidgetError, match="refused the uploaded file.*decompression bomb"):
        to_rgb(buffer.getvalue())


def test_fit_downscales_huge_images_with_a_note():
    rgb = np.zeros((4000, 6000, 3), np.uint8)
    small, note = fit(rgb, 1024)
    assert small.shape == (683, 1024, 3)
    assert "6000×4000" in note and "downscaled to 1024×683" in note
    same, note = fit(small, 1024)
    assert same is small and note is None
