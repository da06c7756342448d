"""CAMWidget: the live panel. It holds no math: each change runs the cheapest engine call.

colormap / alpha / threshold -> re-blend the shown heatmaps, at once; layer / method ->
cached maps; class -> one partial backward; a new image -> one forward and one backward.
A change from the page that needs the engine runs in the panel's worker (see
:mod:`camwidget.worker`), superseding the one before it; a change made in Python runs
at once. Each overlay is a :class:`View` with its own layer and class (the compare
mode is a second view); each trait has one control, bound both ways.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import MappingProxyType

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image
from traitlets import Any, Bool, Float, Unicode, observe

from .. import methods, render
from ..cache import BoundedCache
from ..errors import CamwidgetError
from ..explainer import Explainer, Explanation, PreparedImage, Progress
from ..targets import Similarity
from ..worker import Worker
from . import choices, layout
from . import controls as controls_
from .actions import Actions
from .background import Background
from .binding import Flag, bind
from .faithfulness import FaithfulnessView
from .inspector import Inspector
from .offers import Offers
from .picture import StaticPicture, compose
from .prompts import Prompts
from .styles import unique_class
from .traits import BINDINGS, Checked
from .views import View, display_frame, look_text, status_line

Answer = tuple[Explanation, list[str]]  # a view's explanation and remarks in words


class CAMWidget(Actions, Background, Offers, Prompts, Checked, widgets.VBox):
    """A live class activation map explorer for a PyTorch image model.

    Set ``layer``, ``target``, ``method``, ``colormap``, ``alpha`` or ``threshold``
    (or use the controls) and the overlay re-renders. ``compare`` shows a second view
    with its own ``compare_target`` and ``compare_layer``. ``target`` is a class index
    (for a segmentation model: the class over its predicted pixels, or over the whole
    image with ``region = "image"``), or any target of :mod:`camwidget.targets` (a
    detection's box for a detector). With a ``reference`` image, the map explains the
    similarity of the model's embedding of the image to that of the reference.
    ``output``, ``activation``, ``reshape`` and the methods' options go to the
    :class:`Explainer`; ``model`` may be an :class:`Explainer` itself, whose passes the
    panel then shares. Reading ``heatmap``, ``overlay``, ``explanation``, ``picture()``
    or ``save()`` first waits for work started from the page (:meth:`wait`).
    ``compose``: ``"page"`` (the browser stacks photo and map and colours the map: a
    change sends markup or the map alone) or ``"kernel"`` (whole frames, for a front end
    that drops style and SVG markup).
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
        compose: str = "page",
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
        self._start()
        self.faithfulness = FaithfulnessView()
        self.main_view = View(display_size, "camwidget-overlay", compose)
        self.compare_view = View(display_size, "camwidget-compare", compose)
        labels_ = [self.explainer.label(i) for i in range(self.explainer.num_classes)]
        self._controls = controls_.build(labels_, self.explainer.check_target, self._say_error)
        css = unique_class("camwidget-panel")
        views = (self.main_view, self.compare_view)
        children = layout.arrange(self._controls, *views, self.faithfulness, css)
        super().__init__(
            children=children, layout=widgets.Layout(width="100%"), _dom_classes=("camwidget", css)
        )
        with self._quiet():
            self.layer = self.compare_layer = layer or self.explainer.default_layer
            self.method, self.colormap = method, colormap
            self.alpha, self.threshold = alpha, threshold
        self._offer_layers()
        self._offer_methods()
        self._show_prompts()
        self._wire()
        if reference is not None:
            self.set_reference(reference)
        self._first_image(image, target)

    def _start(self) -> None:
        """The panel's state before any image."""
        self._image: PreparedImage | None = None
        self._frame_rgb: np.ndarray | None = None
        self._reference: Similarity | None = None
        self._quiet, self._from_page = Flag(), Flag()
        self._worker = Worker("camwidget-panel")
        self._shown = threading.RLock()  # what is on show: views, paints, the status
        self._generation = 0  # the latest request; older work shows nothing
        self._stale: set[View] = set()  # views whose request is not shown yet
        self._answers: BoundedCache[Answer] = BoundedCache(32)  # for the image on show
        self._static = StaticPicture(self._repr_mimebundle_, lambda: self.comm is not None)
        self._inspector: Inspector | None = None

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
        self.wait()
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

    def set_image(
        self, image: object, target: int | str | None = None, *, background: bool = False
    ) -> None:
        """Show a new image (path, bytes, PIL, HWC array or CHW tensor) and explain its
        top-1 class (or ``target``). A bad image is reported and the panel keeps the
        previous one. With ``background`` the work runs in the panel's worker (as for an
        upload) and an error is only reported."""
        try:
            with self._from_page() if background else nullcontext():
                self._run(partial(self._load, image, target), "new image")
        except CamwidgetError as error:
            self._say_error(str(error))
            raise

    def set_reference(self, image: object) -> None:
        """Explain the similarity of the model's embedding of the shown image to that of
        ``image`` (an embedding model: its output is a vector); the reference is shown
        beside the overlay and the class list is hidden."""
        self.wait()
        prepared = self.explainer.prepare(image)
        reference = Similarity(self.explainer.embedding(prepared))
        with self._shown:
            self._reference, self._answers = reference, BoundedCache(32)
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
        self.wait()
        return self._picture()

    def _picture(self) -> np.ndarray:
        """:meth:`picture` of what is on show now, without waiting for work."""
        with self._shown:
            return compose(self.views, self._summary())

    def _summary(self) -> str:
        e = self.main_view.explanation
        if e is None:
            return "no image yet"
        width, height = self._image.size[1], self._image.size[0]
        if self.main_view.partial is not None:
            return f"{width}×{height} image · {self.main_view.partial}"
        return f"{width}×{height} image · layer {e.layer} · {e.label}{e.index_text} · {e.title}"

    def _repr_mimebundle_(self, **kwargs: object) -> dict | None:
        """The live widget, with a static fallback for front ends without a kernel
        (GitHub, nbviewer, an HTML export): the panel's picture as PNG and a one-line
        summary. It never waits for work: Jupyter asks for it after each message."""
        data = super()._repr_mimebundle_(**kwargs)
        if data is not None and self.main_view.frame is not None:
            data["image/png"] = render.encode(self._picture(), "png")
            data["text/plain"] = f"camwidget panel: {self._summary()}"
        return data

    def _ipython_display_(self, **kwargs: object) -> None:
        """Display with an id, so that the static picture follows the panel."""
        self._static.display()

    def close(self) -> None:
        """Stop the worker, close every child widget and figure and drop the cached
        passes. Safe twice, and on a panel whose constructor raised. The model holds no
        hooks of ours at any time outside a pass."""
        for part in ("_worker", "_inspector", "_static"):
            if (owned := getattr(self, part, None)) is not None:
                owned.close()
        self._inspector = None
        if (explainer := getattr(self, "explainer", None)) is not None:
            explainer.clear()
        for child in _descendants(self):
            child.close()
        super().close()

    # ----------------------------------------------------------------- controls

    def _wire(self) -> None:
        """Bind every trait to its control, and the buttons to their actions."""
        c = self._controls
        for trait, (name, attribute) in BINDINGS.items():
            bind(self, trait, c[name], attribute, self._quiet, self._say_error, self._from_page)
        c["upload"].observe(self._uploaded, "value")
        c["reference"].observe(self._reference_uploaded, "value")
        c["save"].on_click(self._save_clicked)
        c["inspect"].observe(self._inspect_toggled, "value")
        c["faithfulness"].observe(self._faithfulness_toggled, "value")
        c["cancel"].on_click(self._cancel_clicked)
        c["use_prompts"].on_click(self._prompts_entered)
        for keyword in controls_.chosen_options():
            if isinstance(c[keyword], widgets.Text):  # classes, by name or index
                c[keyword].observe(partial(self._classes_chosen, keyword), "value")
                continue
            c[keyword].value = getattr(self.explainer, keyword)
            c[keyword].observe(partial(self._option_chosen, keyword), "value")
        self.faithfulness.rank_button.on_click(self._rank_clicked)

    # ----------------------------------------------------------------- updates

    @observe("colormap", "alpha", "threshold")
    def _look_changed(self, change: Mapping) -> None:
        control = self._controls["colormap"]
        if self.colormap not in control.options:  # any matplotlib name, offered once used
            with self._quiet():
                control.options = [*control.options, self.colormap]
        if not self._quiet.on and self._image is not None:
            self._guarded(self._repaint)  # at once, also while work runs

    @observe("layer", "target", "compare_layer", "compare_target")
    def _view_changed(self, change: Mapping) -> None:
        view = self.compare_view if change["name"].startswith("compare_") else self.main_view
        setattr(view, change["name"].removeprefix("compare_"), change["new"])
        if change["name"] != "layer":
            self._update((view,))
            return
        stale, note = self._follow_layer()
        self._update({view, *stale}, [note] if note else [])

    @observe("method", "region", "positive_only")
    def _method_changed(self, change: Mapping) -> None:
        self._offer_methods()  # its tooltip says what the method computes
        self._update(self.views)

    @observe("compare_method")
    def _compare_method_changed(self, change: Mapping) -> None:
        self._show_layer_use()
        self._update((self.compare_view,))

    @observe("compare")
    def _compare_toggled(self, change: Mapping) -> None:
        self._controls["compare_panel"].layout.display = "flex" if self.compare else "none"
        self._update((self.compare_view,))

    def _update(self, stale: Iterable[View], notes: Sequence[str] = ()) -> None:
        """Re-explain the ``stale`` views on show and repaint; errors go to the panel."""
        if self._quiet.on or self._image is None:
            return
        views = [view for view in self.views if view in stale]
        title = methods.get(self._method_of(views[0] if len(views) == 1 else self.main_view)).title
        work = partial(self._refresh, views, notes)
        self._guarded(partial(self._run, work, title, at_once=self._answered(views)))

    def _method_of(self, view: View) -> str:
        """The method ``view`` explains with."""
        return self.compare_method or self.method if view is self.compare_view else self.method

    def _refresh(
        self, stale: list[View], notes: Sequence[str], progress: Progress | None, generation: int
    ) -> None:
        """Re-explain ``stale`` (and the views left stale by work cancelled before), then,
        unless newer work came meanwhile, show them, repaint every view, and write the
        status, the messages (``notes`` and the views' remarks) and the inspector; then
        the faithfulness view, its curves drawn as they are computed."""
        with self._shown:
            stale = [view for view in self.views if view in {*stale, *self._stale}]
            self._stale.update(stale)
        found = [(view, *self._explain(view, progress, generation)) for view in stale]
        with self._shown:
            if generation != self._generation:
                return
            for view, e, _ in found:
                view.show(e, self._frame_rgb, self.positive_only)
            self._stale.clear()
            self.timings = {
                step: sum(e.timings.get(step, 0.0) for _, e, _ in found)
                for step in ("forward", "backward")
            }
            self._repaint()
            self._say(" · ".join(dict.fromkeys([*notes, *(r for *_, rs in found for r in rs)])))
        main = next((e for view, e, _ in found if view is self.main_view), None)
        if self._controls["faithfulness"].value and main is not None:
            self.faithfulness.compute(self.explainer, self._image, main, progress, live=True)
            with self._shown:
                if generation == self._generation:
                    self.faithfulness.show(self.explainer, self._image, main)

    def _explain(self, view: View, progress: Progress | None, generation: int) -> Answer:
        target = self._reference or choices.explained(
            view.target, self.explainer.output_kind, self.region, self._image.size
        )
        key, method = self._answer_key(view), self._method_of(view)
        with self._shown:
            kept = self._answers.get(key)
        if kept is not None:
            return kept
        preview = partial(self._preview, view, methods.get(method).title, generation)
        e, remarks = view.request(self.explainer, self._image, method, target, progress, preview)
        with self._shown:  # shown again, it costs no pass
            self._answers.put(key, (replace(e, timings=dict.fromkeys(e.timings, 0.0)), remarks))
        return e, remarks

    def _repaint(self) -> None:
        """Blend every view on show again (no engine call), the status and inspector."""
        with self._shown:
            start = time.perf_counter()
            for view in self.views:
                if view.explanation is not None:
                    view.paint(self.colormap, self.alpha, self.threshold)
            self.timings["render"] = (time.perf_counter() - start) * 1000.0
            self._static.painted += 1
            self._write_status(running=self._running())
            if self._inspector is not None:
                view = self.main_view
                self._inspector.show(view.rgb, view.heat, self.colormap, self.alpha)

    def _write_status(self, running: str | None = None) -> None:
        """The status line (see :func:`status_line`); ``running``: the work that runs.
        While the main view shows a map still being made, the status says that."""
        view, look = self.main_view, (self.colormap, self.alpha, self.threshold)
        if view.partial is not None:
            work = html.escape(running or "the work")
            self._controls[
                "status"
            ].value = f"<b>{work} running</b> · showing {view.partial} · {look_text(look)}"
        elif view.explanation is not None:
            self._controls["status"].value = status_line(
                view.explanation, self._image, look, self.timings, running
            )

    def _load(self, image: object, target: object, progress: Progress | None, generation: int):
        """A new image: its forward, the class list and layer lists, then its maps."""
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
        with self._shown:
            self._image, self._answers = prepared, BoundedCache(32)
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
        notes = [n for n in (note, *prepared.notes) if n]
        self._refresh(list(self.views), notes, progress, generation)
        self.timings["forward"] = forward
        self._write_status()

    def _first_image(self, image: object, target: object) -> None:
        if image is not None:
            self.set_image(image, target=target)
        else:
            self._controls[
                "status"
            ].value = "<i>No image yet: upload one or call <code>set_image(...)</code>.</i>"


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
