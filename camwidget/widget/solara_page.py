"""The classroom app as a Solara page (``camwidget app`` serves it: see
:mod:`camwidget.widget.solara_server`). Solara's virtual kernels serve every student
from one process, each with a page of :func:`camwidget.widget.classroom.student_app`,
closed when the student's kernel is (after the idle time-out, ``--idle``), its memory
handed back."""

from __future__ import annotations

from functools import partial

import solara
from solara.server import kernel_context

from .classroom import leave, student_app


@solara.component
def Page() -> None:
    """One student's page."""

    def opened() -> tuple:
        page, panel = student_app()
        kernel_context.get_current_context().on_close(partial(leave, panel))
        return page, panel

    page, _ = solara.use_memo(opened, [])
    solara.display(page)
