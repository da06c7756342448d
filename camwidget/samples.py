"""Sample photos that ship inside installed packages: nothing is downloaded.

``grace_hopper`` comes with matplotlib; ``chelsea`` (a cat), ``coffee`` (an espresso
cup), ``rocket`` and ``astronaut`` come with scikit-image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import CamwidgetError


def _grace_hopper() -> Image.Image:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return Image.open(path).convert("RGB")


def _skimage(name: str) -> Callable[[], Image.Image]:
    def read() -> Image.Image:
        try:
            import skimage.data
        except ImportError:
            raise CamwidgetError(
                f"the sample {name!r} comes with scikit-image: pip install scikit-image"
            ) from None
        return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")

    return read


_SAMPLES: dict[str, Callable[[], Image.Image]] = {
    "grace_hopper": _grace_hopper,
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "astronaut": _skimage("astronaut"),
}


def names() -> list[str]:
    """Names :func:`load` accepts."""
    return list(_SAMPLES)


def load(name: str) -> Image.Image:
    """The sample photo ``name`` as a PIL RGB image."""
    if name not in _SAMPLES:
        raise CamwidgetError(f"unknown sample {name!r}: choose one of {', '.join(_SAMPLES)}")
    return _SAMPLES[name]()


def composite(names: Sequence[str], height: int = 300) -> Image.Image:
    """The photos ``names`` side by side, each scaled to ``height`` pixels high.

    E.g. ``composite(["chelsea", "coffee"])``: a cat and an espresso in one picture.
    """
    if not names:
        raise CamwidgetError("composite needs at least one sample name")
    tiles = []
    for name in names:
        photo = load(name)
        width = max(1, round(photo.width * height / photo.height))
        tiles.append(photo.resize((width, height), Image.Resampling.LANCZOS))
    canvas = Image.new("RGB", (sum(tile.width for tile in tiles), height))
    left = 0
    for tile in tiles:
        canvas.paste(tile, (left, 0))
        left += tile.width
    return canvas


#: The labelled folder's classes (ImageNet names) and their photos: single photos, and
#: composites of the class's photo beside another (harder: two objects in one picture).
FOLDER_CLASSES: dict[str, list[tuple[str, ...]]] = {
    "Egyptian cat": [("chelsea",), ("chelsea", "coffee")],
    "espresso": [("coffee",), ("coffee", "rocket")],
    "military uniform": [("grace_hopper",)],
}


def labelled_folder(root: str | Path) -> Path:
    """Write a small labelled dataset under ``root``: one sub-folder per class (named
    after its ImageNet class), each photo as it is, turned by 90° and mirrored (15
    images). For lessons and tests of :func:`camwidget.explain_dataset`."""
    root = Path(root)
    for name, photos in FOLDER_CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for names_ in photos:
            photo = composite(list(names_))
            stem = "+".join(names_)
            photo.save(root / name / f"{stem}.jpg", quality=95)
            photo.rotate(90, expand=True).save(root / name / f"{stem}-turned.jpg", quality=95)
            photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / name / f"{stem}-m.png")
    return root
