"""Read any accepted image into an RGB ``uint8`` array, or refuse it in words.

Accepted: a path, encoded file bytes (an upload), a PIL image in any mode, an array
(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16, bool or floats in [0, 1],
or a (3, H, W) tensor (an already preprocessed input, shown as its min-max stretch).
Transparent pixels are composited on white; 16-bit images are scaled to 8 bits; EXIF
orientation is applied.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CamwidgetError

#: Images above this many pixels are refused (PIL's decompression-bomb threshold).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def to_rgb(image: object) -> np.ndarray:
    """Return ``image`` as a C-contiguous ``uint8`` array (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_rgb(_open(Path(image).expanduser(), name=str(image)))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _pil_to_rgb(_open(io.BytesIO(bytes(image)), name="the uploaded file"))
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if hasattr(image, "detach"):  # a torch tensor, shown as its min-max stretch
        return _tensor_to_rgb(image)
    raise CamwidgetError(
        f"cannot use a {type(image).__name__} as an image: pass a file path, file bytes, "
        "a PIL image, an (H, W, 3) uint8 array or a (3, H, W) float tensor"
    )


def fit(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, str | None]:
    """Downscale ``rgb`` so that its long side is at most ``max_side``; say so if it was."""
    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb, None
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    note = (
        f"the image is {width}×{height}: it was downscaled to {size[0]}×{size[1]} "
        "for the model; the heatmap is shown at the full size"
    )
    return small, note


def _open(source: Path | io.BytesIO, name: str) -> Image.Image:
    if isinstance(source, Path) and not source.is_file():
        raise CamwidgetError(f"no image file at {name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
            _refuse_if_huge(image.size, name)
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(name) from None
        except (UnidentifiedImageError, OSError, SyntaxError, struct.error) as error:
            raise CamwidgetError(
                f"could not read {name} as an image: it is not an image file or it is "
                f"damaged ({error})"
            ) from None
    return ImageOps.exif_transpose(image)


def _refuse_if_huge(size: tuple[int, int], name: str = "the image") -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise _too_large(name)


def _too_large(name: str) -> CamwidgetError:
    return CamwidgetError(
        f"refused {name}: it has over {MAX_PIXELS / 1e6:.0f} million pixels, too many "
        "to decode safely (a possible decompression bomb)"
    )


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    _refuse_if_huge(image.size)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _array_to_rgb(np.asarray(image))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise CamwidgetError(
            f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got {array.shape}"
        )
    if min(array.shape[:2]) < 1:
        raise CamwidgetError(f"the image is empty: its shape is {array.shape}")
    _refuse_if_huge((array.shape[1], array.shape[0]))
    array = _to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        rgb = array[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        array = np.rint(rgb).astype(np.uint8)
    return np.ascontiguousarray(array)


def _tensor_to_rgb(tensor: object) -> np.ndarray:
    array = tensor.detach().cpu().float().numpy()  # type: ignore[attr-defined]
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise CamwidgetError(
            f"an image tensor must be (3, H, W) or (1, 3, H, W); got {tuple(array.shape)}"
        )
    return _array_to_rgb(_stretch(np.moveaxis(array, 0, -1)))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise CamwidgetError("the image array contains NaN or infinite values")
        if array.min() >= 0.0 and array.max() <= 1.0:
            return np.rint(array * 255.0).astype(np.uint8)
        return _stretch(array)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() >= 0 and array.max() <= 255:
            return array.astype(np.uint8)
        if array.min() >= 0 and array.max() <= 65535:
            return np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)
        return _stretch(array)
    raise CamwidgetError(f"cannot read an image array of dtype {array.dtype}")


def _stretch(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    scaled = (array.astype(np.float64) - low) / (high - low if high > low else 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)
