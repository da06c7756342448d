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
from ..errors import CamwidgetError
from ..explainer import Explainer, Explanation, PreparedImage, Progress
from ..framing import Frame
from .styles import filter_holder, look_filters, look_rule, unique_class


class View(HasTraits):
    """An overlay of one (layer, target) on the photo at display size.

    ``target`` is the pick (a class index, or a target object such as a detection's
    box); ``explanation`` is what it shows; ``rgb`` the photo, ``heat`` the heatmap,
    ``region`` the explained region's mask (if any) and ``frame`` the picture shown, all
    at display size; ``image`` (the ``photo``, ``map`` and ``marks`` images stacked,
    the map coloured by the ``colours`` filter at the ``sheet``'s opacity), ``caption``
    and the colour ``legend`` (a colorbar and what its ends mean) are its widgets.
    """

    layer = Unicode()
    target = Any(0)

    def __init__(self, display_size: int, css_class: str, compose: str = "page") -> None:
        super().__init__()
        if compose not in ("page", "kernel"):
            raise CamwidgetError(f"compose must be 'page' or 'kernel'; got {compose!r}")
        self.compose = compose
        self.photo, self.map, self.marks = (
            widgets.Image(format=f, layout=widgets.Layout(grid_area="1 / 1", margin="0"))
            for f in ("jpeg", "png", "png")
        )
        self.photo.add_class("camwidget-photo")
        self.map.add_class("camwidget-map")
        self.marks.add_class("camwidget-marks")
        self.marks.layout.display = "none"
        self.name = unique_class("camwidget-view")
        self.sheet = widgets.HTML(layout=widgets.Layout(display="none"))  # the opacity
        self.colours = filter_holder()  # the SVG filter that colours the map
        self.image = widgets.GridBox(  # the photo, the map and the marks, stacked
            [self.photo, self.map, self.marks, self.sheet, self.colours],
            layout=widgets.Layout(max_width=f"{display_size}px", justify_items="flex-start"),
        )
        self.image.add_class(css_class)
        self.image.add_class(self.name)
        self.caption = widgets.HTML()
        self.caption.add_class("camwidget-caption")
        self.bar = widgets.Image(format="png", layout=widgets.Layout(width="256px"))
        self.bar.add_class("camwidget-bar")
        self.bar_text = widgets.HTML()
        self.legend = widgets.HBox([self.bar, self.bar_text])
        self.legend.add_class("camwidget-legend")
        self.legend.add_class(self.name)  # the bar takes the map's colours
        self.explanation: Explanation | None = None
        self.rgb: np.ndarray | None = None
        self.heat: np.ndarray | None = None
        self.region: np.ndarray | None = None
        self.zero: float | None = None  # where 0 lies on the legend, for a signed map
        self.meaning = ""  # what the legend's colours mean, in words
        self.signed = False  # a pixel-level map shown signed (``heat`` in [-1, 1])
        self.partial: str | None = None  # what a map still being made is, while on show
        self._base: np.ndarray | None = None  # the photo as shown under the map
        self._grey: tuple[np.ndarray, np.ndarray] | None = None  # (photo, its grey)
        self._levels: np.ndarray | None = None  # the map in 256 levels
        self._drawn: np.ndarray | None = None  # where the marks are (outline, box)
        self._veil: np.ndarray | None = None  # the photo the model did not see (cropped)
        self._veils: tuple[np.ndarray, Frame, np.ndarray] | None = None  # (rgb, frame, veil)
        self._look: tuple[str, float, float] | None = None  # (colormap, alpha, threshold)
        self._sent: dict[str, tuple] = {}  # what each image (by model id) and the filter hold
        self._frame: tuple[tuple, np.ndarray] | None = None

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
        self.signed = methods.get(e.method).signed and not positive_only
        if self.signed:
            self.heat = render.stretch_signed(e.heatmap_signed_at(rgb.shape[:2]))
        elif methods.get(e.method).signed:  # a few bright pixels must not hide the rest
            self.heat = render.stretch_signed(e.heatmap_at(rgb.shape[:2]))
        else:
            self.heat = e.heatmap_at(rgb.shape[:2])
        self.region = None
        if e.region is not None:
            self.region = render.upsample(e.region.astype(np.float32), rgb.shape[:2]) >= 0.5
        self._veil = self._veil_of(rgb, e.frame)
        self.caption.value = f"{caption(e)} · {e.title} at <code>{html.escape(e.layer)}</code>"
        self.zero, self.meaning = e.legend(self.signed)
        self.bar_text.value = f"<small>{html.escape(self.meaning)}</small>"
        self._layers(e.box)

    def show_partial(
        self, raw: np.ndarray, rgb: np.ndarray, text: str, frame: Frame | None = None
    ) -> None:
        """Show a map still being made (``raw``, rectified, at feature resolution) over
        ``rgb`` (where the model saw its ``frame``), with ``text`` as its caption (e.g.
        "Score-CAM · partial: 35 %")."""
        self.rgb, self.signed, self.zero, self.partial = rgb, False, None, text
        self.heat = render.normalise(render.upsample(raw, rgb.shape[:2], frame))
        self._veil = self._veil_of(rgb, frame)
        if self._veil is not None:
            self.heat[self._veil] = 0.0
        self.region = None
        self.caption.value = f"<i>{html.escape(text)}</i>"
        self.meaning = "0 (no evidence) → high evidence (so far)"
        self.bar_text.value = f"<small>{self.meaning}</small>"
        self._layers(None)

    def _layers(self, box: tuple[float, ...] | None) -> None:
        """The photo (grey under a signed map), the map's levels and the marks (the
        region's outline, the box) of what is shown now."""
        if self.signed and (self._grey is None or self._grey[0] is not self.rgb):
            self._grey = (self.rgb, render.greyed(self.rgb))  # kept: sent once
        self._base = self._grey[1] if self.signed else self.rgb
        self._levels = render.levels(self.heat, self.signed)
        self._drawn = None
        if self.region is not None or box is not None:
            drawn = np.zeros_like(self.rgb)
            if self.region is not None:
                drawn = render.outline(drawn, self.region)
            if box is not None:
                scale = self.rgb.shape[1] / self.explanation.size[1]
                drawn = render.draw_box(drawn, tuple(v * scale for v in box))
            self._drawn = drawn.any(axis=2)

    @property
    def colormap(self) -> str:
        """The colormap the map is drawn in: a signed map has its own, centred on 0."""
        return render.DIVERGING if self.signed else self._look[0]

    @property
    def frame(self) -> np.ndarray | None:
        """uint8 (H, W, 3): the picture the page shows, composed here (the photo, the map
        over it at the opacity, the marks on top); None before anything is shown."""
        if self._look is None or self._base is None:
            return None
        _, alpha, threshold = self._look
        key = (self._base, self._levels, self._drawn, self._veil, self.colormap, alpha, threshold)
        if self._frame is None or not _same(self._frame[0], key):
            colours = render.palette(self.colormap, threshold, self.signed)
            frame = render.veiled(
                render.compose(self._base, self._levels, colours, alpha), self._veil
            )
            if self._drawn is not None:
                frame[self._drawn] = 255
            self._frame = (key, frame)
        return self._frame[1]

    def paint(self, colormap: str, alpha: float, threshold: float) -> None:
        """Send the page what changed, and nothing else: the photo (once per image), the
        map's levels (a grey PNG, once per map), the marks, and the look as markup (no
        image): the colormap and threshold as SVG filters that colour and cut the levels,
        the opacity as a style rule. The legend is a grey ramp the page tints, or a new
        colorbar where it carries a tick at 0. With ``compose="kernel"`` (a front end
        that drops the markup), the whole frame as a JPEG instead."""
        self._look = (colormap, alpha, threshold)
        if self.compose == "kernel":
            self.photo.value = render.encode(self.frame, "jpeg")
            self.map.layout.display = "none"
        else:
            self._send_layers()
        ticked = self.compose == "kernel" or self.zero is not None  # else the page tints a ramp
        colormap, zero = (self.colormap, self.zero) if ticked else ("gray", None)
        self._send(self.bar, (colormap, zero), partial(_legend_png, colormap, zero))
        self.sheet.value = look_rule(self.name, alpha, self.signed, ticked)

    def _send_layers(self) -> None:
        threshold = self._look[2]
        self._send(self.photo, (self._base,), lambda: render.encode(self._base, "jpeg"))
        self._send(self.map, (self._levels,), lambda: render.encode(self._levels, "png"))
        marked = self._drawn is not None or self._veil is not None
        self.marks.layout.display = None if marked else "none"
        if marked:
            key = (self._drawn, self._veil)
            self._send(self.marks, key, lambda: render.encode(self._marks(), "png"))
        look = (self.colormap, threshold, self.signed)
        if self._sent.get("colours") != look:  # the filters' tables: a few kilobytes
            self._sent["colours"] = look
            self.colours.value = look_filters(self.name, *look)

    def _veil_of(self, rgb: np.ndarray, frame: Frame | None) -> np.ndarray | None:
        """bool (H, W): the part of ``rgb`` outside ``frame``; the same array while both
        stay (its marks are sent once)."""
        if frame is None:
            return None
        if self._veils is None or self._veils[0] is not rgb or self._veils[1] != frame:
            self._veils = (rgb, frame, ~render.inside(rgb.shape[:2], frame))
        return self._veils[2]

    def _marks(self) -> np.ndarray:
        """RGBA (H, W, 4), the layer over the map: the marks in white, the photo the
        model did not see veiled in black."""
        shape = (self._drawn if self._drawn is not None else self._veil).shape
        marks = np.zeros((*shape, 4), dtype=np.uint8)
        if self._veil is not None:
            marks[self._veil, 3] = round(255 * (1.0 - render.VEIL))
        if self._drawn is not None:
            marks[self._drawn] = 255
        return marks

    def _send(self, image: widgets.Image, key: tuple, encoded: Callable[[], bytes]) -> None:
        """Give ``image`` new bytes, made by ``encoded``, only when ``key`` changed (its
        arrays kept, compared by identity)."""
        if not _same(self._sent.get(image.model_id), key):
            self._sent[image.model_id] = key
            image.value = encoded()


