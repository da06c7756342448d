"""The dataset audit's throughput and memory, measured in one run.

    python benchmarks/audit.py [--images 256] [--batch 32] [--memory 10000] [--device cuda]
                               [--skip-ray] [--workers 0]

1. Throughput (images/s, ResNet-50 at 224, random weights, Grad-CAM at layer4): the
   reference, a forward and backward written by hand over a DataLoader (the top class's
   gradient at layer4, nothing else); ``explain_batch`` in a plain loop over pre-made
   input tensors; the local engine (the same DataLoader, maps and numbers); the Ray
   engine on 2 local actors. Targets: local >= 0.95x the reference (issue 28); Ray >=
   0.8x local on a 2-core machine (issue 14).
2. Memory: ``--memory`` synthetic images (a tiny CNN at 64x64, so that the run is about
   the machinery, not the model) streamed to a Parquet store: peak RSS growth of the
   process at 10%, 50% and 100% of the run (constant memory: flat after the start).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import torchvision

import camwidget
from camwidget import explain_dataset


class Tensors(torch.utils.data.Dataset):
    """``count`` seeded random inputs with labels, made when asked for."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=generator), i % 1000


def rates(actions: dict[str, object], images: int, runs: int = 3) -> dict[str, float]:
    """images/s of each action, the median of ``runs`` rounds; each round runs every
    action once, in turns, so that a drift of the machine's speed reaches all alike."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(runs):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: images / statistics.median(found) for name, found in times.items()}


def throughput(images: int, batch: int, device: str, ray: bool, workers: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    explainer = camwidget.Explainer(model)
    data = Tensors(images, 224)
    tensors = [data[i][0] for i in range(images)]
    explainer.explain_batch(tensors[:2], "layer4")  # warm-up, catalogue

    def plain() -> None:
        for start in range(0, images, batch):
            explainer.explain_batch(tensors[start : start + batch], "layer4")

    def local() -> None:
        explain_dataset(
            explainer, data, layer="layer4", batch_size=batch, num_workers=workers, progress=False
        )

    loader = torch.utils.data.DataLoader(data, batch_size=batch, num_workers=workers)

    def forward_backward() -> None:
        """By hand, over the same DataLoader: a forward with autograd and the top class's
        gradient at layer4 (no map, no numbers, nothing kept)."""
        for inputs, _ in loader:
            kept = []
            hook = model.layer4.register_forward_hook(lambda m, a, out: kept.append(out))
            scores = model(inputs.to(device))
            hook.remove()
            top = scores.gather(1, scores.argmax(1, keepdim=True)).sum()
            torch.autograd.grad(top, kept)

    found = rates(
        {
            "forward + backward by hand": forward_backward,
            "explain_batch, plain loop": plain,
            "local engine": local,
        },
        images,
    )
    if ray:
        explain_dataset(
            explainer, Tensors(batch, 224), layer="layer4", engine="ray", progress=False
        )

        def distributed() -> None:
            explain_dataset(
                explainer, data, layer="layer4", batch_size=batch, engine="ray", progress=False
            )

        found |= rates({"Ray engine, 2 actors": distributed}, images, runs=2)
    return found


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(count: int) -> list[tuple[int, float]]:
    """Peak RSS growth (MB) over a streamed audit of ``count`` images, at checkpoints."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 1000),
    ).eval()  # fmt: skip
    explainer = camwidget.Explainer(model)
    base, peak, seen, running = rss_mb(), [0.0], [], [True]
    marks = {int(count * share) for share in (0.1, 0.5, 1.0)}

    class Watched(camwidget.audit.ParquetStore):
        done = 0

        def append(self, columns):
            super().append(columns)
            Watched.done += len(columns["index"])
            for mark in sorted(marks):
                if Watched.done >= mark and mark not in [m for m, _ in seen]:
                    seen.append((mark, peak[0] - base))

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with tempfile.TemporaryDirectory() as folder:
        store = Watched(Path(folder) / "audit.parquet")
        explain_dataset(
            explainer, Tensors(count, 64), layer="2", batch_size=64, store=store, progress=False
        )
    running[0] = False
    sampler.join()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--memory", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="the local engine's DataLoader")
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads\n")
    print(
        f"## Throughput: ResNet-50 at 224, Grad-CAM at layer4, {args.images} images, "
        f"batches of {args.batch}\n"
    )
    rates = throughput(args.images, args.batch, args.device, not args.skip_ray, args.workers)
    reference = rates["forward + backward by hand"]
    print("| how | images/s | vs forward + backward by hand |\n|---|---|---|")
    for name, value in rates.items():
        print(f"| {name} | {value:.1f} | {value / reference:.2f}× |")
    if "Ray engine, 2 actors" in rates:
        ratio = rates["Ray engine, 2 actors"] / rates["local engine"]
        print(f"\nRay / local: {ratio:.2f}× (target >= 0.8×)")
    if args.memory:
        print(f"\n## Memory: {args.memory} synthetic images streamed to Parquet\n")
        print("| images done | peak RSS growth (MB) |\n|---|---|")
        for done, growth in memory(args.memory):
            print(f"| {done} | {growth:.0f} |")


if __name__ == "__main__":
    main()
