"""A gallery of an audited dataset: thumbnails with their maps, worst first.

:class:`Gallery` shows one page of an :class:`~camwidget.Audit` as a grid of overlays,
sorted and filtered by the audit's numbers, with a confusion table on top whose cells
filter the grid. ``open`` under a thumbnail explains that image in a
:class:`~camwidget.CAMWidget` below (``open_image``; the same explainer: one forward). Colormap and
opacity restyle the thumbnails from the stored maps: no model pass. ``export`` writes
the filtered set as an HTML report that opens without Jupyter.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from PIL import Image
from traitlets import Bool, Float, Int, Unicode, observe

from .. import images, render
from ..audit import Audit, explain_dataset
from ..errors import CamwidgetError
from ..explainer import Explainer
from .layout import wrapping
from .panel import CAMWidget
from .styles import (
    OPACITY_STEP,
    filter_holder,
    look_filters,
    look_follower,
    look_rule,
    unique_class,
)
from .views import display_frame

#: Sort orders: name -> (column, ascending); "wrong first" also puts mistakes first.
ORDERS = {
    "wrong first": ("loss", False),
    "lowest confidence": ("probability", True),
    "highest loss": ("loss", False),
    "most border mass": ("border", False),
    "source order": ("index", True),
}
ALL = -2  # a class filter that lets every class through
OTHER = -3  # the confusion table's classes beyond the most frequent ones
_FILTERS = ("order", "true_class", "predicted_class", "wrong_only", "page_size")
CONFUSION_CLASSES = 8  # the most frequent classes in the confusion table; the rest: other


class Gallery(widgets.VBox):
    """Thumbnails of ``audit`` (an :class:`~camwidget.Audit`, a Parquet path, or a source
    to audit now with ``audit_options`` for :func:`~camwidget.explain_dataset`) for
    ``explainer`` (an :class:`~camwidget.Explainer` or a model).

    Traits: ``order`` (see :data:`ORDERS`), ``true_class`` and ``predicted_class``
    (class indices; -2: all), ``wrong_only``, ``page``, ``page_size`` (24, 36 or 48),
    ``colormap`` and ``alpha``. ``panel`` is the :class:`CAMWidget` last opened.
    """

    order = Unicode("wrong first")
    true_class = Int(ALL)
    predicted_class = Int(ALL)
    wrong_only = Bool(False)
    page = Int(0)
    page_size = Int(24)
    colormap = Unicode("viridis")
    alpha = Float(0.5)

    def __init__(
        self,
        explainer: Explainer | torch.nn.Module,
        audit: Audit | str | Path | object,
        *,
        labels: list[str] | None = None,
        thumbnail: int = 128,
        **audit_options: object,
    ) -> None:
        if not isinstance(explainer, Explainer):
            explainer = Explainer(explainer, labels=labels)
        if isinstance(audit, (str, Path)) and str(audit).endswith(".parquet"):
            audit = Audit.open(audit)
        elif not isinstance(audit, Audit):
            audit = explain_dataset(explainer, audit, **audit_options)
        self.explainer, self.audit, self.thumbnail = explainer, audit, thumbnail
        self.table = audit.to_pandas()
        self.panel: CAMWidget | None = None
        self._pictures: dict[int, np.ndarray] = {}  # thumbnails of the photos, by row
        self.grid = widgets.GridBox(
            layout=widgets.Layout(grid_template_columns=f"repeat(6, {thumbnail + 16}px)")
        )
        self.confusion = widgets.GridBox()
        self.status = widgets.HTML()
        self.below = widgets.VBox()
        self.sheet = widgets.HTML(layout=widgets.Layout(display="none"))  # the opacity
        self.colours = filter_holder()  # the SVG filter that colours the maps
        super().__init__()
        self._css = unique_class("camwidget-gallery")
        self._cards = unique_class("camwidget-cards")  # the maps' scope: not a panel below
        self.add_class("camwidget-gallery")
        self.add_class(self._css)
        self.grid.add_class(self._cards)
        self._controls = self._build_controls()
        self.children = self._layout()
        self._draw_confusion()
        self._restyle()
        self._show()

    # ----------------------------------------------------------------- public

    @property
    def controls(self) -> Mapping[str, widgets.Widget]:
        """The gallery's controls by name (read-only), e.g. ``controls["sort"]``."""
        return MappingProxyType(self._controls)

    @property
    def shown(self) -> pd.DataFrame:
        """The audit's rows that pass the filters, in the chosen order (all pages)."""
        frame = self.table
        if self.true_class != ALL:
            frame = frame[frame["label"] == self.true_class]
        if self.predicted_class != ALL:
            frame = frame[frame["predicted"] == self.predicted_class]
        if self.wrong_only:
            frame = frame[~frame["correct"]]
        column, ascending = ORDERS[self.order]
        keys, orders = [column, "index"], [ascending, True]
        if self.order == "wrong first":
            keys, orders = ["correct", *keys], [True, *orders]
        return frame.sort_values(keys, ascending=orders, na_position="last", kind="stable")

    @property
    def pages(self) -> int:
        """How many pages the filtered rows fill."""
        return max(1, -(-len(self.shown) // self.page_size))

    def open_image(self, row: int, *, background: bool = False) -> CAMWidget:
        """Explain image ``row`` (its index in the source) in a panel below the grid as
        the audit saw it (resized to the audit's input size), at the audit's layer, with
        its method and target. With ``background`` (a click on a thumbnail) the panel
        appears at once and its passes run in its worker."""
        found = self.table[self.table["index"] == row]
        if found.empty:
            raise CamwidgetError(f"the audit has no image {row}")
        record = found.iloc[0]
        if not record["path"]:
            raise CamwidgetError("this image has no path to open: audit a folder or paths")
        if self.panel is not None:
            self.panel.close()
        settings = self.audit.settings
        target = int(record["target"]) if record["target"] >= 0 else None
        self.panel = CAMWidget(
            self.explainer,
            layer=settings.get("layer"),
            method=settings.get("method", "gradcam"),
            colormap=self.colormap,
            alpha=self.alpha,
        )
        self.panel.set_image(self._as_audited(record["path"]), target, background=background)
        self.below.children = [self.panel]
        return self.panel

    def export(self, path: str | Path) -> Path:
        """Write the filtered rows (thumbnails with overlays and their numbers) as one
        self-contained HTML file; return its path."""
        path = Path(path)
        rows = [self._report_row(record) for _, record in self.shown.iterrows()]
        settings = self.audit.settings
        title = f"camwidget audit: {settings.get('method')} at {settings.get('layer')}"
        head = "".join(
            f"<th>{name}</th>"
            for name in ("image", "path", "true", "predicted", "p", "loss", "border")
        )
        path.write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif}td{padding:4px;vertical-align:top}"
            ".wrong{color:#b00}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{len(rows)} images</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table></body></html>",
            encoding="utf-8",
        )
        return path

    def close(self) -> None:
        """Close the grid, its controls and the panel below."""
        if getattr(self, "panel", None) is not None:
            self.panel.close()
        for control in getattr(self, "_controls", {}).values():
            control.close()
        super().close()

    # ----------------------------------------------------------------- building

    def _build_controls(self) -> dict[str, widgets.Widget]:
        classes = sorted(set(self.table["label"]) | set(self.table["predicted"]))
        options = [("all", ALL)] + [(self._name(c), int(c)) for c in classes if c >= 0]
        controls = {
            "order": widgets.Dropdown(options=list(ORDERS), description="sort"),
            "true_class": widgets.Dropdown(options=options, description="true class"),
            "predicted_class": widgets.Dropdown(options=options, description="predicted"),
            "wrong_only": widgets.Checkbox(description="mistakes only", indent=False),
            "page_size": widgets.Dropdown(options=[24, 36, 48], description="per page"),
            "colormap": widgets.Dropdown(options=list(render.COLORMAPS), description="colormap"),
            "alpha": widgets.FloatSlider(min=0, max=1, step=OPACITY_STEP, description="opacity"),
            "previous": widgets.Button(description="◀ previous"),
            "next": widgets.Button(description="next ▶"),
            "export": widgets.Button(description="export HTML", icon="download"),
        }
        for trait in (*_FILTERS, "colormap", "alpha"):
            widgets.link((self, trait), (controls[trait], "value"))  # the trait's value first
        controls["previous"].on_click(lambda _: self._turn(-1))
        controls["next"].on_click(lambda _: self._turn(1))
        controls["export"].on_click(lambda _: self._say_exported())
        return controls

    def _layout(self) -> list[widgets.Widget]:
        c = self._controls
        return [
            widgets.HTML("<b>confusion</b> (rows: true class, columns: predicted; click a cell)"),
            self.confusion,
            wrapping([c["order"], c["true_class"], c["predicted_class"], c["wrong_only"]]),
            wrapping([c["previous"], c["next"], c["page_size"], c["colormap"], c["alpha"]]),
            self.status,
            self.grid,
            c["export"],
            self.below,
            self.sheet,
            self.colours,
            look_follower(self._css, c["alpha"], c["colormap"], [self._cards]),
        ]

    def _draw_confusion(self) -> None:
        """A table of counts (true x predicted) over the most frequent classes; a cell's
        button filters the grid to that pair."""
        counts = pd.concat([self.table["label"], self.table["predicted"]]).value_counts()
        kept = [int(c) for c in counts.index if c >= 0][:CONFUSION_CLASSES]
        labels = [self._fold(c, kept) for c in self.table["label"]]
        predicted = [self._fold(c, kept) for c in self.table["predicted"]]
        table = pd.crosstab(pd.Series(labels, name="t"), pd.Series(predicted, name="p"))
        rows, columns = list(table.index), list(table.columns)
        cells: list[widgets.Widget] = [widgets.HTML("")]
        cells += [widgets.HTML(f"<small>{html.escape(self._name(c))}</small>") for c in columns]
        for true in rows:
            cells.append(widgets.HTML(f"<small>{html.escape(self._name(true))}</small>"))
            for guess in columns:
                cells.append(self._cell(true, guess, int(table.loc[true, guess])))
        self.confusion.children = cells
        self.confusion.layout = widgets.Layout(
            grid_template_columns=f"160px repeat({len(columns)}, 72px)"
        )

    def _cell(self, true: int, guess: int, count: int) -> widgets.Button:
        button = widgets.Button(
            description=str(count),
            tooltip=f"true {self._name(true)}, predicted {self._name(guess)}",
            button_style="success" if true == guess else ("danger" if count else ""),
            layout=widgets.Layout(width="68px"),
        )
        button.on_click(lambda _: self._filter(true, guess))
        return button

    # ----------------------------------------------------------------- updates

    @observe(*_FILTERS)
    def _filters_changed(self, change: Mapping) -> None:
        if self.page:
            self.page = 0  # the page observer shows it
        else:
            self._show()

    @observe("page")
    def _page_changed(self, change: Mapping) -> None:
        self._show()

    @observe("colormap", "alpha")
    def _look_changed(self, change: Mapping) -> None:
        """Stored maps, no model pass and no image: the page colours each thumbnail's
        levels with the filter and stacks them over the photos, as in the panel."""
        self._restyle()
        if self.panel is not None:
            self.panel.colormap, self.panel.alpha = self.colormap, self.alpha

    def _filter(self, true: int, guess: int) -> None:
        """Show one cell of the confusion table ("other": that side unfiltered)."""
        true, guess = (ALL if c == OTHER else c for c in (true, guess))
        with self.hold_trait_notifications():
            self.true_class, self.predicted_class = true, guess

    def _turn(self, step: int) -> None:
        self.page = min(max(0, self.page + step), self.pages - 1)

    def _show(self) -> None:
        """The current page's thumbnails, and where the page lies in the set."""
        shown = self.shown
        start = self.page * self.page_size
        rows = shown.iloc[start : start + self.page_size]
        self.grid.children = [self._card(record) for _, record in rows.iterrows()]
        wrong = int((~shown["correct"]).sum())
        self.status.value = (
            f"{len(shown)} of {len(self.table)} images ({wrong} wrong) · page "
            f"{self.page + 1} of {self.pages} · {html.escape(self.order)}"
        )

    def _restyle(self) -> None:
        self.colours.value = look_filters(self._cards, self.colormap, 0.0, signed=False)
        self.sheet.value = look_rule(self._cards, self.alpha)

    def _card(self, record: pd.Series) -> widgets.VBox:
        row = int(record["index"])
        photo, heat = (
            widgets.Image(format=f, value=v, layout=widgets.Layout(grid_area="1 / 1", margin="0"))
            for f, v in (
                ("jpeg", render.encode(self._picture(row), "jpeg")),
                ("png", self._map(row)),
            )
        )
        photo.add_class("camwidget-photo")
        heat.add_class("camwidget-map")
        picture = widgets.GridBox([photo, heat], layout=widgets.Layout(width=f"{self.thumbnail}px"))
        mark = "✓" if record["correct"] else "✗"
        caption = widgets.HTML(
            f"<div style='line-height:1.3;font-size:85%'>{mark} "
            f"{html.escape(self._name(record['label']))} → "
            f"<b>{html.escape(self._name(record['predicted']))}</b><br>p = "
            f"{record['probability']:.2f} · loss {record['loss']:.2f} · border "
            f"{record['border']:.2f}</div>",
            layout=widgets.Layout(flex="1 1 auto"),  # the buttons of a row line up below
        )
        button = widgets.Button(description="open", tooltip="explain it in a panel below")
        button.on_click(lambda _: self.open_image(row, background=True))
        card = widgets.VBox([picture, caption, button])
        card.row, card.map = row, heat
        return card

    # ----------------------------------------------------------------- pictures

    def _heat(self, row: int) -> np.ndarray:
        """The stored map of row ``row`` at thumbnail size, in [0, 1]."""
        raw = self.audit[self._position(row)].raw
        return render.normalise(render.upsample(raw, self._picture(row).shape[:2]))

    def _map(self, row: int) -> bytes:
        """The map of row ``row`` as the page gets it: its levels, a grey PNG."""
        return render.encode(render.levels(self._heat(row)), "png")

    def _overlay(self, row: int) -> bytes:
        """The thumbnail of row ``row`` with its map composed, as JPEG bytes (the report)."""
        blended = render.blend(self._picture(row), self._heat(row), self.colormap, self.alpha)
        return render.encode(blended, "jpeg")

    def _as_audited(self, path: str) -> Image.Image:
        """The photo at ``path`` resized as the audit resized it for the model."""
        height, width = self.audit.settings.get("size", [224, 224])
        photo = Image.fromarray(images.to_rgb(path))
        return photo.resize((width, height), Image.Resampling.BILINEAR)

    def _picture(self, row: int) -> np.ndarray:
        """The photo of row ``row`` as the audit saw it, at thumbnail size (read once)."""
        if row not in self._pictures:
            path = self.table.loc[self.table["index"] == row, "path"].iloc[0]
            if path:
                rgb = np.asarray(self._as_audited(path))
            else:  # a Dataset's image without a path: grey
                rgb = np.full((*self.audit.settings.get("size", [224, 224]), 3), 128, np.uint8)
            self._pictures[row] = display_frame(rgb, self.thumbnail)
        return self._pictures[row]

    def _position(self, row: int) -> int:
        return int(np.flatnonzero(self.table["index"].to_numpy() == row)[0])

    def _report_row(self, record: pd.Series) -> str:
        picture = base64.b64encode(self._overlay(int(record["index"]))).decode("ascii")
        wrong = "" if record["correct"] else " class='wrong'"
        cells = [
            f"<img src='data:image/jpeg;base64,{picture}' width='{self.thumbnail}'>",
            html.escape(str(record["path"])),
            html.escape(self._name(record["label"])),
            html.escape(self._name(record["predicted"])),
            f"{record['probability']:.3f}",
            f"{record['loss']:.3f}",
            f"{record['border']:.2f}",
        ]
        return f"<tr{wrong}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"

    def _say_exported(self) -> None:
        written = self.export("camwidget-audit.html")
        self.status.value += f" · exported to {html.escape(str(written.resolve()))}"

    def _name(self, index: object) -> str:
        index = int(index)
        if index == -1:
            return "unknown"
        if index == OTHER:
            return "other"
        return self.explainer.label(index)

    @staticmethod
    def _fold(index: int, kept: list[int]) -> int:
        """A class as the confusion table shows it: itself, or OTHER."""
        return int(index) if int(index) in kept or int(index) == -1 else OTHER
