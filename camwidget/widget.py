"""CAMWidget: the live panel. It holds no math: each change runs the cheapest engine call.

colormap / alpha / threshold -> re-blend the cached heatmap; layer / method -> cached
maps; target -> one partial backward; a new image -> one forward and one backward.
The live view is an ``ipywidgets.Image`` fed with JPEG bytes; the ipympl inspection
view (zoom, pan, value under the cursor) is drawn only while it is open.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image
from traitlets import Bool, Float, Int, TraitError, Unicode, observe, validate

from . import methods, render
from .errors import CamwidgetError
from .explainer import Explainer, Explanation, PreparedImage
from .labels import resolve_target


class ClassPicker(widgets.VBox):
    """Top-k quick picks plus a search box over all class names; ``target`` is the pick."""

    target = Int(0)

    def __init__(
        self, labels: list[str], on_error: Callable[[str], None], *, quick: str, description: str
    ) -> None:
        self._labels = labels
        self._on_error = on_error
        if quick == "radio":
            self.quick = widgets.RadioButtons(options=[], layout=widgets.Layout(width="auto"))
        else:
            self.quick = widgets.Dropdown(options=[], layout=widgets.Layout(width="260px"))
        self.quick.description = description
        self.search = widgets.Combobox(
            options=labels,
            placeholder="search all classes…",
            ensure_option=False,
            continuous_update=False,
            layout=widgets.Layout(width="260px"),
        )
        self.quick.observe(self._quick_picked, "value")
        self.search.observe(self._searched, "value")
        super().__init__(children=[self.quick, self.search])

    def set_top(self, top: Sequence[tuple[int, str, float]]) -> None:
        """Offer these (index, label, probability) as quick picks."""
        with self.hold_sync():
            self.quick.options = [(f"{label} · {p:.1%}", i) for i, label, p in top]
            self._show(self.target)

    @observe("target")
    def _target_changed(self, change: Mapping) -> None:
        self._show(change["new"])

    def _show(self, target: int) -> None:
        values = [value for _, value in self.quick.options]
        self.quick.value = target if target in values else None

    def _quick_picked(self, change: Mapping) -> None:
        if change["new"] is not None:
            self.target = change["new"]

    def _searched(self, change: Mapping) -> None:
        text = change["new"].strip()
        if not text:
            return
        try:
            self.target = resolve_target(text, self._labels, len(self._labels))
        except CamwidgetError as error:
            self._on_error(str(error))


class _View:
    """One overlay in the panel (the main one, or the compare one)."""

    def __init__(self, display_size: int) -> None:
        self.image = widgets.Image(
            format="jpeg", layout=widgets.Layout(max_width=f"{display_size}px", width="auto")
        )
        self.caption = widgets.HTML()
        self.explanation: Explanation | None = None
        self.frame_heat: np.ndarray | None = None


class CAMWidget(widgets.VBox):
    """A live class activation map explorer for a PyTorch image classifier.

    Set ``layer``, ``target``, ``method``, ``colormap``, ``alpha`` or ``threshold``
    (or use the controls) and the overlay re-renders. ``compare`` shows a second view
    with its own ``compare_target`` and ``compare_layer``.
    """

    layer = Unicode()
    target = Int(0)
    method = Unicode("gradcam")
    colormap = Unicode("jet")
    alpha = Float(0.5)
    threshold = Float(0.0)
    compare = Bool(False)
    compare_target = Int(0)
    compare_layer = Unicode()

    def __init__(
        self,
        model: torch.nn.Module,
        image: object = None,
        *,
        preprocess: Callable | None = None,
        labels: Sequence[str] | None = None,
        layer: str | None = None,
        target: int | None = None,
        method: str = "gradcam",
        colormap: str = "jet",
        alpha: float = 0.5,
        threshold: float = 0.0,
        device: str | torch.device | None = None,
        display_size: int = 448,
        top_k: int = 5,
    ) -> None:
        self.explainer = Explainer(model, preprocess=preprocess, labels=labels, device=device)
        if image is not None:  # the catalogue comes from this image, not a 224 probe
            image = self.explainer.prepare(image)
            self.explainer.predict(image, k=1)
        self.display_size = display_size
        self.top_k = top_k
        #: Milliseconds of the last update: forward, backward, render.
        self.timings: dict[str, float] = {}
        self._image: PreparedImage | None = None
        self._frame_rgb: np.ndarray | None = None
        self._suspended = False
        self._inspector: _Inspector | None = None
        self._views = (_View(display_size), _View(display_size))
        self._build_controls()
        super().__init__(children=self._layout(), layout=widgets.Layout(width="100%"))
        self.add_class("camwidget")
        self._views[0].image.add_class("camwidget-overlay")
        self._views[1].image.add_class("camwidget-compare")
        for control, name in (
            (self._status, "status"),
            (self._layer_control, "layer"),
            (self._method_control, "method"),
            (self._colormap_control, "colormap"),
            (self._alpha_control, "opacity"),
            (self._threshold_control, "threshold"),
            (self._picker, "classes"),
            (self._upload, "upload"),
        ):
            control.add_class(f"camwidget-{name}")
        self._messages.add_class("camwidget-messages")
        with self._quiet():
            self.layer = self.compare_layer = layer or self.explainer.default_layer
            self.method = method
            self.colormap = colormap
            self.alpha = alpha
            self.threshold = threshold
        self._sync_controls()
        if image is None:
            self._status.value = (
                "<i>No image yet: upload one or call <code>set_image(...)</code>.</i>"
            )
        else:
            self.set_image(image, target=target)

    # ----------------------------------------------------------------- public

    @property
    def heatmap(self) -> np.ndarray:
        """float32 (H, W) in [0, 1]: the current map at the image's own resolution."""
        return self._require().heatmap

    @property
    def overlay(self) -> np.ndarray:
        """uint8 (H, W, 3): the current overlay at the image's own resolution."""
        explanation = self._require()
        return render.blend(
            self._image.rgb, explanation.heatmap, self.colormap, self.alpha, self.threshold
        )

    @property
    def explanation(self) -> Explanation | None:
        """What the main view shows now, or None before any image."""
        return self._views[0].explanation

    def set_image(self, image: object, target: int | None = None) -> None:
        """Show a new image (path, bytes, PIL, HWC array or CHW tensor) and explain its
        top-1 class (or ``target``). A bad image is reported and the panel keeps the
        previous one."""
        try:
            self._load(image, target)
        except CamwidgetError as error:
            self._say(str(error), error=True)
            raise

    def save(self, path: str | Path) -> Path:
        """Write the current overlay (full resolution) to ``path`` (PNG, JPEG, …)."""
        path = Path(path)
        Image.fromarray(self.overlay).save(path)
        return path

    def close(self) -> None:
        """Close every child widget and figure and drop the cached passes. The model
        holds no hooks of ours at any time outside a forward pass."""
        if self._inspector is not None:
            self._inspector.close()
            self._inspector = None
        self.explainer.clear()
        for child in self._all_controls():
            child.close()
        super().close()

    # ----------------------------------------------------------------- controls

    def _build_controls(self) -> None:
        labels = [self.explainer.label(i) for i in range(self.explainer.num_classes)]
        self._picker = ClassPicker(labels, self._say_error, quick="radio", description="")
        self._compare_picker = ClassPicker(
            labels, self._say_error, quick="dropdown", description="class"
        )
        self._layer_control = widgets.Dropdown(description="layer", layout=_wide(360))
        self._compare_layer_control = widgets.Dropdown(description="layer", layout=_wide(360))
        self._method_control = widgets.Dropdown(description="method", layout=_wide(220))
        others = [name for name in sorted(_all_colormaps()) if name not in render.COLORMAPS]
        self._colormap_control = widgets.Dropdown(
            options=[*render.COLORMAPS, *others], description="colormap", layout=_wide(220)
        )
        slider = {"min": 0.0, "max": 1.0, "step": 0.05, "readout_format": ".2f"}
        self._alpha_control = widgets.FloatSlider(description="opacity", **slider)
        self._threshold_control = widgets.FloatSlider(description="threshold", **slider)
        self._compare_control = widgets.Checkbox(description="compare", indent=False)
        self._upload = widgets.FileUpload(accept="image/*", multiple=False, description="image")
        self._save_button = widgets.Button(description="save", icon="download")
        self._inspect_control = widgets.ToggleButton(description="inspect", icon="search")
        self._status = widgets.HTML(layout=widgets.Layout(margin="0 0 4px 0"))
        self._progress = widgets.IntProgress(
            description="Score-CAM", layout=widgets.Layout(display="none")
        )
        self.explainer.progress = self._show_progress
        self._messages = widgets.HTML()
        self._inspect_box = widgets.Box()
        self._compare_box = widgets.VBox(
            [
                self._views[1].image,
                self._views[1].caption,
                self._compare_picker,
                self._compare_layer_control,
            ],
            layout=widgets.Layout(display="none"),
        )
        self._bind(self._layer_control, "layer")
        self._bind(self._compare_layer_control, "compare_layer")
        self._bind(self._method_control, "method")
        self._bind(self._colormap_control, "colormap")
        self._bind(self._alpha_control, "alpha")
        self._bind(self._threshold_control, "threshold")
        self._bind(self._compare_control, "compare")
        self._bind(self._picker, "target", name="target")
        self._bind(self._compare_picker, "compare_target", name="target")
        self._upload.observe(self._uploaded, "value")
        self._save_button.on_click(self._save_clicked)
        self._inspect_control.observe(self._inspect_toggled, "value")

    def _layout(self) -> list[widgets.Widget]:
        main = widgets.VBox([self._views[0].image, self._views[0].caption])
        predictions = widgets.VBox(
            [widgets.HTML("<b>top predictions</b> (click to explain)"), self._picker]
        )
        return [
            self._status,
            widgets.HBox(
                [main, self._compare_box, predictions],
                layout=widgets.Layout(align_items="flex-start"),
            ),
            widgets.HBox([self._layer_control, self._method_control, self._colormap_control]),
            widgets.HBox([self._alpha_control, self._threshold_control]),
            widgets.HBox(
                [self._compare_control, self._upload, self._save_button, self._inspect_control]
            ),
            self._progress,
            self._messages,
            self._inspect_box,
        ]

    def _all_controls(self) -> list[widgets.Widget]:
        found, stack = [], list(self.children)
        while stack:
            child = stack.pop()
            found.append(child)
            stack.extend(getattr(child, "children", ()))
        return found

    def _bind(self, control: widgets.Widget, trait: str, name: str = "value") -> None:
        """A control's change sets the trait (errors go to the panel, not a traceback)."""

        def changed(change: Mapping) -> None:
            if self._suspended or change["new"] is None or change["new"] == getattr(self, trait):
                return
            try:
                setattr(self, trait, change["new"])
            except (TraitError, CamwidgetError) as error:
                self._say_error(str(error))
                self._sync_controls()

        control.observe(changed, name)

    def _sync_controls(self) -> None:
        """Show the traits' values in the controls (without triggering updates)."""
        with self._quiet():
            layers = [(info.label, info.name) for info in self.explainer.layers]
            for control, value in (
                (self._layer_control, self.layer),
                (self._compare_layer_control, self.compare_layer),
            ):
                if list(control.options) != layers:
                    control.options = layers
                control.value = value
            info = self.explainer.layer(self.layer)
            offered = [(methods.TITLES[m], m) for m in methods.METHODS if m != "cam" or info.cam]
            if list(self._method_control.options) != offered:
                self._method_control.options = offered
            self._method_control.value = self.method
            self._method_control.tooltip = (
                None
                if info.cam
                else f"CAM is not offered at {self.layer}: CAM needs the layer to feed global "
                "average pooling and then the final fully connected layer"
                + _where_cam(self.explainer)
            )
            if self.colormap not in self._colormap_control.options:
                self._colormap_control.options = [*self._colormap_control.options, self.colormap]
            self._colormap_control.value = self.colormap
            self._alpha_control.value = self.alpha
            self._threshold_control.value = self.threshold
            self._compare_control.value = self.compare
            self._picker.target = self.target
            self._compare_picker.target = self.compare_target

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        previous, self._suspended = self._suspended, True
        try:
            yield
        finally:
            self._suspended = previous

    # ----------------------------------------------------------------- validation

    @validate("layer", "compare_layer")
    def _valid_layer(self, proposal: Mapping) -> str:
        try:
            return self.explainer.layer(proposal["value"]).name
        except CamwidgetError as error:
            raise TraitError(str(error)) from None

    @validate("method")
    def _valid_method(self, proposal: Mapping) -> str:
        try:
            self.explainer.check_method(proposal["value"], self.layer)
        except CamwidgetError as error:
            raise TraitError(str(error)) from None
        return proposal["value"]

    @validate("target", "compare_target")
    def _valid_target(self, proposal: Mapping) -> int:
        classes = self.explainer.num_classes
        if not 0 <= proposal["value"] < classes:
            raise TraitError(
                f"target {proposal['value']} is out of range: this model has {classes} "
                f"classes, indices 0 to {classes - 1}"
            )
        return proposal["value"]

    @validate("colormap")
    def _valid_colormap(self, proposal: Mapping) -> str:
        try:
            render.colormap_lut(proposal["value"])
        except CamwidgetError as error:
            raise TraitError(str(error)) from None
        return proposal["value"]

    @validate("alpha", "threshold")
    def _valid_fraction(self, proposal: Mapping) -> float:
        if not 0.0 <= proposal["value"] <= 1.0:
            raise TraitError(
                f"{proposal['trait'].name} must lie in [0, 1]; got {proposal['value']}"
            )
        return proposal["value"]

    # ----------------------------------------------------------------- updates

    @observe("colormap", "alpha", "threshold")
    def _look_changed(self, change: Mapping) -> None:
        self._update(change, explain=())

    @observe("layer")
    def _layer_changed(self, change: Mapping) -> None:
        switched = not self.explainer.layer(self.layer).cam and self.method == "cam"
        if switched:
            with self._quiet():
                self.method = "gradcam"
        self._update(change, explain=(0, 1) if switched else (0,))
        if switched and not self._suspended:
            self._say(f"CAM does not apply at {self.layer}: switched to Grad-CAM")

    @observe("target")
    def _target_changed(self, change: Mapping) -> None:
        self._update(change, explain=(0,))

    @observe("method")
    def _method_changed(self, change: Mapping) -> None:
        self._update(change, explain=(0, 1))

    @observe("compare_target", "compare_layer")
    def _compare_changed(self, change: Mapping) -> None:
        self._update(change, explain=(1,))

    @observe("compare")
    def _compare_toggled(self, change: Mapping) -> None:
        self._compare_box.layout.display = "flex" if self.compare else "none"
        self._update(change, explain=(1,))

    def _update(self, change: Mapping, explain: tuple[int, ...]) -> None:
        if self._suspended:
            return
        self._sync_controls()
        if self._image is None or (explain and not set(explain) & set(self._visible())):
            return
        try:
            self._messages.value = ""
            self._refresh(explain)
        except CamwidgetError as error:
            self._say_error(str(error))
        except Exception as error:  # the panel must survive whatever the model does
            self._say_error(f"unexpected error: {type(error).__name__}: {error}")

    def _visible(self) -> tuple[int, ...]:
        return (0, 1) if self.compare else (0,)

    def _refresh(self, explain: tuple[int, ...]) -> None:
        """Re-explain the views in ``explain`` (cheap where cached), then repaint."""
        self.explainer.timings.clear()
        for index in explain:
            if index in self._visible():
                self._explain_view(index)
        start = time.perf_counter()
        for index in self._visible():
            self._paint(index)
        self.timings = {
            "forward": self.explainer.timings.get("forward", 0.0),
            "backward": self.explainer.timings.get("backward", 0.0),
            "render": (time.perf_counter() - start) * 1000.0,
        }
        self._write_status()
        if self._inspector is not None:
            self._inspector.update(self)

    def _explain_view(self, index: int) -> None:
        view = self._views[index]
        layer, target = (
            (self.layer, self.target) if index == 0 else (self.compare_layer, self.compare_target)
        )
        method = self.method
        if method == "cam" and not self.explainer.layer(layer).cam:
            method = "gradcam"
        explanation = self.explainer.explain(self._image, layer, target, method)
        view.explanation = explanation
        view.frame_heat = explanation.heatmap_at(self._frame_rgb.shape[:2])
        title = methods.TITLES[explanation.method]
        view.caption.value = (
            f"<b>{html.escape(explanation.label)}</b> ({explanation.target}) · "
            f"p = {explanation.probability:.3f} · {title} at <code>{html.escape(layer)}</code>"
        )
        remarks = [r for r in (explanation.message,) if r]
        if explanation.method in methods.CLASS_AGNOSTIC:
            remarks.append(
                f"{methods.TITLES[explanation.method]} is class-agnostic: its map is the "
                "same for every class"
            )
        if method != self.method:
            remarks.append(f"CAM does not apply at {layer}: this view shows Grad-CAM")
        if remarks:
            self._say(" · ".join(remarks))

    def _paint(self, index: int) -> None:
        view = self._views[index]
        frame = render.blend(
            self._frame_rgb, view.frame_heat, self.colormap, self.alpha, self.threshold
        )
        view.image.value = render.encode(frame, "jpeg")

    def _write_status(self) -> None:
        height, width = self._image.size
        e = self._views[0].explanation
        t = self.timings
        look = f"{self.colormap} · opacity {self.alpha:.2f}"
        if self.threshold > 0:
            look += f" · threshold {self.threshold:.2f}"
        self._status.value = (
            f"<b>{width}×{height}</b> px · <code>{html.escape(e.layer)}</code> · "
            f"{html.escape(e.label, quote=False)} ({e.target}) · {methods.TITLES[e.method]} · "
            f"{look} <span style='color:#666'>— forward {t['forward']:.0f} ms · backward "
            f"{t['backward']:.0f} ms · render {t['render']:.0f} ms</span>"
        )

    def _load(self, image: object, target: int | None) -> None:
        prepared = self.explainer.prepare(image)
        top = self.explainer.predict(prepared, k=self.top_k)
        self._image = prepared
        self._frame_rgb = _frame(prepared.rgb, self.display_size)
        with self._quiet():
            self.layer = self.layer  # shapes may have changed; names stay
            self.target = top[0][0] if target is None else target
            self.compare_target = top[1][0] if len(top) > 1 else top[0][0]
        self._picker.set_top(top)
        self._compare_picker.set_top(top)
        self._sync_controls()
        forward = self.explainer.timings.get("forward", 0.0)
        self._messages.value = ""
        self._refresh((0, 1))
        self.timings["forward"] = forward
        self._write_status()
        if prepared.notes:
            self._say(" · ".join(prepared.notes))

    # ----------------------------------------------------------------- events

    def _uploaded(self, change: Mapping) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[0]
        self._upload.value = ()  # so that the same file can be uploaded again
        try:
            self._load(bytes(upload["content"]), None)
        except CamwidgetError as error:
            self._say_error(f"{upload.get('name', 'the upload')}: {error}")
        except Exception as error:
            self._say_error(f"unexpected error: {type(error).__name__}: {error}")

    def _save_clicked(self, button: widgets.Button) -> None:
        if self._image is None:
            self._say_error("nothing to save yet: load an image first")
            return
        e = self._views[0].explanation
        name = f"camwidget-{e.label}-{e.layer}-{e.method}.png".replace(" ", "_").replace("/", "_")
        try:
            self._say(f"saved {self.save(name).resolve()}")
        except OSError as error:
            self._say_error(f"could not save: {error}")

    def _inspect_toggled(self, change: Mapping) -> None:
        if change["new"]:
            self._inspector = _Inspector(self.display_size)
            self._inspect_box.children = [self._inspector.canvas]
            if self._image is not None:
                self._inspector.update(self)
        elif self._inspector is not None:
            self._inspect_box.children = []
            self._inspector.close()
            self._inspector = None

    # ----------------------------------------------------------------- messages

    def _show_progress(self, done: int, total: int) -> None:
        """Score-CAM's masked forwards, shown while they run (messages go out at once)."""
        self._progress.max = total
        self._progress.value = done
        self._progress.layout.display = "none" if done >= total else "flex"

    def _require(self) -> Explanation:
        explanation = self._views[0].explanation
        if explanation is None:
            raise CamwidgetError("no image yet: call set_image(...) or upload one")
        return explanation

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#555"
        self._messages.value = (
            f"<span style='color:{color}'>{html.escape(text, quote=False)}</span>"
        )

    def _say_error(self, text: str) -> None:
        self._say(text, error=True)


