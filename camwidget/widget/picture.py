"""The panel as a picture: one image of what it shows, and the static copy that a saved
notebook keeps (updated after each cell that changed the panel)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .. import render
from ..errors import CamwidgetError
from .views import View


def compose(views: Sequence[View], summary: str) -> np.ndarray:
    """The frames of ``views`` side by side, the colour legend of the first below them,
    and a caption: ``summary`` and what the colours mean."""
    views = [view for view in views if view.frame is not None]
    if not views:
        raise CamwidgetError("no image yet: call set_image(...) or upload one")
    height = max(view.frame.shape[0] for view in views)
    frames = [np.pad(v.frame, ((0, height - v.frame.shape[0]), (0, 4), (0, 0))) for v in views]
    row = np.concatenate(frames, axis=1)
    main = views[0]
    return render.with_legend(row, main.colormap, main.zero, [summary], main.meaning)


class StaticPicture:
    """The displays of a panel, kept up to date with its picture: ``bundle()`` makes the
    display data; after each cell run once the panel changed (``painted`` moved on),
    every display is updated (``post_run_cell``). Never after a change made in the page
    (a comm message, which IPython follows with ``post_execute`` too): an update makes
    the front end render the live panel anew, a whole panel per change, with the focus
    taken from the control in use; the next cell run publishes it."""

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
            shell.events.register("post_run_cell", self.update)

    def update(self, result: object = None) -> None:
        """Refresh every display where the panel changed since the last (``result``:
        the cell's, unused)."""
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
                shell.events.unregister("post_run_cell", self.update)
            self._displays.clear()
