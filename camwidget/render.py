"""From a raw map to the picture in the panel: numpy only, no torch, no figure.

upsample (bilinear, align_corners=False) -> normalise to [0, 1] -> colormap LUT ->
alpha blend -> encode.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from .errors import CamwidgetError
from .framing import Frame
from .images import to_rgb

#: Colormaps offered first in the panel; any name ``matplotlib.colormaps`` knows works.
#: The first three are perceptually uniform and readable with the common colour-vision
#: deficiencies (cividis is made for them); viridis is the default.
COLORMAPS = ("viridis", "cividis", "magma", "inferno", "turbo", "jet", "gray")

#: How bright the photo stays where the model did not see it (cropped away).
VEIL = 0.35


@lru_cache(maxsize=64)
def _taps(
    size_in: int, size_out: int, start: float = 0.0, span: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation with half-pixel centres: output sample i reads the input
    at x = (i + 0.5) * size_in / size_out - 0.5, clamped to [0, size_in - 1], as torch's
    ``interpolate(mode="bilinear", align_corners=False)``; where the input spans only
    [start, start + span] of the output (fractions), at the position it has there.
    Returns (left, right, weight of right), the weight in float32."""
    x = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
    if (start, span) != (0.0, 1.0):
        x = ((x + 0.5) / size_in - start) / span * size_in - 0.5
    x = np.clip(x, 0.0, size_in - 1)
    left = np.floor(x).astype(np.intp)
    right = np.minimum(left + 1, size_in - 1)
    return left, right, (x - left).astype(np.float32)


def upsample(raw: np.ndarray, size: tuple[int, int], frame: Frame | None = None) -> np.ndarray:
    """Resize a 2-D map to ``size`` = (H, W), bilinear with align_corners=False; with a
    ``frame``, onto the part of (H, W) it names (beyond it, the nearest edge's values:
    see :func:`inside`).

    Rows, then columns, each output value a blend of two neighbours: elementwise numpy
    in float32 (as torch computes it; float64 took 8x longer), no BLAS (a BLAS thread
    pool would compete with torch's threads on a small machine).
    """
    raw = np.asarray(raw, dtype=np.float32)
    down, across = ((0.0, 1.0), (0.0, 1.0)) if frame is None else frame.lines
    left, right, weight = _taps(raw.shape[0], size[0], *down)
    rows = raw[left] * (1.0 - weight)[:, None] + raw[right] * weight[:, None]
    left, right, weight = _taps(raw.shape[1], size[1], *across)
    return rows[:, left] * (1.0 - weight) + rows[:, right] * weight


def inside(size: tuple[int, int], frame: Frame) -> np.ndarray:
    """bool (H, W): the pixels of ``size`` whose centres lie in ``frame``."""
    (top, height), (left, width) = frame.lines
    rows = np.abs((np.arange(size[0]) + 0.5) / size[0] - top - height / 2) <= height / 2
    cols = np.abs((np.arange(size[1]) + 0.5) / size[1] - left - width / 2) <= width / 2
    return rows[:, None] & cols[None, :]


def veiled(rgb: np.ndarray, outside: np.ndarray | None) -> np.ndarray:
    """``rgb`` darkened where ``outside`` (bool (H, W): what the model did not see, e.g.
    ``~inside(size, frame)``); unchanged without it."""
    if outside is None:
        return rgb
    out = rgb.copy()
    out[outside] = (out[outside] * VEIL).astype(np.uint8)
    return out


