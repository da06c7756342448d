"""A notebook saved with the panel keeps a picture of it: executed and exported to HTML
(as GitHub, nbviewer or a lesson handout would show it, without a kernel), the quickstart
shows the panel's current picture."""

from __future__ import annotations

import base64
import io
import re

import nbformat
import numpy as np
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from PIL import Image

from camwidget.cli import NOTEBOOKS


def test_an_exported_quickstart_shows_the_panels_current_picture(tmp_path):
    notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    saved = tmp_path / "picture.png"
    notebook.cells.append(  # after every cell: the picture the panel holds at the end
        nbformat.v4.new_code_cell(
            f"from PIL import Image\nImage.fromarray(panel.picture()).save({str(saved)!r})"
        )
    )
    # as JupyterLab saves by default: outputs, no widget state
    client = NotebookClient(
        notebook,
        timeout=600,
        store_widget_state=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    panel_output = notebook.cells[2].outputs[0]
    assert "application/vnd.jupyter.widget-view+json" in panel_output.data
    assert panel_output.data["text/plain"].startswith("camwidget panel: 451×300 image")
    assert "tiger cat" in panel_output.data["text/plain"]  # after the cell that changed it
    html, _ = HTMLExporter().from_notebook_node(notebook)
    pictures = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(pictures) >= 2  # the quickstart panel and the own-model panel
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(pictures[0]))))
    np.testing.assert_array_equal(shown, np.asarray(Image.open(saved)))
