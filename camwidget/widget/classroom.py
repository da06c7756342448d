"""The code-free app for a class (``camwidget app``): each student's page gets a panel of
its own, and every panel in the server's process explains with one copy of the model's
weights (:func:`camwidget.sharing.shared_view`).

The app's settings come from the environment, as the command sets them:
``CAMWIDGET_MODEL`` (a spec, see :mod:`camwidget.sources`), ``CAMWIDGET_RANDOM_WEIGHTS``
("1": torchvision's and timm's models untrained), ``CAMWIDGET_SAMPLE`` (the first photo),
``CAMWIDGET_IMAGES`` (a folder of photos on offer), ``CAMWIDGET_LABELS`` (a text file of
class names, one a line, for a model that carries none), ``CAMWIDGET_MAX_UPLOAD_MB`` and
``CAMWIDGET_SLOW_JOBS`` (batched work running at once in the process).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets

from .. import memory, samples, sources, worker
from ..errors import CamwidgetError
from ..sharing import shared_view
from .panel import CAMWidget

#: Files offered from ``--images``.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Settings:
    """What the app serves (see the module's docstring for where each comes from)."""

    model: str = "efficientnet_lite0"
    pretrained: bool = True
    sample: str = "chelsea"
    images: str | None = None
    labels: str | None = None
    max_upload_mb: float = 20.0
    slow_jobs: int | None = worker.SERVER_SLOTS

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ.get
        slow = env("CAMWIDGET_SLOW_JOBS", str(worker.SERVER_SLOTS))
        return cls(
            model=env("CAMWIDGET_MODEL", cls.model),
            pretrained=env("CAMWIDGET_RANDOM_WEIGHTS", "") != "1",
            sample=env("CAMWIDGET_SAMPLE", cls.sample),
            images=env("CAMWIDGET_IMAGES") or None,
            labels=env("CAMWIDGET_LABELS") or None,
            max_upload_mb=float(env("CAMWIDGET_MAX_UPLOAD_MB", cls.max_upload_mb)),
            slow_jobs=int(slow) if int(slow) > 0 else None,
        )

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables the app reads."""
        return {
            "CAMWIDGET_MODEL": self.model,
            "CAMWIDGET_RANDOM_WEIGHTS": "" if self.pretrained else "1",
            "CAMWIDGET_SAMPLE": self.sample,
            "CAMWIDGET_IMAGES": self.images or "",
            "CAMWIDGET_LABELS": self.labels or "",
            "CAMWIDGET_MAX_UPLOAD_MB": str(self.max_upload_mb),
            "CAMWIDGET_SLOW_JOBS": str(self.slow_jobs or 0),
        }

    def class_names(self) -> list[str] | None:
        """The class names of ``--labels``, one a line (blank lines left out), or None."""
        if not self.labels:
            return None
        try:
            lines = Path(self.labels).expanduser().read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise CamwidgetError(f"--labels {self.labels}: cannot read it ({error})") from None
        return [line.strip() for line in lines if line.strip()] or None

    def photos(self) -> dict[str, object]:
        """The photos on offer, by name: the sample, then the folder's image files."""
        found: dict[str, object] = {self.sample: self.sample}
        if self.images:
            folder = Path(self.images).expanduser()
            if not folder.is_dir():
                raise CamwidgetError(f"--images {self.images}: no such folder")
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in PHOTO_SUFFIXES:
                    found[path.name] = path
        return found


_loading = threading.Lock()


def _source(model: str, pretrained: bool) -> sources.Source:
    """The model, loaded once per process by whoever asks first (the others wait)."""
    with _loading:
        return _loaded(model, pretrained)


@functools.lru_cache(maxsize=4)
def _loaded(model: str, pretrained: bool) -> sources.Source:
    return sources.load(model, pretrained)


def student_app(settings: Settings | None = None) -> tuple[widgets.Widget, CAMWidget]:
    """One student's page: a photo list (where there is more than one photo) over a
    panel of their own, in a box; and the panel (:func:`leave` when the student has left)."""
    settings = settings or Settings.from_environment()
    worker.BATCHED_WORK.limit = settings.slow_jobs
    source = _source(settings.model, settings.pretrained)
    photos = settings.photos()
    panel = CAMWidget(
        shared_view(source.model),
        _photo(photos[settings.sample]),
        preprocess=source.preprocess,
        labels=settings.class_names() or source.labels,
    )
    panel.max_upload_bytes = round(settings.max_upload_mb * 2**20)
    if len(photos) == 1:
        return widgets.VBox([panel]), panel  # shown as a widget: no static picture made
    chooser = widgets.Dropdown(options=list(photos), description="photo")

    def chosen(change: dict) -> None:
        panel.set_image(_photo(photos[change["new"]]), background=True)

    chooser.observe(chosen, "value")
    return widgets.VBox([chooser, panel]), panel


def leave(panel: CAMWidget) -> None:
    """A student has left: close their panel and hand the memory it held back to the
    system (the process keeps freed memory for the next pass otherwise)."""
    panel.close()
    memory.give_back()


def _photo(photo: object) -> object:
    return samples.load(photo) if isinstance(photo, str) else photo
