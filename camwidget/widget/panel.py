"""CAMWidget: the live panel. It holds no math: each change runs the cheapest engine call.

colormap / alpha / threshold -> re-blend the cached heatmaps; layer / method -> cached
maps; class -> one partial backward; a new image -> one forward and one backward.
Each overlay is a :class:`View` with its own layer and class (the compare mode is a
second view); each trait has one control, bound both ways.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image
from traitlets import Any, Bool, Float, TraitError, Unicode, observe, validate

from .. import methods, render
from ..errors import CamwidgetError
from ..explainer import Explainer, Explanation, PreparedImage
from ..targets import Similarity
from . import choices
from . import controls as controls_
from .faithfulness import FaithfulnessView
from .inspector import Inspector
from .views import View, caption, display_frame, legend_meaning

#: trait -> (control name, the control's attribute that shows it)
_BINDINGS = {
    "layer": ("layer", "value"),
    "compare_layer": ("compare_layer", "value"),
    "compare_method": ("compare_method", "value"),
    "method": ("method", "value"),
    "colormap": ("colormap", "value"),
    "alpha": ("opacity", "value"),
    "threshold": ("threshold", "value"),
    "compare": ("compare", "value"),
    "target": ("classes", "target"),
    "compare_target": ("compare_classes", "target"),
    "region": ("region", "value"),
    "positive_only": ("positive_only", "value"),
}


class CAMWidget(widgets.VBox):
    """A live class activation map explorer for a PyTorch image model.

    Set ``layer``, ``target``, ``method``, ``colormap``, ``alpha`` or ``threshold``
    (or use the controls) and the overlay re-renders. ``compare`` shows a second view
    with its own ``compare_target`` and ``compare_layer``. ``target`` is a class index
    (for a segmentation model: the class over its predicted pixels, or over the whole
    image with ``region = "image"``), or any target of :mod:`camwidget.targets` (a
    detection's box for a detector). With a ``reference`` image, the map explains the
    similarity of the model's embedding of the image to that of the reference.
    ``output``, ``activation`` and ``reshape`` go to the :class:`Explainer`; ``model``
    may be an :class:`Explainer` itself, whose passes the panel then shares.
    """

    layer = Unicode()
    target = Any(0)
    method = Unicode("gradcam")
    colormap = Unicode("viridis")
    alpha = Float(0.5)
    threshold = Float(0.0)
    compare = Bool(False)
    compare_target = Any(0)
    compare_layer = Unicode()
    compare_method = Unicode("")
    region = Unicode("predicted")
    positive_only = Bool(False)

    def __init__(
        self,
        model: torch.nn.Module | Explainer,
        image: object = None,
        *,
        preprocess: Callable | None = None,
        labels: Sequence[str] | None = None,
        layer: str | None = None,
        target: int | str | None = None,
        method: str = "gradcam",
        colormap: str = "viridis",
        alpha: float = 0.5,
        threshold: float = 0.0,
        device: str | torch.device | None = None,
        display_size: int = 448,
        top_k: int = 5,
        reference: object = None,
        **options: object,
    ) -> None:
        self.explainer = _explainer(model, preprocess, labels, device, options)
        if image is not None:  # the catalogue comes from this image, not a 224 probe
            image = self.explainer.prepare(image)
            self.explainer.predict(image, k=1)
        self.display_size, self.top_k = display_size, top_k
        #: Milliseconds of the last update: forward, backward, render.
        self.timings: dict[str, float] = {}
        self._image: PreparedImage | None = None
        self._frame_rgb: np.ndarray | None = None
        self._reference: Similarity | None = None
        self._painted = self._published = 0  # paints, and the paint the displays show
        self._displays: list = []
        self._suspended = False
        self._inspector: Inspector | None = None
        self.faithfulness = FaithfulnessView()
        self.main_view = View(display_size, "camwidget-overlay")
        self.compare_view = View(display_size, "camwidget-compare")
        labels_ = [self.explainer.label(i) for i in range(self.explainer.num_classes)]
        self._controls = controls_.build(labels_, self.explainer.check_target, self._say_error)
        super().__init__(children=self._layout(), layout=widgets.Layout(width="100%"))
        self.add_class("camwidget")
        with self._quiet():
            self.layer = self.compare_layer = layer or self.explainer.default_layer
            self.method, self.colormap = method, colormap
            self.alpha, self.threshold = alpha, threshold
        self._offer_layers()
        self._offer_methods()
        self._wire()
        if reference is not None:
            self.set_reference(reference)
        self._first_image(image, target)

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
        return self.main_view.explanation

    @property
    def views(self) -> tuple[View, ...]:
        """The views on show: the main one, and the compare one in compare mode."""
        return (self.main_view, self.compare_view) if self.compare else (self.main_view,)

    @property
    def controls(self) -> Mapping[str, widgets.Widget]:
        """The panel's controls by name (read-only), e.g. ``controls["layer"]``."""
        return MappingProxyType(self._controls)

    @property
    def inspector(self) -> Inspector | None:
        """The zoom-and-pan view while it is open (the ``inspect`` toggle)."""
        return self._inspector

    def set_image(self, image: object, target: int | str | None = None) -> None:
        """Show a new image (path, bytes, PIL, HWC array or CHW tensor) and explain its
        top-1 class (or ``target``). A bad image is reported and the panel keeps the
        previous one."""
        try:
            self._load(image, target)
        except CamwidgetError as error:
            self._say_error(str(error))
            raise

    def set_reference(self, image: object) -> None:
        """Explain the similarity of the model's embedding of the shown image to that of
        ``image`` (an embedding model: its output is a vector); the reference is shown
        beside the overlay and the class list is hidden."""
        prepared = self.explainer.prepare(image)
        self._reference = Similarity(self.explainer.embedding(prepared))
        thumbnail = display_frame(prepared.rgb, 160)
        self._controls["reference_image"].value = render.encode(thumbnail, "jpeg")
        self._show_mode()
        self._update(self.views)

    def save(self, path: str | Path) -> Path:
        """Write the current overlay (full resolution) to ``path`` (PNG, JPEG, …)."""
        path = Path(path)
        Image.fromarray(self.overlay).save(path)
        return path

    def picture(self) -> np.ndarray:
        """What the panel shows, as one uint8 image: the overlay (and the compare view),
        the colour legend and a caption; the static picture saved with a notebook."""
        views = [view for view in self.views if view.frame is not None]
        if not views:
            raise CamwidgetError("no image yet: call set_image(...) or upload one")
        height = max(view.frame.shape[0] for view in views)
        frames = [np.pad(v.frame, ((0, height - v.frame.shape[0]), (0, 4), (0, 0))) for v in views]
        row = np.concatenate(frames, axis=1)
        main = self.main_view
        bar = render.legend(self.colormap, width=row.shape[1], height=14, zero=main.zero)
        lines = [self._summary(), f"colours: {legend_meaning(main.explanation)[1]}"]
        return render.captioned(np.concatenate([row, bar], axis=0), lines)

    def _summary(self) -> str:
        e = self.main_view.explanation
        width, height = self._image.size[1], self._image.size[0]
        return (
            f"{width}×{height} image · layer {e.layer} · {e.label}"
            f"{f' ({e.target})' if isinstance(e.target, int) else ''} · {e.title}"
        )

    def _repr_mimebundle_(self, **kwargs: object) -> dict | None:
        """The live widget, with a static fallback for front ends without a kernel
        (GitHub, nbviewer, an HTML export): the panel's picture as PNG and a one-line
        summary."""
        data = super()._repr_mimebundle_(**kwargs)
        if data is not None and self.main_view.frame is not None:
            data["image/png"] = render.encode(self.picture(), "png")
            data["text/plain"] = f"camwidget panel: {self._summary()}"
        return data

    def _ipython_display_(self, **kwargs: object) -> None:
        """Display with an id, so that the static picture follows the panel: after each
        cell that changed it, the saved output is updated."""
        from IPython import get_ipython
        from IPython.display import display

        self._displays.append(display(self._repr_mimebundle_(), raw=True, display_id=True))
        self._published = self._painted
        shell = get_ipython()
        if shell is not None and len(self._displays) == 1:
            shell.events.register("post_execute", self._update_displays)

    def _update_displays(self) -> None:
        if self._painted == self._published or self.comm is None:
            return
        self._published = self._painted
        bundle = self._repr_mimebundle_()
        for handle in self._displays:
            handle.update(bundle, raw=True)

    def close(self) -> None:
        """Close every child widget and figure and drop the cached passes. The model
        holds no hooks of ours at any time outside a forward pass."""
        if self._inspector is not None:
            self._inspector.close()
            self._inspector = None
        if self._displays:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None:
                shell.events.unregister("post_execute", self._update_displays)
            self._displays.clear()
        self.explainer.clear()
        for child in _descendants(self):
            child.close()
        super().close()

    # ----------------------------------------------------------------- layout

    def _layout(self) -> list[widgets.Widget]:
        c = self._controls
        main = widgets.VBox([self.main_view.image, self.main_view.caption, self.main_view.legend])
        second = self.compare_view
        c["compare_panel"] = widgets.VBox(
            [
                second.image,
                second.caption,
                second.legend,
                c["compare_classes"],
                c["compare_layer"],
                c["compare_method"],
            ],
            layout=widgets.Layout(display="none"),
        )
        predictions = widgets.VBox(
            [
                widgets.HTML("<b>top predictions</b> (click to explain)"),
                c["classes"],
                c["region"],
                c["reference"],
                c["reference_image"],
            ]
        )
        return [
            c["status"],
            widgets.HBox(
                [main, c["compare_panel"], predictions],
                layout=widgets.Layout(align_items="flex-start"),
            ),
            widgets.HBox(
                [c["layer"], c["method"], c["colormap"], c["positive_only"], c["lrp_composite"]]
            ),
            widgets.HBox([c["opacity"], c["threshold"]]),
            widgets.HBox([c["compare"], c["upload"], c["save"], c["inspect"], c["faithfulness"]]),
            c["progress"],
            c["messages"],
            self.faithfulness.box,
            c["inspector"],
        ]

    # ----------------------------------------------------------------- controls

    def _wire(self) -> None:
        """Bind every trait to its control, and the buttons to their actions."""
        for trait, (name, attribute) in _BINDINGS.items():
            self._bind(self._controls[name], attribute, trait)
        self._controls["upload"].observe(self._uploaded, "value")
        self._controls["reference"].observe(self._reference_uploaded, "value")
        self._controls["save"].on_click(self._save_clicked)
        self._controls["inspect"].observe(self._inspect_toggled, "value")
        self._controls["faithfulness"].observe(self._faithfulness_toggled, "value")
        self._controls["lrp_composite"].value = self.explainer.lrp_composite
        self._controls["lrp_composite"].observe(self._composite_chosen, "value")
        self.faithfulness.rank_button.on_click(self._rank_clicked)

    def _bind(self, control: widgets.Widget, attribute: str, trait: str) -> None:
        """One handler each way: the control sets the trait (an error goes to the panel
        and the control shows the trait again), the trait shows in the control."""

        def from_control(change: Mapping) -> None:
            if self._suspended or change["new"] is None or change["new"] == getattr(self, trait):
                return
            try:
                setattr(self, trait, change["new"])
            except (TraitError, CamwidgetError) as error:
                self._say_error(str(error))
                with self._quiet():
                    setattr(control, attribute, getattr(self, trait))

        def to_control(change: Mapping) -> None:
            with self._quiet():
                setattr(control, attribute, change["new"])

        with self._quiet():
            setattr(control, attribute, getattr(self, trait))
        control.observe(from_control, attribute)
        self.observe(to_control, trait)

    def _offer_layers(self) -> None:
        """The layer lists, for the current image's catalogue."""
        layers = [(info.label, info.name) for info in self.explainer.layers]
        with self._quiet():
            for name, value in (("layer", self.layer), ("compare_layer", self.compare_layer)):
                control = self._controls[name]
                with control.hold_sync():
                    if list(control.options) != layers:
                        control.options = layers
                    control.value = value

    def _offer_methods(self) -> None:
        """The methods that apply at the main view's layer; the tooltip says why the
        others are left out."""
        control = self._controls["method"]
        offered, reasons = [], []
        for name, spec in methods.REGISTRY.items():
            reason = self.explainer.why_not(name, self.layer)
            if reason is None:
                offered.append((choices.method_label(spec), name))
            else:
                reasons.append(reason)
        with self._quiet(), control.hold_sync():
            if list(control.options) != offered:
                control.options = offered
            control.value = self.method
            control.tooltip = "; ".join(reasons) or None
        self._show_layer_use()

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Set traits and controls without re-rendering."""
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
            return self.explainer.resolve(proposal["value"], self.layer).method
        except CamwidgetError as error:
            raise TraitError(str(error)) from None

    @validate("compare_method")
    def _valid_compare_method(self, proposal: Mapping) -> str:
        if proposal["value"] == "":  # the main view's method
            return ""
        try:
            return methods.get(proposal["value"]).name
        except CamwidgetError as error:
            raise TraitError(str(error)) from None

    @validate("target", "compare_target")
    def _valid_target(self, proposal: Mapping) -> object:
        try:
            return self.explainer.check_target(proposal["value"])
        except CamwidgetError as error:
            raise TraitError(str(error)) from None

    @validate("region")
    def _valid_region(self, proposal: Mapping) -> str:
        regions = [value for _, value in choices.REGIONS]
        if proposal["value"] not in regions:
            raise TraitError(f"region must be one of {regions}; got {proposal['value']!r}")
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
        control = self._controls["colormap"]
        if self.colormap not in control.options:  # any matplotlib name, offered once used
            with self._quiet():
                control.options = [*control.options, self.colormap]
        self._update(())

    @observe("layer", "target", "compare_layer", "compare_target")
    def _view_changed(self, change: Mapping) -> None:
        view = self.compare_view if change["name"].startswith("compare_") else self.main_view
        trait = change["name"].removeprefix("compare_")
        setattr(view, trait, change["new"])
        if change["name"] != "layer":
            self._update((view,))
            return
        stale, note = self._follow_layer()
        self._update({view, *stale}, [note] if note else [])

    @observe("method", "region", "positive_only")
    def _method_changed(self, change: Mapping) -> None:
        self._show_layer_use()
        self._update(self.views)

    @observe("compare_method")
    def _compare_method_changed(self, change: Mapping) -> None:
        self._show_layer_use()
        self._update((self.compare_view,))

    def _show_layer_use(self) -> None:
        """A layer control is off for a method that reads no layer, and says why; the
        positive-only toggle shows where a view has a pixel-level method, the LRP rules
        where one has LRP."""
        shown = {"layer": self.method, "compare_layer": self.compare_method or self.method}
        for name, method in shown.items():
            spec, control = methods.get(method), self._controls[name]
            control.disabled = not spec.needs_layer
            control.tooltip = (
                "the layer whose feature maps are explained"
                if spec.needs_layer
                else f"{spec.title} reads no layer: it explains the input's pixels directly"
            )
        pixel = any(methods.get(method).pixel_level for method in shown.values())
        self._controls["positive_only"].layout.display = "flex" if pixel else "none"
        relevance = "lrp" in shown.values()
        self._controls["lrp_composite"].layout.display = "flex" if relevance else "none"

    def _composite_chosen(self, change: Mapping) -> None:
        """LRP's rules, a setting of the explainer (its maps are cached by it)."""
        self.explainer.lrp_composite = change["new"]
        self._update(self.views)

    @observe("compare")
    def _compare_toggled(self, change: Mapping) -> None:
        self._controls["compare_panel"].layout.display = "flex" if self.compare else "none"
        self._update((self.compare_view,))

    def _follow_layer(self) -> tuple[tuple[View, ...], str | None]:
        """After the main layer changed: offer the methods that apply there, and switch
        to the method's fallback where it does not. Returns the views to re-explain."""
        resolved = self.explainer.resolve(self.method, self.layer, fallback=True)
        if resolved.method != self.method:
            with self._quiet():
                self.method = resolved.method
        self._offer_methods()
        return (self.views if resolved.note else ()), resolved.note

    def _update(self, stale: Iterable[View], notes: Sequence[str] = ()) -> None:
        """Re-explain the ``stale`` views on show and repaint; errors go to the panel."""
        if self._suspended or self._image is None:
            return
        self._guarded(lambda: self._refresh([view for view in self.views if view in stale], notes))

    def _refresh(self, stale: list[View], notes: Sequence[str] = ()) -> None:
        """Re-explain ``stale`` (cheap where cached), repaint every view on show, then
        write the status, the messages (``notes`` and the views' remarks) and the
        inspector."""
        remarks = list(notes)
        for view in stale:
            target = self._reference or choices.explained(
                view.target, self.explainer.output_kind, self.region, self._image.size
            )
            remarks += view.explain(
                self.explainer,
                self._image,
                self._frame_rgb,
                self.compare_method or self.method if view is self.compare_view else self.method,
                target,
                self._show_progress,
                self.positive_only,
            )
        start = time.perf_counter()
        for view in self.views:
            view.paint(self.colormap, self.alpha, self.threshold)
        self.timings = {
            step: sum(view.explanation.timings.get(step, 0.0) for view in stale)
            for step in ("forward", "backward")
        }
        self.timings["render"] = (time.perf_counter() - start) * 1000.0
        self._painted += 1
        self._write_status()
        self._say(" · ".join(dict.fromkeys(remarks)))
        if self._inspector is not None:
            view = self.main_view
            self._inspector.show(view.rgb, view.heat, self.colormap, self.alpha)
        if self._controls["faithfulness"].value and stale:
            self.faithfulness.show(self.explainer, self._image, self.main_view.explanation)

    def _write_status(self) -> None:
        height, width = self._image.size
        e, t = self.main_view.explanation, self.timings
        look = f"{self.colormap} · opacity {self.alpha:.2f}"
        if self.threshold > 0:
            look += f" · threshold {self.threshold:.2f}"
        notes = "".join(f" ({html.escape(note)})" for note in self._image.notes)
        self._controls["status"].value = (
            f"<b>{width}×{height}</b> px{notes} · <code>{html.escape(e.layer)}</code> · "
            f"{caption(e, detail=False)} · {e.title} · {look} <span style='color:#666'>— forward "
            f"{t['forward']:.0f} ms · backward {t['backward']:.0f} ms · render "
            f"{t['render']:.0f} ms</span>"
        )

    def _load(self, image: object, target: object) -> None:
        prepared = self.explainer.prepare(image)
        start = time.perf_counter()
        self.explainer.predict(prepared, k=1)
        forward = (time.perf_counter() - start) * 1000.0
        prepared = self.explainer.prepare(prepared)  # again if the model's size was learned
        top = choices.offer(self.explainer, prepared, self.top_k)
        if not top and self._reference is None:
            raise CamwidgetError("the model gives no answer for this image to explain")
        picks = [pick for _, pick in top] or [0]
        target = picks[0] if target is None else self.explainer.check_target(target)
        self._image = prepared
        self._frame_rgb = display_frame(prepared.rgb, self.display_size)
        with self._quiet():
            self.layer = self.layer  # shapes may have changed; names stay
            self.target = target
            self.compare_target = picks[1] if len(picks) > 1 else picks[0]
        for name in ("classes", "compare_classes"):
            self._controls[name].set_top(top)
        self._show_mode()
        self._offer_layers()
        _, note = self._follow_layer()
        self._refresh(list(self.views), [n for n in (note, *prepared.notes) if n])
        self.timings["forward"] = forward
        self._write_status()

    def _show_mode(self) -> None:
        """Show the controls this kind of model needs: the region toggle for a
        segmentation model; the reference instead of the class list for a similarity."""
        shown = {
            "region": self.explainer.output_kind == "dense" and self._reference is None,
            "classes": self._reference is None,
            "compare_classes": self._reference is None,
            "reference": self._reference is not None,
            "reference_image": self._reference is not None,
        }
        for name, visible in shown.items():
            self._controls[name].layout.display = None if visible else "none"

    def _first_image(self, image: object, target: object) -> None:
        if image is not None:
            self.set_image(image, target=target)
        else:
            self._controls[
                "status"
            ].value = "<i>No image yet: upload one or call <code>set_image(...)</code>.</i>"

    # ----------------------------------------------------------------- events

    def _reference_uploaded(self, change: Mapping) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[0]
        self._controls["reference"].value = ()
        try:
            self.set_reference(bytes(upload["content"]))
        except CamwidgetError as error:
            self._say_error(f"{upload.get('name', 'the reference')}: {error}")

    def _uploaded(self, change: Mapping) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[0]
        self._controls["upload"].value = ()  # so that the same file can be uploaded again
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
        e = self.main_view.explanation
        name = f"camwidget-{e.label}-{e.layer}-{e.method}.png".replace(" ", "_").replace("/", "_")
        try:
            self._say(f"saved {self.save(name).resolve()}")
        except OSError as error:
            self._say_error(f"could not save: {error}")

    def _faithfulness_toggled(self, change: Mapping) -> None:
        self.faithfulness.box.layout.display = "flex" if change["new"] else "none"
        if change["new"] and self._image is not None:
            self._guarded(
                lambda: self.faithfulness.show(
                    self.explainer, self._image, self.main_view.explanation
                )
            )

    def _rank_clicked(self, button: widgets.Button) -> None:
        e = self.main_view.explanation
        if e is None:
            self._say_error("nothing to rank yet: load an image first")
            return

        def explain(method: str) -> Explanation:
            return self.explainer.explain(self._image, e.layer, e.target, method)

        self._guarded(lambda: self.faithfulness.rank(self.explainer, self._image, e, explain))

    def _guarded(self, action: Callable[[], object]) -> None:
        """Run ``action``; an error goes to the panel in words."""
        try:
            action()
        except CamwidgetError as error:
            self._say_error(str(error))
        except Exception as error:  # the panel must survive whatever the model does
            self._say_error(f"unexpected error: {type(error).__name__}: {error}")

    def _inspect_toggled(self, change: Mapping) -> None:
        box = self._controls["inspector"]
        if change["new"]:
            self._inspector = Inspector(self.display_size)
            box.children = [self._inspector.canvas]
            view = self.main_view
            if view.explanation is not None:
                self._inspector.show(view.rgb, view.heat, self.colormap, self.alpha)
        elif self._inspector is not None:
            box.children = []
            self._inspector.close()
            self._inspector = None

    # ----------------------------------------------------------------- messages

    def _show_progress(self, done: int, total: int) -> None:
        """The perturbation passes of Score-CAM and Ablation-CAM, shown while they run
        (messages go out at once)."""
        bar = self._controls["progress"]
        bar.max = total
        bar.value = done
        bar.layout.display = "none" if done >= total else "flex"

    def _require(self) -> Explanation:
        explanation = self.main_view.explanation
        if explanation is None:
            raise CamwidgetError("no image yet: call set_image(...) or upload one")
        return explanation

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#555"
        self._controls["messages"].value = (
            f"<span style='color:{color}'>{html.escape(text, quote=False)}</span>" if text else ""
        )

    def _say_error(self, text: str) -> None:
        self._say(text, error=True)


def _descendants(widget: widgets.Widget) -> list[widgets.Widget]:
    """Every widget inside ``widget``, at any depth."""
    found, stack = [], list(widget.children)
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(getattr(child, "children", ()))
    return found


def _explainer(
    model: torch.nn.Module | Explainer,
    preprocess: Callable | None,
    labels: Sequence[str] | None,
    device: str | torch.device | None,
    options: Mapping[str, object],
) -> Explainer:
    """``model`` itself where it is an Explainer (its caches shared), else a new one."""
    if isinstance(model, Explainer):
        return model
    return Explainer(model, preprocess, labels, device, **options)
