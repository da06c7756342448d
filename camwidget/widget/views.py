"""One overlay of the panel: its own layer and class, what it shows, and its widgets."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from functools import partial

import ipywidgets as widgets
import numpy as np
from PIL import Image
from torch import Tensor
from traitlets import Any, HasTraits, Unicode

from .. import methods, render
from ..explainer import Explainer, Explanation, PreparedImage, Progress


class View(HasTraits):
    """An overlay of one (layer, target) on the photo at display size.

    ``target`` is the pick (a class index, or a target object such as a detection's
    box); ``explanation`` is what it shows; ``rgb`` the photo, ``heat`` the heatmap,
    ``region`` the explained region's mask (if any) and ``frame`` the picture shown, all
    at display size; ``image``, ``caption`` and the colour ``legend`` (a colorbar and
    what its ends mean) are its widgets.
    """

    layer = Unicode()
    target = Any(0)

    def __init__(self, display_size: int, css_class: str) -> None:
        super().__init__()
        self.image = widgets.Image(
            format="jpeg", layout=widgets.Layout(max_width=f"{display_size}px", width="auto")
        )
        self.image.add_class(css_class)
        self.caption = widgets.HTML()
        self.caption.add_class("camwidget-caption")
        self.bar = widgets.Image(format="png", layout=widgets.Layout(width="256px"))
        self.bar_text = widgets.HTML()
        self.legend = widgets.HBox([self.bar, self.bar_text])
        self.legend.add_class("camwidget-legend")
        self.explanation: Explanation | None = None
        self.rgb: np.ndarray | None = None
        self.heat: np.ndarray | None = None
        self.region: np.ndarray | None = None
        self.frame: np.ndarray | None = None
        self.zero: float | None = None  # where 0 lies on the legend, for a signed map
        self.meaning = ""  # what the legend's colours mean, in words
        self.signed = False  # a pixel-level map shown signed (``heat`` in [-1, 1])
        self.partial: str | None = None  # what a map still being made is, while on show
        self._bar_key: tuple | None = None

    def request(
        self,
        explainer: Explainer,
        image: PreparedImage,
        method: str,
        target: object,
        progress: Progress | None = None,
        preview: Callable[[str, Tensor, float], None] | None = None,
    ) -> tuple[Explanation, list[str]]:
        """Explain ``target`` (what this view's pick means) at this view's layer with
        ``method`` (or its fallback where it does not apply): the explanation and remarks
        in words. Changes nothing on show (it may run in the panel's worker), except
        through ``preview(layer, partial map, fraction)``."""
        resolved = explainer.resolve(method, self.layer, target, fallback=True)
        shown = None if preview is None else partial(preview, resolved.layer)
        e = explainer.explain(
            image,
            resolved.layer,
            resolved.target,
            resolved.method,
            progress=progress,
            preview=shown,
        )
        remarks = [remark for remark in (resolved.note, e.message) if remark]
        if methods.get(e.method).class_agnostic:
            remarks.append(f"{e.title} is class-agnostic: its map is the same for every class")
        return e, remarks

    def show(self, e: Explanation, rgb: np.ndarray, positive_only: bool = False) -> None:
        """Show ``e`` over ``rgb`` (the photo at display size); a pixel-level map is shown
        signed unless ``positive_only``. :meth:`paint` draws it."""
        self.explanation, self.rgb, self.partial = e, rgb, None
        self.signed = methods.get(e.method).pixel_level and not positive_only
        if self.signed:
            self.heat = render.stretch_signed(e.heatmap_signed_at(rgb.shape[:2]))
        elif methods.get(e.method).pixel_level:  # a few bright pixels must not hide the rest
            self.heat = render.stretch_signed(e.heatmap_at(rgb.shape[:2]))
        else:
            self.heat = e.heatmap_at(rgb.shape[:2])
        self.region = None
        if e.region is not None:
            self.region = render.upsample(e.region.astype(np.float32), rgb.shape[:2]) >= 0.5
        self.caption.value = f"{caption(e)} · {e.title} at <code>{html.escape(e.layer)}</code>"
        self.zero, self.meaning = e.legend(self.signed)
        self.bar_text.value = f"<small>{html.escape(self.meaning)}</small>"

    def show_partial(self, raw: np.ndarray, rgb: np.ndarray, text: str) -> None:
        """Show a map still being made (``raw``, rectified, at feature resolution) over
        ``rgb``, with ``text`` as its caption (e.g. "Score-CAM · partial: 35 %")."""
        self.rgb, self.signed, self.zero, self.partial = rgb, False, None, text
        self.heat = render.normalise(render.upsample(raw, rgb.shape[:2]))
        self.caption.value = f"<i>{html.escape(text)}</i>"
        self.meaning = "0 (no evidence) → high evidence (so far)"
        self.bar_text.value = f"<small>{self.meaning}</small>"

    def paint(self, colormap: str, alpha: float, threshold: float) -> None:
        """Blend the heatmap over the photo, outline the explained region or box, and
        show it."""
        if self.signed:  # its own diverging colormap, centred on 0
            colormap = render.DIVERGING
            frame = render.blend_signed(self.rgb, self.heat, alpha, threshold)
        else:
            frame = render.blend(self.rgb, self.heat, colormap, alpha, threshold)
        if self.region is not None:
            frame = render.outline(frame, self.region)
        whole = self.explanation if self.partial is None else None  # a partial map: no box
        if whole is not None and whole.box is not None:
            scale = self.rgb.shape[1] / whole.size[1]
            frame = render.draw_box(frame, tuple(v * scale for v in whole.box))
        self.frame = frame
        self.image.value = render.encode(frame, "jpeg")
        if self._bar_key != (colormap, self.zero):  # a colormap change costs no model pass
            self._bar_key = (colormap, self.zero)
            self.bar.value = render.encode(render.legend(colormap, zero=self.zero), "png")


def caption(e: Explanation, detail: bool = True) -> str:
    """What ``e`` explains, in HTML: the label (bold, with ``detail``), a class's index,
    and with ``detail`` its probability."""
    label = html.escape(e.label, quote=False)
    text = f"<b>{label}</b>" if detail else label
    if isinstance(e.target, int):
        text += f" ({e.target})"
    if detail and e.probability is not None:
        text += f" · p = {e.probability:.3f}"
    return text


def display_frame(rgb: np.ndarray, display_size: int) -> np.ndarray:
    """The image resized so that its long side is ``display_size`` pixels (Lanczos
    when shrinking, bilinear when enlarging, as the heatmaps are)."""
    height, width = rgb.shape[:2]
    scale = display_size / max(height, width)
    if scale == 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if scale > 1:
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    shrunk = Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(shrunk)


def status_line(
    e: Explanation,
    image: PreparedImage,
    look: tuple[str, float, float],
    timings: Mapping[str, float],
    running: str | None = None,
) -> str:
    """The panel's status in HTML: the work that runs, if any (``running``), then what
    is shown: the image's size and notes, the layer, the target, the method, the
    (colormap, opacity, threshold) ``look``, and the milliseconds of the last update."""
    height, width = image.size
    shown = look_text(look)
    notes = "".join(f" ({html.escape(note)})" for note in image.notes)
    work = f"<b>{html.escape(running)} running</b> · showing " if running else ""
    t = {"forward": 0.0, "backward": 0.0, "render": 0.0, **timings}
    return (
        f"{work}<b>{width}×{height}</b> px{notes} · <code>{html.escape(e.layer)}</code> · "
        f"{caption(e, detail=False)} · {e.title} · {shown} <span style='color:#666'>— forward "
        f"{t['forward']:.0f} ms · backward {t['backward']:.0f} ms · render "
        f"{t['render']:.0f} ms</span>"
    )


def look_text(look: tuple[str, float, float]) -> str:
    """The (colormap, opacity, threshold) ``look`` in words, e.g. "magma · opacity 0.50"."""
    colormap, alpha, threshold = look
    shown = f"{html.escape(colormap)} · opacity {alpha:.2f}"
    return shown + (f" · threshold {threshold:.2f}" if threshold > 0 else "")
