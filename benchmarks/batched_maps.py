"""The method maths of a batch: one call over (N, C, h, w) against one call per image.

    python benchmarks/batched_maps.py [--runs 20] [--device cuda]

The maps of every batched method (``Method.batched``) from a batch's activations and
gradients, as ``explain_batch`` and the audit make them, at the shapes of ResNet-50's
``layer4`` (2048 x 7 x 7) and ``layer3`` (1024 x 14 x 14), 16 and 64 images. "per image"
is the path before the methods took batches: the function on each image's (C, h, w)
and the maps stacked; "engine" calls it on as many images at once as
``camwidget.requests.CHUNK`` allows on the device (on a CPU a few images, so that the
temporaries stay in the cache); "all at once" on the whole batch. Each ends with the
maps on the host (one copy). They run in turns; the table gives medians in ms and the
ratio of per image to the engine. glibc keeps freed memory, as under an Explainer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from camwidget import memory, methods
from camwidget.method_context import MethodContext
from camwidget.requests import CHUNK

SHAPES = {"layer4": (2048, 7, 7), "layer3": (1024, 14, 14)}
METHODS = ("gradcam", "gradcam++", "layercam", "xgradcam", "eigencam", "fem", "cam")


def contenders(spec: methods.Method, a: torch.Tensor, g: torch.Tensor) -> dict[str, Callable]:
    """The batch's maps to the host: in the engine's parts, all at once, per image."""
    options = {name: option.default for name, option in spec.options.items()}
    weights = torch.randn(a.shape[:2], device=a.device)
    step = max(1, CHUNK[a.device.type == "cpu"] // a[0].numel())

    def maps(size: int) -> object:
        parts = [slice(i, i + size) for i in range(0, len(a), size)]
        found = [spec.fn(a[p], g[p], MethodContext(weights[p], options=options)) for p in parts]
        return torch.cat(found).cpu()

    def alone() -> object:
        found = [
            spec.fn(a[i], g[i], MethodContext(weights[i], options=options)) for i in range(len(a))
        ]
        return torch.stack(found).cpu()

    return {"engine": lambda: maps(step), "all at once": lambda: maps(len(a)), "per image": alone}


def medians(actions: dict[str, Callable], runs: int, sync: Callable[[], None]) -> dict:
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(runs):
        for name, action in actions.items():
            sync()
            start = time.perf_counter()
            action()
            sync()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(found) for name, found in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    memory.keep_freed_memory()  # as an Explainer sets it
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    print(f"device: {device}; median ms per batch of {args.runs} runs\n")
    print("| method | layer | images | engine | all at once | per image | per image / engine |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for layer, shape in SHAPES.items():
        for count in (16, 64):
            a = torch.randn(count, *shape, device=device).relu()
            g = torch.randn(count, *shape, device=device) * 1e-3
            for name in METHODS:
                actions = contenders(methods.get(name), a, g)
                for action in list(actions.values()) * 3:  # warm-up
                    action()
                ms = medians(actions, args.runs, sync)
                times = " | ".join(f"{ms[key]:.2f}" for key in actions)
                ratio = ms["per image"] / ms["engine"]
                print(f"| {name} | {layer} | {count} | {times} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
