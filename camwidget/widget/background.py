"""The panel's work beside the kernel: a change from the page that needs the engine runs
in the panel's worker (see :mod:`camwidget.worker`), superseding the work before it;
its progress and partial maps are shown as it goes, and the cancel button stops it. A
change whose answers the panel keeps is shown at once, also while work runs."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable

import ipywidgets as widgets
from torch import Tensor

from ..errors import CamwidgetError
from ..explainer import Progress
from ..worker import Cancelled, Job
from .views import View


class Background:
    """Work from the page run in the panel's worker (a part of :class:`CAMWidget`)."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the work started from the page has finished (False on time-out)."""
        return self._worker.wait(timeout)

    def _run(
        self, work: Callable[[Progress | None, int], None], title: str, at_once: bool = False
    ) -> None:
        """Run ``work(progress, generation)``, superseding the work before it: here and
        now where it needs no pass (``at_once``: its answers are kept) or comes from
        Python, else in the worker."""
        with self._shown:
            self._generation += 1
            generation = self._generation
        self._worker.cancel()
        if at_once:
            work(None, generation)
            self._controls["work"].layout.display = "none"  # what ran is cancelled
            return
        if not self._from_page.on:
            self.wait()  # what was cancelled has let go of the model
            work(self._progress, generation)
            return
        job = Job(lambda job: self._job(work, job, generation), title, self._progress_of)
        self._write_status(running=title)
        self._worker.submit(job)

    def _answered(self, views: Iterable[View]) -> bool:
        """Whether every view to refresh (these, and those left stale) has its answer
        kept, and nothing else needs the engine: then the change is shown at once."""
        if self._controls["faithfulness"].value:
            return False
        with self._shown:
            wanted = [view for view in self.views if view in {*views, *self._stale}]
            return all(self._answer_key(view) in self._answers for view in wanted)

    def _answer_key(self, view: View) -> tuple:
        """What ``view``'s answer depends on, for the image and reference on show."""
        method = self._method_of(view)
        options = repr(self.explainer.options(method))
        return (view.layer, method, repr(view.target), self.region, options)

    def _running(self) -> str | None:
        """The title of the work that runs for the latest request, if any."""
        pending = [job for job in self._worker.pending if not job.cancelled]
        return pending[-1].title if pending and not self._worker.in_worker() else None

    def _preview(
        self, view: View, title: str, generation: int, layer: str, raw: Tensor, fraction: float
    ) -> None:
        """Paint ``view``'s map as it is being made, unless newer work came meanwhile."""
        with self._shown:
            if generation != self._generation:
                return
            done = f"{title} at {layer} · partial: {fraction * 100:.0f} % of the channels scored"
            view.show_partial(raw.cpu().numpy(), self._frame_rgb, done, self._image.frame)
            view.paint(self.colormap, self.alpha, self.threshold)
            self._write_status(running=title)

    def _cancel_clicked(self, button: widgets.Button) -> None:
        """Stop the work; the controls show again what the views show."""
        with self._shown:
            self._generation += 1
            self._stale.clear()
        self._worker.cancel()
        e = self.main_view.explanation
        if e is not None:
            with self._quiet():
                self.layer = e.layer
                self.method = e.method
                self.target = e.target
            self._offer_methods()
            with self._shown:  # a partial map on show gives way to the last whole one
                for view in self.views:
                    if view.explanation is not None:
                        view.show(view.explanation, view.rgb, self.positive_only)
                self._repaint()
        self._controls["work"].layout.display = "none"
        self._write_status()
        self._say("cancelled: the panel shows what it showed before")

    def _job(self, work: Callable, job: Job, generation: int) -> None:
        """``work`` in the worker: a cancelled job shows nothing, an error is told in
        words and the panel goes on."""
        try:
            work(job.progress, generation)
        except Cancelled:
            pass
        except CamwidgetError as error:
            self._say_error(str(error))
        except Exception as error:  # the panel must survive whatever the model does
            self._say_error(f"unexpected error: {type(error).__name__}: {error}")
        with self._shown:
            if any(other is not job for other in self._worker.pending):
                return  # the work after this one tells
            self._controls["work"].layout.display = "none"
            if self.main_view.explanation is not None:
                self._write_status()

    def _progress(self, done: int, total: int) -> None:
        """Passes of work run here (from Python), shown as they go."""
        self._show_progress("", done, total)

    def _progress_of(self, job: Job, done: int, total: int) -> None:
        """Passes of work in the worker: what runs, how far, how long still."""
        self._show_progress(job.describe(), done, total)

    def _show_progress(self, text: str, done: int, total: int) -> None:
        bar = self._controls["progress"]
        with bar.hold_sync():
            bar.max, bar.value = total, done
        self._controls["progress_text"].value = html.escape(text)
        self._controls["cancel"].layout.display = "flex" if text else "none"
        self._controls["work"].layout.display = "none" if done >= total else "flex"
