"""Where each part of the panel goes."""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets

from . import choices
from . import controls as controls_
from .faithfulness import FaithfulnessView
from .styles import look_follower
from .views import View


def arrange(
    c: dict[str, widgets.Widget],
    main: View,
    second: View,
    faithfulness: FaithfulnessView,
    css_class: str,
) -> list[widgets.Widget]:
    """The panel's rows, top to bottom: the status; the views beside the class list;
    the choosers; the look; the actions; the work running; the messages; the
    faithfulness view; the inspector; the style by which the page follows the opacity
    slider and the colormap list (the panel has ``css_class``). Adds the containers it
    makes to ``c``."""
    c["compare_panel"] = widgets.VBox(
        [*_view(second), c["compare_classes"], c["compare_layer"], c["compare_method"]],
        layout=widgets.Layout(display="none"),
    )
    c["heading"] = widgets.HTML(choices.heading("logits", similarity=False))
    predictions = widgets.VBox(
        [
            c["heading"],
            *(c[name] for name in ("classes", "prompts", "use_prompts", "region")),
            *(c[name] for name in ("reference", "reference_image")),
        ]
    )
    c["work"] = widgets.HBox(
        [c["progress_text"], c["progress"], c["cancel"]], layout=widgets.Layout(display="none")
    )
    c["work"].add_class("camwidget-work")
    options = controls_.chosen_options()
    return [
        c["status"],
        widgets.HBox(
            [widgets.VBox(_view(main)), c["compare_panel"], predictions],
            layout=widgets.Layout(align_items="flex-start", flex_flow="row wrap"),
        ),
        _row(c, "layer", "method", "colormap", "positive_only", *options),
        _row(c, "opacity", "threshold"),
        _row(c, "compare", "upload", "save", "inspect", "faithfulness"),
        c["work"],
        c["messages"],
        faithfulness.box,
        c["inspector"],
        look_follower(css_class, c["opacity"], c["colormap"], [main.name, second.name]),
    ]


def _view(view: View) -> list[widgets.Widget]:
    return [view.image, view.caption, view.legend]


def _row(c: Mapping[str, widgets.Widget], *names: str) -> widgets.HBox:
    return wrapping([c[name] for name in names])


def wrapping(children: list[widgets.Widget]) -> widgets.HBox:
    """A row of controls that wraps onto the next line where the page is too narrow."""
    return widgets.HBox(children, layout=widgets.Layout(flex_flow="row wrap"))