def normalise(heat: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant map (no contrast) becomes all zeros."""
    heat = np.asarray(heat, dtype=np.float32)
    low, high = float(heat.min()), float(heat.max())
    span = high - low
    if not np.isfinite(span) or span <= 1e-12 * max(abs(high), abs(low), 1e-30):
        return np.zeros_like(heat)
    return ((heat - low) / span).astype(np.float32)


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of the matplotlib colormap ``name``."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        known = ", ".join(COLORMAPS)
        raise CamwidgetError(
            f"unknown colormap {name!r}: use one of {known}, or any name in matplotlib.colormaps"
        ) from None
    lut = np.rint(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def colorize(heatmap: np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """Map a [0, 1] heatmap (H, W) through a colormap to uint8 RGB (H, W, 3).

    The lookup runs in PIL as a palette image (a tenth of numpy's fancy indexing).
    """
    index = np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)
    image = Image.fromarray(index, "L")
    image.putpalette(colormap_lut(colormap).tobytes())
    return np.asarray(image.convert("RGB"))


def levels(heatmap: np.ndarray, signed: bool = False) -> np.ndarray:
    """The map as levels, uint8 (H, W): ``heatmap`` in [0, 1] as 0..255, or a ``signed``
    map in [-1, 1] as 1..255 with 0 at level 128."""
    if signed:
        return (np.rint(np.clip(heatmap, -1.0, 1.0) * 127.0) + 128.0).astype(np.uint8)
    return np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def palette(colormap: str, threshold: float = 0.0, signed: bool = False) -> np.ndarray:
    """Each level's colour and coverage, uint8 (256, 4) RGBA: the colormap, opaque from
    ``threshold`` up (a level below it lets the photo show through). For a ``signed``
    map (:func:`levels`) the coverage grows with the magnitude m, ``min(1, 2 sqrt m)``
    (faint evidence still shows, 0 shows nothing), and ``threshold`` cuts small m."""
    out = np.empty((256, 4), dtype=np.uint8)
    level = np.arange(256, dtype=np.float64)
    if signed:
        value = np.clip((level - 128.0) / 127.0, -1.0, 1.0)
        out[:, :3] = colormap_lut(colormap)[np.rint((value + 1.0) * 127.5).astype(int)]
        magnitude = np.abs(value)
        coverage = np.minimum(1.0, 2.0 * np.sqrt(magnitude)) * (magnitude >= threshold)
    else:
        out[:, :3] = colormap_lut(colormap)
        coverage = (level / 255.0 >= threshold - 1e-9).astype(np.float64)
    out[:, 3] = np.rint(coverage * 255.0)
    return out


def compose(base: np.ndarray, level: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """What the page shows: a map's ``level`` (:func:`levels`) coloured by ``colours``
    (a :func:`palette`) over ``base`` (uint8 RGB, the same (H, W)) at opacity ``alpha``:
    ``base + (colour - base) * alpha * coverage``."""
    if base.shape[:2] != level.shape:
        raise CamwidgetError(f"image size {base.shape[:2]} and map size {level.shape} differ")
    if not 0.0 <= alpha <= 1.0:
        raise CamwidgetError(f"alpha must lie in [0, 1]; got {alpha}")
    weight = colours[:, 3].astype(np.float32) * np.float32(alpha / 255.0)  # per level
    keep = np.take(np.float32(1.0) - weight, level)[:, :, None]
    out = base * keep
    out += np.take(colours[:, :3].astype(np.float32) * weight[:, None], level, axis=0)
    return np.rint(out, out=out).astype(np.uint8)


def blend(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    colormap: str = "viridis",
    alpha: float = 0.5,
    threshold: float = 0.0,
) -> np.ndarray:
    """``(1 - a) * rgb + a * colormap(heatmap)`` where a = alpha and the heatmap's level
    (of 256) is at least ``threshold``; below it the photo shows through untouched.
    ``rgb`` and ``heatmap`` must have the same (H, W)."""
    return compose(rgb, levels(heatmap), palette(colormap, threshold), alpha)


#: The colormap of signed pixel-level maps: blue below 0, white at 0, red above.
DIVERGING = "RdBu_r"


def stretch_signed(values: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """A signed map divided by the ``percentile`` of its magnitudes and clipped to
    [-1, 1], so that a few extreme pixels do not leave the rest invisible (as Captum's
    visualisation clips outliers); 0 stays 0. All zeros for an all-zero map."""
    magnitude = np.abs(np.asarray(values, dtype=np.float32))
    scale = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        scale = float(magnitude.max()) if magnitude.size else 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        return np.zeros_like(magnitude)
    return np.clip(values / scale, -1.0, 1.0).astype(np.float32)


def blend_signed(
    rgb: np.ndarray,
    signed: np.ndarray,
    alpha: float = 0.5,
    threshold: float = 0.0,
    colormap: str = DIVERGING,
) -> np.ndarray:
    """A signed map in [-1, 1] over ``rgb`` shown in grey (:func:`greyed`: red and blue
    read as the map's, not the photo's): each pixel takes the diverging colormap's
    colour (0 at its middle) with opacity ``alpha * min(1, 2 sqrt|value|)``, so that
    where the map is 0 the grey photo shows through; magnitudes below ``threshold`` are
    hidden."""
    return compose(greyed(rgb), levels(signed, True), palette(colormap, threshold, True), alpha)


def greyed(rgb: np.ndarray) -> np.ndarray:
    """The photo in a light, low-contrast grey, the base of a signed map."""
    grey = rgb.astype(np.float32).mean(axis=2, keepdims=True) * 0.6 + 60.0
    return np.repeat(np.rint(grey).astype(np.uint8), 3, axis=2)


def legend(
    colormap: str, width: int = 256, height: int = 14, zero: float | None = None
) -> np.ndarray:
    """A colorbar, uint8 (height, width, 3): the colormap from low (left) to high. With
    ``zero`` (its position in [0, 1], for a map with negative values), a tick marks 0."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    bar = colorize(ramp, colormap).copy()
    if zero is not None and 0.0 < zero < 1.0:
        x = min(width - 1, round(zero * (width - 1)))
        bar[:, max(0, x - 1) : x + 2] = (0, 0, 0)
        bar[height // 4 : 3 * height // 4, x] = (255, 255, 255)
    return bar


def with_legend(
    rgb: np.ndarray, colormap: str, zero: float | None, lines: list[str], meaning: str
) -> np.ndarray:
    """``rgb`` over its colour legend (as wide; 0 marked at ``zero``), captioned with
    ``lines`` and what the colours mean (``meaning``)."""
    bar = legend(colormap, width=rgb.shape[1], height=14, zero=zero)
    return captioned(np.concatenate([rgb, bar], axis=0), [*lines, f"colours: {meaning}"])


def outline(
    rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """``rgb`` with the border of ``mask`` (bool (H, W), the same size) drawn in
    ``color``, two pixels wide."""
    inner = mask.copy()
    for axis in (0, 1):
        for shift in (1, -1, 2, -2):
            inner &= np.roll(mask, shift, axis=axis)
    border = mask & ~inner
    out = rgb.copy()
    out[border] = color
    return out


def draw_box(
    rgb: np.ndarray, box: tuple[float, ...], color: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """``rgb`` with the rectangle ``box`` (x1, y1, x2, y2 in its pixels) drawn in ``color``."""
    from PIL import ImageDraw

    image = Image.fromarray(rgb)
    ImageDraw.Draw(image).rectangle([round(v) for v in box], outline=color, width=2)
    return np.asarray(image)


def encode(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Encode a uint8 RGB array as JPEG or PNG bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(rgb)
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def overlay(
    image: object,
    heatmap: np.ndarray,
    colormap: str = "viridis",
    alpha: float = 0.5,
    threshold: float = 0.0,
) -> np.ndarray:
    """Blend a [0, 1] heatmap over ``image`` (any accepted image) -> uint8 (H, W, 3).

    The heatmap is resized bilinearly to the image's size when the two differ; heat
    below ``threshold`` is not drawn.
    """
    rgb = to_rgb(image)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise CamwidgetError(f"a heatmap must be 2-D (H, W); got shape {heatmap.shape}")
    if heatmap.shape != rgb.shape[:2]:
        heatmap = upsample(heatmap, rgb.shape[:2])
    return blend(rgb, heatmap, colormap, alpha, threshold)


def captioned(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """``rgb`` with ``lines`` of text on a white band below it (DejaVu Sans), wrapped
    to the image's width."""
    import textwrap

    from matplotlib import font_manager
    from PIL import ImageDraw, ImageFont

    width = rgb.shape[1]
    size = max(11, min(28, width // 36))
    columns = max(8, int((width - size) / (0.62 * size)))
    lines = [part for line in lines for part in textwrap.wrap(line, columns) or [""]]
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    line_height = round(size * 1.35)
    band = Image.new("RGB", (width, line_height * len(lines) + size), "white")
    draw = ImageDraw.Draw(band)
    for row, line in enumerate(lines):
        draw.text((size // 2, size // 2 + row * line_height), line, fill="black", font=font)
    return np.concatenate([rgb, np.asarray(band)], axis=0)