class _Inspector:
    """The ipympl view: zoom, pan, and the heatmap value under the cursor."""

    def __init__(self, display_size: int) -> None:
        from ipympl.backend_nbagg import Canvas, FigureManager
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(display_size / 80, display_size / 80), dpi=80)
        self.canvas = Canvas(self.figure)
        self.manager = FigureManager(self.canvas, 0)
        self.canvas.header_visible = False
        self.axes = self.figure.add_axes((0, 0, 1, 1))
        self.axes.set_axis_off()
        self.photo = None
        self.heat = None
        self.values: np.ndarray | None = None
        self.axes.format_coord = self._readout

    def update(self, panel: CAMWidget) -> None:
        """Show the panel's current image and heatmap (drawn when the browser asks)."""
        view = panel._views[0]
        rgb, heat = panel._frame_rgb, view.frame_heat
        self.values = heat
        if self.photo is None or self.photo.get_array().shape != rgb.shape:
            self.axes.clear()  # a new image size: new artists and a figure of its shape
            self.axes.set_axis_off()
            height, width = rgb.shape[:2]
            self.figure.set_size_inches(width / self.figure.dpi, height / self.figure.dpi)
            self.photo = self.axes.imshow(rgb)
            self.heat = self.axes.imshow(heat, cmap=panel.colormap, vmin=0.0, vmax=1.0)
        else:
            self.photo.set_data(rgb)
            self.heat.set_data(heat)
            self.heat.set_cmap(panel.colormap)
        self.heat.set_alpha(panel.alpha)
        self.canvas.draw_idle()

    def _readout(self, x: float, y: float) -> str:
        if self.values is None:
            return ""
        row, col = round(y), round(x)
        height, width = self.values.shape
        if 0 <= row < height and 0 <= col < width:
            return f"x={col} y={row}  heat={self.values[row, col]:.3f}"
        return ""

    def close(self) -> None:
        self.manager.toolbar.close()
        self.canvas.close()


def _frame(rgb: np.ndarray, display_size: int) -> np.ndarray:
    """The image resized so that its long side is ``display_size`` pixels."""
    height, width = rgb.shape[:2]
    scale = display_size / max(height, width)
    if scale == 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def _all_colormaps() -> list[str]:
    import matplotlib

    return list(matplotlib.colormaps)


def _where_cam(explainer: Explainer) -> str:
    where = [info.name for info in explainer.layers if info.cam]
    return f" (here: {', '.join(where)})" if where else " (no layer of this model does)"


def _wide(pixels: int) -> widgets.Layout:
    return widgets.Layout(width=f"{pixels}px")
