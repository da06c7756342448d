"""The faithfulness view: how much of the score the shown map's pixels carry.

For the current map: the deletion and insertion curves (RISE), their AUCs and Average
Drop. On demand, since it costs model passes: every method that applies at the current
layer and target, ranked by insertion − deletion AUC, with random maps of the layer's
smoothness as the floor. Results are cached by (image, target, layer, method).
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Hashable

import ipywidgets as widgets
import numpy as np

from .. import methods, metrics
from ..explainer import Explainer, Explanation, PreparedImage, Progress
from ..targets import key as target_key

#: How many random maps make the floor of the ranking.
RANDOM_DRAWS = 3


class FaithfulnessView:
    """The widgets (``box``) and the cached numbers of the faithfulness view."""

    def __init__(self) -> None:
        self.plot = widgets.Image(format="png", layout=widgets.Layout(width="360px"))
        self.summary = widgets.HTML()
        self.rank_button = widgets.Button(
            description="rank methods",
            icon="list-ol",
            tooltip="score every method at this layer and class by insertion − deletion AUC "
            "(costs about 40 model passes per method)",
        )
        self.progress = widgets.IntProgress(
            description="ranking", layout=widgets.Layout(display="none")
        )
        self.table = widgets.HTML()
        self.box = widgets.VBox(
            [widgets.HBox([self.plot, self.summary]), self.rank_button, self.progress, self.table],
            layout=widgets.Layout(display="none"),
        )
        self._curves: dict[Hashable, tuple[metrics.Curve, metrics.Curve, float]] = {}
        self._rankings: dict[Hashable, str] = {}

    def compute(
        self,
        explainer: Explainer,
        image: PreparedImage,
        e: Explanation,
        progress: Progress | None = None,
        live: bool = False,
    ) -> None:
        """Compute the numbers of ``e``'s map (once per map); ``live``: draw the curves
        as their points are scored, and say so."""
        drawn = None
        if live:

            def drawn(deleted: metrics.Curve, inserted: metrics.Curve, done: float) -> None:
                self.plot.value = _plot(deleted, inserted)
                self.summary.value = (
                    f"<b>{html.escape(e.title)}</b> at <code>{html.escape(e.layer)}</code><br>"
                    f"<i>computing: {done:.0%} of the perturbed inputs scored</i>"
                )

        self._numbers(explainer, image, e, progress, drawn)

    def show(self, explainer: Explainer, image: PreparedImage, e: Explanation) -> None:
        """The curves, AUCs and Average Drop of ``e``'s map (computed once per map)."""
        deleted, inserted, drop = self._numbers(explainer, image, e)
        self.plot.value = _plot(deleted, inserted)
        self.summary.value = (
            f"<b>{html.escape(e.title)}</b> at <code>{html.escape(e.layer)}</code><br>"
            f"insertion AUC {inserted.auc:.3f} (higher: the map finds what suffices)<br>"
            f"deletion AUC {deleted.auc:.3f} (lower: the map finds what is needed)<br>"
            f"insertion − deletion {inserted.auc - deleted.auc:+.3f}<br>"
            f"Average Drop {drop:.1%} (the score on the image × the map)"
        )
        self.table.value = self._rankings.get(_key(image, e, "*"), "")

    def rank(
        self,
        explainer: Explainer,
        image: PreparedImage,
        e: Explanation,
        explain: Callable[[str], Explanation],
        progress: Progress | None = None,
    ) -> None:
        """Every method applicable at ``e``'s layer, explained by ``explain(method)``,
        ranked by insertion − deletion AUC against random maps of the same smoothness;
        ``progress`` hears of each map scored (and may raise to stop). The floor comes
        first, then the methods, those that run many passes last; the table shows each
        as it is scored, so a ranking stopped early keeps what it found."""
        names = [name for name in methods.REGISTRY if explainer.why_not(name, e.layer) is None]
        names.sort(key=lambda name: methods.get(name).perturbing)  # the slow ones last
        self.progress.max, self.progress.value = len(names) + RANDOM_DRAWS, 0
        self.progress.layout.display = "flex"
        try:
            floor = []
            for seed in range(RANDOM_DRAWS):
                noise = metrics.random_heatmap(e.raw.shape, e.heatmap.shape, seed)
                deleted, inserted = metrics.deletion_insertion(explainer, image, noise, e.target)
                floor.append(inserted.auc - deleted.auc)
                self._step(progress)
            rows = [(f"random maps ({RANDOM_DRAWS} draws, the floor)", float(np.mean(floor)))]
            for scored, name in enumerate(names, 1):
                other = explain(name)
                deleted, inserted, _ = self._numbers(explainer, image, other)
                rows.append((other.title, inserted.auc - deleted.auc))
                self.table.value = _table(rows, pending=len(names) - scored)
                self._step(progress)
        finally:
            self.progress.layout.display = "none"
        self._rankings[_key(image, e, "*")] = self.table.value

    def _step(self, progress: Progress | None) -> None:
        self.progress.value += 1
        if progress is not None:
            progress(self.progress.value, self.progress.max)

    def _numbers(
        self,
        explainer: Explainer,
        image: PreparedImage,
        e: Explanation,
        progress: Progress | None = None,
        drawn: metrics.Drawn | None = None,
    ) -> tuple[metrics.Curve, metrics.Curve, float]:
        """Deletion, insertion and Average Drop of ``e``'s map, computed once."""
        key = _key(image, e, e.method)
        if key not in self._curves:
            deleted, inserted = metrics.deletion_insertion(
                explainer, image, e.heatmap, e.target, progress=progress, drawn=drawn
            )
            drop = metrics.average_drop(explainer, image, e.heatmap, e.target)
            self._curves[key] = (deleted, inserted, drop)
        return self._curves[key]

    def clear(self) -> None:
        """Forget every cached number."""
        self._curves.clear()
        self._rankings.clear()


def _key(image: PreparedImage, e: Explanation, method: str) -> Hashable:
    target = ("class", e.target) if isinstance(e.target, int) else target_key(e.target)
    return (image.key, target, e.layer, method)


def _plot(deleted: metrics.Curve, inserted: metrics.Curve) -> bytes:
    """The two curves as a small PNG (matplotlib, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.6, 2.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in (("deletion", deleted), ("insertion", inserted)):
        whole = len(curve.fractions) and curve.fractions[-1] == 1.0
        axes.plot(
            curve.fractions, curve.scores, label=f"{name} ({curve.auc:.3f})" if whole else name
        )
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("fraction of pixels, highest heat first", fontsize=8)
    axes.set_ylabel("score", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _table(rows: list[tuple[str, float]], pending: int = 0) -> str:
    """The ranking as an HTML table, best first; ``pending``: methods still to score."""
    ranked = sorted(rows, key=lambda row: -row[1])
    lines = "".join(
        f"<tr><td>{i}</td><td>{html.escape(title)}</td><td>{value:+.3f}</td></tr>"
        for i, (title, value) in enumerate(ranked, 1)
    )
    more = f"<caption>{pending} more being scored…</caption>" if pending else ""
    return (
        f"<table>{more}<tr><th>#</th><th>method</th><th>insertion − deletion AUC</th></tr>"
        f"{lines}</table>"
    )
