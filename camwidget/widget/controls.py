"""The panel's controls: the class picker and the named widgets the panel binds to its
traits. Nothing here knows the panel."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
from traitlets import Any, observe

from .. import methods, render
from ..errors import CamwidgetError
from . import choices
from .choices import REGIONS
from .styles import OPACITY_STEP


class ClassPicker(widgets.VBox):
    """Quick picks (the model's top answers) plus a search box over all class names;
    ``target`` is the pick: a class index, or a target such as a detection's box.

    ``resolve`` turns typed text into a class index (or raises in words); ``on_error``
    shows such an error.
    """

    target = Any(0)

    def __init__(
        self,
        labels: list[str],
        resolve: Callable[[str], int | None],
        on_error: Callable[[str], None],
        *,
        quick: str,
        description: str,
    ) -> None:
        self._resolve = resolve
        self._on_error = on_error
        self._offering = False
        self._searching = False
        if quick == "radio":
            self.quick = widgets.RadioButtons(options=[], layout=widgets.Layout(width="auto"))
        else:
            self.quick = widgets.Dropdown(options=[], layout=widgets.Layout(width="260px"))
        self.quick.description = description
        self.quick.tooltip = "the model's top answers: pick one to explain it"
        self.search = widgets.Combobox(
            options=labels,
            placeholder="search all classes…",
            tooltip="type a class name or index and press Enter",
            ensure_option=False,
            continuous_update=False,
            layout=widgets.Layout(width="260px"),
        )
        self.quick.observe(self._quick_picked, "value")
        self.search.observe(self._searched, "value")
        super().__init__(children=[self.quick, self.search])

    def set_top(self, choices: Sequence[tuple[str, object]]) -> None:
        """Offer these (caption, pick) as quick picks (picks nothing)."""
        self._offering = True
        try:
            with self.quick.hold_sync():
                self.quick.options = list(choices)
                self._show(self.target)
        finally:
            self._offering = False

    @observe("target")
    def _target_changed(self, change: Mapping) -> None:
        self._show(change["new"])
        if not self._searching:  # another pick: the same name typed again is a change
            self.search.value = ""

    def _show(self, target: object) -> None:
        values = [value for _, value in self.quick.options]
        self.quick.value = target if target in values else None

    def _quick_picked(self, change: Mapping) -> None:
        if change["new"] is not None and not self._offering:
            self.target = change["new"]

    def _searched(self, change: Mapping) -> None:
        text = change["new"].strip()
        if not text:
            return
        self._searching = True
        try:
            self.target = self._resolve(text)
        except CamwidgetError as error:
            self._on_error(str(error))
        finally:
            self._searching = False


def build(
    labels: list[str], resolve: Callable[[str], int | None], on_error: Callable[[str], None]
) -> dict[str, widgets.Widget]:
    """The panel's controls by name, each tagged with the CSS class ``camwidget-<name>``."""
    built = {
        **_pickers(labels, resolve, on_error),
        **_choosers(),
        **_comparers(),
        **_actions(),
    }
    for name, control in built.items():
        control.add_class(f"camwidget-{name.replace('_', '-')}")
    return built


def _pickers(
    labels: list[str], resolve: Callable[[str], int | None], on_error: Callable[[str], None]
) -> dict[str, widgets.Widget]:
    """What to explain: a class (or a detection), and for a segmentation the region."""
    return {
        "classes": ClassPicker(labels, resolve, on_error, quick="radio", description=""),
        "compare_classes": ClassPicker(
            labels, resolve, on_error, quick="dropdown", description="class"
        ),
        "prompts": widgets.Textarea(
            placeholder="one prompt per line, e.g. a photo of a cat",
            tooltip="the texts the image is scored against: each is a class",
            rows=4,
            layout=widgets.Layout(width="260px", display="none"),
        ),
        "use_prompts": widgets.Button(
            description="use these prompts",
            tooltip="score the image against these prompts and explain the best one",
            layout=widgets.Layout(display="none"),
        ),
        "region": widgets.ToggleButtons(
            options=list(REGIONS),
            description="region",
            tooltip="explain the class over its predicted pixels, or over the whole image",
            layout=widgets.Layout(display="none"),
        ),
    }


def _choosers() -> dict[str, widgets.Widget]:
    """Where and how to explain, and how it looks."""
    slider = {"min": 0.0, "max": 1.0, "step": 0.05, "readout_format": ".2f"}
    others = sorted(name for name in _all_colormaps() if name not in render.COLORMAPS)
    return {
        "layer": widgets.Dropdown(
            description="layer",
            tooltip="the layer whose feature maps are explained",
            layout=_wide(360),
        ),
        "method": widgets.Dropdown(
            description="method", tooltip="how the feature maps are weighted", layout=_wide(220)
        ),
        "colormap": widgets.Dropdown(
            options=[*render.COLORMAPS, *others],
            description="colormap",
            tooltip="the colours of the heatmap; viridis, cividis and magma read well with "
            "colour-vision deficiencies",
            layout=_wide(220),
        ),
        "opacity": widgets.FloatSlider(
            description="opacity",
            tooltip="how strongly the heatmap covers the photo",
            **{**slider, "step": OPACITY_STEP},
        ),
        "threshold": widgets.FloatSlider(
            description="threshold", tooltip="hide the heatmap below this value", **slider
        ),
        "positive_only": widgets.Checkbox(
            description="positive only",
            indent=False,
            tooltip="a pixel-level map: show only its positive evidence, with the colormap, "
            "instead of the signed map (red for the target, blue against)",
            layout=widgets.Layout(display="none", width="auto"),
        ),
        **option_choosers(),
        "reference": widgets.FileUpload(
            accept="image/*",
            multiple=False,
            description="reference",
            tooltip="the image whose embedding the map compares with",
        ),
    }


def chosen_options() -> list[str]:
    """The explainer keywords of the method options with a few choices (e.g.
    ``lrp_composite``) or of classes (``finercam_against``): each has a control in the
    panel, shown while its method is on."""
    return [
        keyword
        for keyword, (spec, name) in methods.keywords().items()
        if spec.options[name].choices or spec.options[name].classes
    ]


def option_choosers() -> dict[str, widgets.Widget]:
    """A control for each of :func:`chosen_options`, named by its keyword: a box for
    class names or indices, a checkbox for a yes/no option, else a list."""
    found: dict[str, widgets.Widget] = {}
    for keyword in chosen_options():
        spec, name = methods.keywords()[keyword]
        option = spec.options[name]
        shared = dict(
            description=name.replace("_", " "),
            tooltip=option.doc if option.keyword else f"{spec.title}: {option.doc}",
        )
        if option.classes:
            found[keyword] = widgets.Text(
                placeholder="classes, e.g. tabby, 285",
                continuous_update=False,
                layout=widgets.Layout(display="none", width="300px"),
                **shared,
            )
        elif set(option.choices) == {False, True}:
            found[keyword] = widgets.Checkbox(
                indent=False, layout=widgets.Layout(display="none", width="auto"), **shared
            )
        else:
            found[keyword] = widgets.Dropdown(
                options=list(option.choices),
                layout=widgets.Layout(display="none", width="260px"),
                **shared,
            )
    return found


def _comparers() -> dict[str, widgets.Widget]:
    """The compare view's switch, and its own layer and method."""
    return {
        "compare": widgets.Checkbox(
            description="compare",
            indent=False,
            tooltip="a second view with its own class, layer and method",
        ),
        "compare_layer": widgets.Dropdown(
            description="layer", tooltip="the compare view's layer", layout=_wide(360)
        ),
        "compare_method": widgets.Dropdown(
            options=[
                ("same as the main view", ""),
                *choices.method_list(list(methods.REGISTRY.values())),
            ],
            description="method",
            tooltip="the compare view's method, e.g. Guided Grad-CAM beside Grad-CAM",
            layout=_wide(360),
        ),
    }


def _actions() -> dict[str, widgets.Widget]:
    """What the user does (upload, save, inspect) and what the panel says back."""
    return {
        "status": widgets.HTML(layout=widgets.Layout(margin="0 0 4px 0")),
        "reference_image": widgets.Image(format="jpeg", layout=widgets.Layout(width="160px")),
        "upload": widgets.FileUpload(
            accept="image/*",
            multiple=False,
            description="image",
            tooltip="upload a photo to explain",
        ),
        "save": widgets.Button(
            description="save", icon="download", tooltip="save the overlay as a PNG file"
        ),
        "inspect": widgets.ToggleButton(
            description="inspect", icon="search", tooltip="zoom, pan and read the heat value"
        ),
        "faithfulness": widgets.ToggleButton(
            description="faithfulness",
            icon="line-chart",
            tooltip="deletion and insertion curves of the shown map (about 40 model passes, "
            "once per map)",
        ),
        "progress": widgets.IntProgress(layout=widgets.Layout(width="240px")),
        "progress_text": widgets.HTML(),
        "cancel": widgets.Button(
            description="cancel", icon="stop", tooltip="stop the work and keep what is shown"
        ),
        "messages": widgets.HTML(),
        "inspector": widgets.Box(),
    }


def _all_colormaps() -> list[str]:
    import matplotlib

    return list(matplotlib.colormaps)


def _wide(pixels: int) -> widgets.Layout:
    return widgets.Layout(width=f"{pixels}px")
