"""The markup by which the page composes a map over its photo and follows the look
controls by itself: SVG filters that colour a map's levels and cut them at the
threshold, and style sheets that pick the filters and the opacity."""

from __future__ import annotations

import itertools

import ipywidgets as widgets
import numpy as np

from .. import render

_numbers = itertools.count()

#: The opacity sliders' step: an opacity on these steps the page shows by itself.
OPACITY_STEP = 0.05

_REGION = 'x="0" y="0" width="1" height="1"'
_SVG = '<svg width="0" height="0" style="position:absolute">{}</svg>'


def unique_class(prefix: str) -> str:
    """A CSS class name no other widget of this kernel has, e.g. ``camwidget-view-3``."""
    return f"{prefix}-{next(_numbers)}"


def filter_holder() -> widgets.HTML:
    """A widget to hold SVG filters: rendered (an SVG filter must be, in some browsers)
    but taking no room, in a grid's first cell or in a box."""
    layout = widgets.Layout(grid_area="1 / 1", height="0px", width="0px", overflow="hidden")
    return widgets.HTML(layout=layout)


def look_filters(name: str, colormap: str, threshold: float, signed: bool) -> str:
    """The SVG filters by which the maps and the legend of the scope ``name`` (a CSS
    class; see :func:`look_rule`) take their colours: for a signed map one filter,
    ``{name}-colours`` (:func:`colour_filter`); otherwise ``{name}-cut`` (the threshold)
    and ``{name}-tint`` (the colormap), applied one after the other."""
    colours = render.palette(colormap, threshold, signed)
    if signed:
        return _SVG.format(colour_filter(f"{name}-colours", colours))
    return _SVG.format(
        cut_filter(f"{name}-cut", colours[:, 3]) + tint_filter(f"{name}-tint", colours)
    )


def look_rule(css_class: str, alpha: float, signed: bool = False, ticked: bool = False) -> str:
    """A style sheet for the maps (``camwidget-map``) and legend bars (``camwidget-bar``,
    a grey ramp) inside ``css_class``, coloured by its :func:`look_filters` (the map at
    opacity ``alpha``). Marked important, over :func:`look_follower`'s rules: a signed
    map's own filter, a ``ticked`` bar's colours (drawn with its tick, not a ramp) and
    an opacity off the slider's steps (set from code)."""
    on_step = abs(alpha / OPACITY_STEP - round(alpha / OPACITY_STEP)) < 1e-6
    own = f"url(#{css_class}-colours) !important"
    maps = own if signed else f"url(#{css_class}-cut) url(#{css_class}-tint)"
    bar = "none !important" if ticked else f"url(#{css_class}-tint)"
    return (
        f"<style>.{css_class} .camwidget-map {{filter: {maps}; opacity: {alpha:.3f}"
        f"{'' if on_step else ' !important'}}} .{css_class} .camwidget-bar {{filter: {bar}}}"
        "</style>"
    )


