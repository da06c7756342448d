"""The audit's Ray engine: the same per-batch step on Ray Data actors.

Each actor holds one copy of the model (an :class:`~camwidget.Explainer` built from the
pickled model) and the image reader, and runs the audit's per-batch step (``step``:
:func:`camwidget.audit.explain_rows`) on the indices it is given: it reads its own
images, so only indices and results travel. The driver writes the results, in source
order, to the same store as the local engine.

On one machine camwidget starts a local Ray with every core; to use a cluster, connect
first (``ray.init(address="ray://head-node:10001")``, or set ``RAY_ADDRESS``) and the
actors go there: each needs camwidget and the model's code installed, and read access
to the images' paths. :class:`RayEngine` says how many actors, their CPUs and GPUs,
and how long they may take to start: a cluster that cannot start them (too few CPUs or
GPUs, memory refused) or does not answer fails the audit within ``start_timeout``
seconds, naming Ray's cause; the batches done by then stay in the store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CamwidgetError
from .explainer import Explainer

Step = Callable[..., dict[str, np.ndarray]]


@dataclass(frozen=True)
class RayEngine:
    """How an audit runs on Ray (``explain_dataset(..., engine=RayEngine(...))``;
    ``engine="ray"`` is ``RayEngine()``).

    ``actors``: model copies (default: one per two cores, at least 2); ``cpus`` and
    ``gpus`` per actor (default: the cores shared out; one GPU each where CUDA is
    available); ``address``: a cluster to connect to (default: ``RAY_ADDRESS``, else a
    local Ray with every core); ``start_timeout``: seconds for Ray to connect and
    start the actors before the audit fails with Ray's cause.
    """

    actors: int | None = None
    cpus: float | None = None
    gpus: float | None = None
    address: str | None = None
    start_timeout: float = 120.0


class _Actor:
    """One model copy (``model`` arrives pickled): runs ``step`` on the batches of
    indices it is handed, reading the images itself."""

    def __init__(
        self,
        model: torch.nn.Module,
        explainer: dict,
        data: object,
        step: Step,
        settings: tuple,
        threads: int,
    ) -> None:
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.explainer = Explainer(model.to(device), **explainer)
        self.data, self.step, self.settings = data, step, settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in batch["index"]]
        inputs, labels, _ = self.data.collate([self.data[i] for i in indices])
        columns = self.step(self.explainer, inputs, labels.tolist(), indices, *self.settings)
        return columns | {"path": self.data.paths(indices)}


def run(
    explainer: Explainer,
    data: object,
    step: Step,
    settings: tuple,
    batch_size: int,
    sink: object,
    bar: object,
    engine: RayEngine,
) -> None:
    """Explain ``data`` (item i -> (input, label, index), with ``paths(indices)``) on Ray
    Data actors, each running ``step(explainer, inputs, labels, indices, *settings)``,
    and ``append`` the rows to ``sink`` in source order."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise CamwidgetError(
            "engine='ray' needs Ray, an optional extra: pip install 'camwidget[ray]'"
        ) from error
    _connect(ray, engine)
    results, asked = _pipeline(ray, explainer, data, step, settings, batch_size, engine)
    try:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            sink.append({k: np.asarray(v) for k, v in batch.items()})
            bar.update(len(batch["index"]))
    except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorDiedError) as error:
        raise CamwidgetError(
            f"Ray could not start {asked} within {engine.start_timeout:g} s; the cluster "
            f"has {_resources(ray.available_resources())} free. Ray says: {error}"
        ) from error


def _pipeline(
    ray: object,
    explainer: Explainer,
    data: object,
    step: Step,
    settings: tuple,
    batch_size: int,
    engine: RayEngine,
) -> tuple[object, str]:
    """The Ray Data pipeline over ``data``'s indices, and the actors it asks for in words."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = engine.start_timeout  # then fail, not wait for ever
    cores = int(ray.cluster_resources().get("CPU", os.cpu_count() or 2))
    count = engine.actors or max(2, cores // 2)
    cpus = engine.cpus or max(1, cores // count)
    gpus = engine.gpus if engine.gpus is not None else float(torch.cuda.is_available())
    results = ray.data.from_items([{"index": i} for i in range(len(data))]).map_batches(
        _Actor,
        batch_size=max(1, batch_size),
        compute=ray.data.ActorPoolStrategy(size=count),
        num_cpus=cpus,
        num_gpus=gpus,
        fn_constructor_kwargs={
            "model": explainer.model,  # pickled: each actor has its own copy
            "explainer": _settings(explainer),
            "data": data,
            "step": step,
            "settings": settings,
            "threads": max(1, int(cpus)),
        },
    )
    return results, f"{count} actors with {cpus:g} CPUs and {gpus:g} GPUs each"


def _connect(ray: object, engine: RayEngine) -> None:
    """Start a local Ray, or connect to ``engine.address`` (or ``RAY_ADDRESS``) within
    ``engine.start_timeout`` seconds (Ray itself would keep trying for ever)."""
    if ray.is_initialized():
        return
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    address = engine.address or os.environ.get("RAY_ADDRESS")
    if address is None:  # in this thread: Ray's processes end when the thread ends
        ray.init(num_cpus=os.cpu_count() or 2, **options)
        return
    failure: list[BaseException] = []

    def connect() -> None:
        try:
            ray.init(address=address, **options)
        except Exception as error:  # said in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=connect, name="camwidget-ray-connect", daemon=True)
    thread.start()
    thread.join(engine.start_timeout)
    if thread.is_alive():
        raise CamwidgetError(
            f"could not reach the Ray cluster at {address} within {engine.start_timeout:g} s"
        )
    if failure:
        raise CamwidgetError(f"could not connect to the Ray cluster at {address}: {failure[0]}")


def _resources(free: dict[str, float]) -> str:
    """Ray's free resources in words: CPUs, GPUs and memory."""
    gib = free.get("memory", 0.0) / 2**30
    return f"{free.get('CPU', 0):g} CPUs, {free.get('GPU', 0):g} GPUs and {gib:.1f} GiB of memory"


def _settings(explainer: Explainer) -> dict[str, object]:
    """The keywords that make an actor's explainer behave as ``explainer``."""
    return {
        **explainer.settings,
        "reshape": explainer.runner.reshape,
        "output": explainer.runner.output,
        "activation": explainer.activation,
        "preprocess": explainer.preprocess,
        "labels": explainer.labels,
    }
