"""The panel as a picture: one image of what it shows, and the static copy that a saved
notebook keeps (updated after each cell that changed the panel)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .. import render
from ..errors import CamwidgetError
from .views import View


def compose(views: Sequence[View], colormap: str, summary: str) -> np.ndarray:
    """The frames of ``views`` side by side, the colour legend of the first below them,
    and a caption: ``summary`` and what the colours mean."""
    views = [view for view in views if view.frame is not None]
    if not views:
        raise CamwidgetError("no image yet: call set_image(...) or upload one")
    height = max(view.frame.shape[0] for view in views)
    frames = [np.pad(v.frame, ((0, height - v.frame.shape[0]), (0, 4), (0, 0))) for v in views]
    row = np.concatenate(frames, axis=1)
    main = views[0]
    colormap = render.DIVERGING if main.signed else colormap  # as the panel's legend
    return render.with_legend(row, colormap, main.zero, [summary], main.meaning)


class StaticPicture:
    """The displays of a panel, kept up to date with its picture: ``bundle()`` makes the
    display data; after each cell that changed the panel (``painted`` moved on), every
    display is updated."""

    def __init__(self, bundle: Callable[[], dict | None], alive: Callable[[], bool]) -> None:
        self.bundle, self.alive = bundle, alive
        self.painted = self._published = 0
        self._displays: list = []

    def display(self) -> None:
        """Display the panel with an id, so that its saved output can be updated."""
        from IPython import get_ipython
        from IPython.display import display

        self._displays.append(display(self.bundle(), raw=True, display_id=True))
        self._published = self.painted
        shell = get_ipython()
        if shell is not None and len(self._displays) == 1:
            shell.events.register("post_execute", self.update)

    def update(self) -> None:
        """Refresh every display where the panel changed since the last."""
        if self.painted == self._published or not self.alive():
            return
        self._published = self.painted
        bundle = self.bundle()
        for handle in self._displays:
            handle.update(bundle, raw=True)

    def close(self) -> None:
        """Stop following the panel."""
        if self._displays:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None:
                shell.events.unregister("post_execute", self.update)
            self._displays.clear()
