"""The audit's Ray engine: the same per-batch step on Ray Data actors.

Each actor holds one copy of the model (an :class:`~camwidget.Explainer` built from the
pickled model) and the image reader, and runs the audit's per-batch step (``step``:
:func:`camwidget.audit.explain_rows`) on the indices it is given: it reads its own
images, so only indices and results travel. The driver writes the results, in source
order, to the same store as the local engine.

On one machine camwidget starts a local Ray with every core; to use a cluster, connect
first (``ray.init(address="ray://head-node:10001")``, or set ``RAY_ADDRESS``) and the
actors go there: each needs camwidget and the model's code installed, and read access
to the images' paths. ``actors`` (default: one per two cores, at least 2) and, on GPU
nodes, one GPU per actor.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from .errors import CamwidgetError
from .explainer import Explainer

Step = Callable[..., dict[str, np.ndarray]]


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
        loaded = [self.data[i] for i in indices]
        inputs = torch.stack([inputs for inputs, _, _ in loaded])
        labels = [label for _, label, _ in loaded]
        columns = self.step(self.explainer, inputs, labels, indices, *self.settings)
        return columns | {"path": self.data.paths(indices)}


def run(
    explainer: Explainer,
    data: object,
    step: Step,
    settings: tuple,
    batch_size: int,
    sink: object,
    bar: object,
    actors: int | None = None,
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
    cores = os.cpu_count() or 2
    if not ray.is_initialized():
        ray.init(
            num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    count = actors or max(2, cores // 2)
    threads = max(1, cores // count)
    results = ray.data.from_items([{"index": i} for i in range(len(data))]).map_batches(
        _Actor,
        batch_size=max(1, batch_size),
        compute=ray.data.ActorPoolStrategy(size=count),
        num_cpus=threads,
        num_gpus=1 if torch.cuda.is_available() else 0,
        fn_constructor_kwargs={
            "model": explainer.model,  # pickled: each actor has its own copy
            "explainer": _settings(explainer),
            "data": data,
            "step": step,
            "settings": settings,
            "threads": threads,
        },
    )
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        sink.append({k: np.asarray(v) for k, v in batch.items()})
        bar.update(len(batch["index"]))


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
