"""The ipympl view: zoom, pan, and the heatmap value under the cursor."""

from __future__ import annotations

import numpy as np


class Inspector:
    """A matplotlib figure of the photo and its heatmap, drawn when the browser asks."""

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
        self.axes.format_coord = self.readout

    def show(self, rgb: np.ndarray, heat: np.ndarray, colormap: str, alpha: float) -> None:
        """Show ``heat`` (H, W) in [0, 1] over ``rgb`` (H, W, 3)."""
        self.values = heat
        if self.photo is None or self.photo.get_array().shape != rgb.shape:
            self.axes.clear()  # a new image size: new artists and a figure of its shape
            self.axes.set_axis_off()
            height, width = rgb.shape[:2]
            self.figure.set_size_inches(width / self.figure.dpi, height / self.figure.dpi)
            self.photo = self.axes.imshow(rgb)
            self.heat = self.axes.imshow(heat, cmap=colormap, vmin=0.0, vmax=1.0)
        else:
            self.photo.set_data(rgb)
            self.heat.set_data(heat)
            self.heat.set_cmap(colormap)
        self.heat.set_alpha(alpha)
        self.canvas.draw_idle()

    def readout(self, x: float, y: float) -> str:
        """The text under the cursor at (x, y): position and heatmap value."""
        if self.values is None:
            return ""
        row, col = round(y), round(x)
        height, width = self.values.shape
        if 0 <= row < height and 0 <= col < width:
            return f"x={col} y={row}  heat={self.values[row, col]:.3f}"
        return ""

    def close(self) -> None:
        """Close the toolbar and the canvas widgets."""
        self.manager.toolbar.close()
        self.canvas.close()