def _legend_png(colormap: str, zero: float | None) -> bytes:
    return render.encode(render.legend(colormap, zero=zero), "png")


def _same(kept: tuple | None, key: tuple) -> bool:
    """Whether ``key`` equals ``kept``: arrays the same objects, the rest equal."""
    return kept is not None and all(
        a is b if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b
        for a, b in zip(kept, key, strict=True)
    )


def caption(e: Explanation, detail: bool = True) -> str:
    """What ``e`` explains, in HTML: the label (bold, with ``detail``), a class's index,
    and with ``detail`` its probability."""
    label = html.escape(e.label, quote=False)
    text = f"<b>{label}</b>" if detail else label
    text += e.index_text
    if detail and e.probability is not None:
        text += f" · p = {e.probability:.3f}"
    return text


#: From this enlargement on, an image's pixels are shown as squares (a 28×28 digit).
PIXELS_SHOWN = 4


def display_frame(rgb: np.ndarray, display_size: int) -> np.ndarray:
    """The image resized so that its long side is ``display_size`` pixels: Lanczos when
    shrinking, bilinear when enlarging (as the heatmaps are), and nearest-neighbour when
    enlarging :data:`PIXELS_SHOWN` times or more, so that a tiny image stays sharp."""
    height, width = rgb.shape[:2]
    scale = display_size / max(height, width)
    if scale == 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if scale > 1:
        kind = Image.Resampling.NEAREST if scale >= PIXELS_SHOWN else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(rgb).resize(size, kind))
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