def look_follower(
    container: str,
    opacity: widgets.FloatSlider,
    colormap: widgets.Dropdown,
    scopes: list[str],
) -> widgets.HTML:
    """A style sheet (in a widget that takes no room) by which the maps and legend bars
    inside the ``scopes`` (CSS classes with their :func:`look_filters`) follow the
    ``opacity`` slider and the ``colormap`` list in the page itself, before the kernel
    hears of the change. The opacity: one rule per step of the slider, chosen by the
    value its handle announces (``aria-valuetext``: "0.9" as ipywidgets 8 writes it, or
    "0.90"). The colormap: a tint filter for each of :data:`camwidget.render.COLORMAPS`
    the list offers, chosen by its checked option (a signed map keeps its own colours).
    ``container`` is a class of an element holding the controls and the scopes. The
    kernel's :func:`look_rule` follows with the same look; a front end whose controls
    announce nothing gets that rule alone."""
    on_opacity, on_colormap = f"{container}-opacity", f"{container}-colormap"
    opacity.add_class(on_opacity)
    colormap.add_class(on_colormap)
    maps = ", ".join(f".{scope} .camwidget-map" for scope in scopes)
    count = round((opacity.max - opacity.min) / opacity.step)
    values = (round(opacity.min + k * opacity.step, 6) for k in range(count + 1))
    rules = [
        f'.{container}:has(.{on_opacity} [role="slider"]:is([aria-valuetext="{value:g}"], '
        f'[aria-valuetext="{value:.2f}"])) :is({maps}) {{opacity: {value:g}}}'
        for value in values
    ]
    offered = [name for name in render.COLORMAPS if name in colormap.options]
    filters = "".join(tint_filter(f"{container}-{name}", render.palette(name)) for name in offered)
    for name in offered:
        chosen = f'.{container}:has(.{on_colormap} option:checked[data-value="{name}"])'
        tint = f"url(#{container}-{name})"
        rules += [
            f"{chosen} .{scope} .camwidget-map {{filter: url(#{scope}-cut) {tint}}}"
            for scope in scopes
        ]
        bars = ", ".join(f".{scope} .camwidget-bar" for scope in scopes)
        rules.append(f"{chosen} :is({bars}) {{filter: {tint}}}")
    follower = filter_holder()
    follower.value = f"<style>{''.join(rules)}</style>{_SVG.format(filters)}"
    return follower


def _table(values: np.ndarray) -> str:
    """A filter's table: each 0..255 value as a fraction, as short as exact allows."""
    return " ".join(f"{v / 255:.5f}".rstrip("0").rstrip(".") for v in values.tolist())


def tint_filter(name: str, colours: np.ndarray) -> str:
    """An SVG filter ``name`` that gives each grey level (0..255) its colour in
    ``colours`` (a :func:`camwidget.render.palette`; its coverage is not used)."""
    return (
        f'<filter id="{name}" color-interpolation-filters="sRGB" {_REGION}>'
        f"<feComponentTransfer>{_colour_tables(colours)}</feComponentTransfer></filter>"
    )


def _colour_tables(colours: np.ndarray) -> str:
    return "".join(
        f'<feFunc{c} type="table" tableValues="{_table(colours[:, i])}"/>'
        for i, c in enumerate("RGB")
    )


def cut_filter(name: str, coverage: np.ndarray) -> str:
    """An SVG filter ``name`` that keeps a grey map's pixels where ``coverage`` (256
    values, each 0 or 255) of their level is 255, and clears the rest: the level moved
    into the alpha channel (with black, so that no precision is lost to premultiplied
    alpha), mapped by the table, then the map kept where it covers ("in")."""
    return (
        f'<filter id="{name}" color-interpolation-filters="sRGB" {_REGION}>'
        f"{_LEVEL_TO_ALPHA}"
        f'<feComponentTransfer in="level" result="cover"><feFuncA type="table" '
        f'tableValues="{_table(coverage)}"/></feComponentTransfer>'
        '<feComposite in="SourceGraphic" in2="cover" operator="in"/></filter>'
    )


_LEVEL_TO_ALPHA = (
    '<feColorMatrix in="SourceGraphic" type="matrix" '
    'values="0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0 0" result="level"/>'
)


def colour_filter(name: str, colours: np.ndarray) -> str:
    """An SVG filter ``name`` that colours a grey map image (its levels, 0..255) as
    ``colours`` (a :func:`camwidget.render.palette`): the colour from three tables at the
    level; the coverage from a fourth, applied to the level moved into the alpha channel
    (with black, as in :func:`cut_filter`), then the colour kept where it covers."""
    tables = _colour_tables(colours)
    return (
        f'<filter id="{name}" color-interpolation-filters="sRGB" {_REGION}>'
        f'<feComponentTransfer in="SourceGraphic" result="colour">{tables}</feComponentTransfer>'
        f'{_LEVEL_TO_ALPHA}<feComponentTransfer in="level" result="cover"><feFuncA '
        f'type="table" tableValues="{_table(colours[:, 3])}"/></feComponentTransfer>'
        '<feComposite in="colour" in2="cover" operator="in"/></filter>'
    )
