"""Work beside the kernel: one thread that runs jobs in order, each cancellable between
its batches and telling its progress.

torch releases the GIL in its kernels, so the thread that submitted a job (Jupyter's
main thread, answering the page) stays free while the job runs. A job's ``progress``
is what the engine calls after each batch of model passes; it raises
:class:`Cancelled` once the job is cancelled, which unwinds the engine's hooks and
model guard and leaves nothing cached.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Cancelled(Exception):
    """The job was cancelled: a newer request superseded it, or the user stopped it. Not
    a :class:`CamwidgetError`, so that nothing on the way takes it for a failure."""


class Job:
    """One piece of work: ``run(job)`` in the worker. ``title`` says what runs (e.g.
    ``Score-CAM``); ``on_progress(job, done, total)`` hears of each step; ``fraction`` done and
    ``seconds_left`` (None until known) describe it; ``error`` is what it raised."""

    def __init__(
        self,
        run: Callable[[Job], object],
        title: str = "",
        on_progress: Callable[[Job, int, int], None] | None = None,
    ) -> None:
        self.run, self.title, self.on_progress = run, title, on_progress
        self.fraction, self.seconds_left = 0.0, None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._started = 0.0

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop at the next step (a job not yet started does not start)."""
        self._cancel.set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the job is cancelled."""
        if self._cancel.is_set():
            raise Cancelled(f"{self.title or 'the work'} was cancelled")

    def progress(self, done: int, total: int) -> None:
        """After a step: ``done`` of ``total`` finished. Raises once cancelled."""
        self.check()
        self.fraction = done / total if total else 1.0
        elapsed = time.perf_counter() - self._started
        if 0 < self.fraction < 1:
            self.seconds_left = elapsed * (1 - self.fraction) / self.fraction
        if self.on_progress is not None:
            self.on_progress(self, done, total)

    def describe(self) -> str:
        """E.g. ``Score-CAM · 35 % · 3 s left``."""
        text = f"{self.title or 'working'} · {self.fraction * 100:.0f} %"
        if self.seconds_left is not None:
            text += f" · {self.seconds_left:.0f} s left"
        return text

    def _execute(self) -> None:
        self._started = time.perf_counter()
        try:
            self.check()
            self.run(self)
        except BaseException as error:  # kept for whoever waits; the worker goes on
            self.error = error
        finally:
            self.done.set()


class Worker:
    """A thread that runs submitted jobs one after another, started with the first."""

    def __init__(self, name: str = "camwidget-worker") -> None:
        self.name = name
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: list[Job] = []

    def submit(self, job: Job) -> Job:
        """Queue ``job``; it runs after those before it."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._pending.append(job)
        self._jobs.put(job)
        return job

    @property
    def pending(self) -> list[Job]:
        """The jobs submitted and not finished, oldest first."""
        with self._lock:
            return [job for job in self._pending if not job.done.is_set()]

    def in_worker(self) -> bool:
        """Whether the caller runs in this worker's thread."""
        return threading.current_thread() is self._thread

    def cancel(self) -> None:
        """Cancel every pending job."""
        for job in self.pending:
            job.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far has finished; False on time-out. From
        inside the worker it returns at once (its own jobs cannot finish first)."""
        if self.in_worker():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.done.wait(left):
                return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what is pending and stop the thread (it ends after the current step)."""
        self.cancel()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job._execute()
            with self._lock:
                self._pending = [j for j in self._pending if not j.done.is_set()]


class Slots:
    """A cap on the batched work (perturbation methods, metrics) that runs at once in
    this process, e.g. on a classroom's server; ``limit`` None: no cap. A thread that
    holds a slot takes no second one."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._running = 0
        self._free = threading.Condition()
        self._held = threading.local()

    @contextmanager
    def taken(self, waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold a slot while the block runs; until one is free, ``waiting()`` is called
        about every 0.2 s (it may raise :class:`Cancelled`)."""
        if getattr(self._held, "slot", False):
            yield
            return
        while True:
            with self._free:
                if self.limit is None or self._running < self.limit:
                    self._running += 1
                    break
                self._free.wait(0.2)
            if waiting is not None:
                waiting()
        self._held.slot = True
        try:
            yield
        finally:
            self._held.slot = False
            with self._free:
                self._running -= 1
                self._free.notify()


#: The process's cap on batched work (none unless set: ``camwidget app --slow-jobs``).
BATCHED_WORK = Slots()
#: A server's cap by default: one job per two cores (each job's passes use the cores
#: torch gives them).
SERVER_SLOTS = max(1, (os.cpu_count() or 2) // 2)
