"""Kernel-side latency of each panel interaction: from setting a trait to the new frame's
bytes being ready (the observers run synchronously), median of N runs.

    python benchmarks/interaction.py [--runs 20] [--models lite0,vit] [--device cuda]

Models: EfficientNet-Lite0 (pretrained, embedded) and torchvision's ViT-B/16 (random
weights, its zero-initialised head given small random ones), both at 224.

Targets (issues 4, 10 and 15): colormap/opacity/threshold <= 15 ms; layer or method
<= 25 ms; class (at the default layer) <= 1.2 x one partial backward to every layer;
the first visit to the earliest layer after a class change <= 1.2 x that backward; new
image <= 1.2 x (forward + that backward). The peers' figures are in benchmarks/run.py.

While Score-CAM runs in the panel's worker (issue 23), changes come as the page sends
them, each at a random point of a batch: a colormap change is shown within 15 ms, as
when nothing runs; Grad-CAM chosen instead (its map kept) within 25 ms, as a method
change; after it or the cancel button the worker is idle within one batch of
Score-CAM as the worker runs it (the work stops between batches).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time

import torch
import torchvision

import camwidget
from camwidget import capture, passes, samples, zoo


def sync() -> None:
    """Wait for queued GPU work (a no-op without CUDA), so that timings are complete."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(action) -> float:
    sync()
    start = time.perf_counter()
    action()
    sync()
    return (time.perf_counter() - start) * 1000.0


def median_of(actions) -> float:
    return statistics.median(timed(action) for action in actions)


def vit_b_16():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    torch.nn.init.normal_(model.heads.head.weight, 0.0, 0.02)  # zeros at init
    return model, None, None


MODELS = {
    "lite0": ("EfficientNet-Lite0", lambda: zoo.load("efficientnet_lite0")),
    "vit": ("ViT-B/16 (torchvision, random weights)", vit_b_16),
}


class References:
    """The passes the targets are stated against, timed in turn with the panel's
    changes (so that a drift of the machine's speed reaches both alike): one plain
    forward, and one partial backward to every layer with its result dropped or kept
    in a cache of two classes (as the panel must keep it)."""

    def __init__(self, panel, photo) -> None:
        ex = panel.explainer
        self.model = ex.model
        self.inputs = ex.prepare(photo).inputs.clone().requires_grad_(True)
        self.kept = capture.forward(ex.model, self.inputs)
        self.classes = itertools.count(100)
        self.cache: list = []
        self.times: dict[str, list[float]] = {"forward": [], "backward": [], "kept": []}

    def run(self) -> None:
        """Time each reference pass once."""
        logits = self.kept.logits
        self.times["forward"].append(timed(lambda: self.model(self.inputs)))  # no hooks
        self.times["backward"].append(
            timed(lambda: capture.backward(self.kept, logits[0, next(self.classes)]))
        )

        def backward_kept() -> None:
            self.cache.append(capture.backward(self.kept, logits[0, next(self.classes)]))
            del self.cache[:-2]

        self.times["kept"].append(timed(backward_kept))

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def rows_for(panel, photo, runs: int, reference: References) -> list[tuple]:
    ex = panel.explainer
    default = panel.layer
    layers = [info.name for info in ex.layers if info.shape[1] > 1][-4 * runs :]
    colormaps = itertools.cycle(["viridis", "jet"])
    alphas = itertools.cycle([0.3, 0.6])
    thresholds = itertools.cycle([0.2, 0.0])
    layer_cycle = itertools.cycle(layers)
    methods_cycle = itertools.cycle(["gradcam++", "gradcam"])
    targets = itertools.count(200)
    variants = (photo.rotate(angle) for angle in itertools.count(1))

    def setter(trait, values):
        return [lambda: setattr(panel, trait, next(values))] * runs

    def in_turn(action) -> float:
        """The median of ``action`` timed in turn with the reference passes."""
        times = []
        for _ in range(runs):
            reference.run()
            times.append(action())
        return statistics.median(times)

    def earliest_after_a_class_change() -> float:
        panel.layer, panel.target = default, next(targets)  # not timed
        return timed(lambda: setattr(panel, "layer", ex.layers[0].name))

    rows = [
        ("colormap", median_of(setter("colormap", colormaps)), 15.0, None),
        ("opacity", median_of(setter("alpha", alphas)), 15.0, None),
        ("threshold", median_of(setter("threshold", thresholds)), 15.0, None),
        ("layer (first visit)", median_of(setter("layer", layer_cycle)), 25.0, None),
    ]
    panel.layer = default
    rows.append(("method", median_of(setter("method", methods_cycle)), 25.0, None))
    panel.method = "gradcam"  # the passes below are measured for the default method
    class_change = in_turn(lambda: timed(lambda: setattr(panel, "target", next(targets))))
    earliest = in_turn(earliest_after_a_class_change)
    panel.layer = default
    new_image = in_turn(lambda: timed(lambda: panel.set_image(next(variants))))
    backward = reference.median("backward")
    both = reference.median("forward") + backward
    return [
        *rows,
        ("class (new)", class_change, 1.2 * backward, backward),
        ("earliest layer, 1st", earliest, 1.2 * backward, backward),
        ("new image", new_image, 1.2 * both, both),
    ]


def while_scorecam_runs(panel, runs: int) -> tuple[list[tuple], float, int]:
    """Changes from the page while Score-CAM runs at the panel's layer in the worker,
    each made at a random point of one of its batches; also the median time of a batch
    as the worker runs it (masked forwards, scores and the partial map painted) and the
    batch size."""
    ex, controls, pause = panel.explainer, panel.controls, random.Random(0)
    colormaps = itertools.cycle(["viridis", "jet"])
    targets = itertools.count(300)
    stamps: list[float] = []  # each batch's end, as the progress bar hears of it
    gaps: list[float] = []  # the second batch of each run
    controls["progress"].observe(lambda change: stamps.append(time.perf_counter()), "value")

    def page(name: str, value: object) -> None:
        """A choice made in the page's dropdown, as the front end sends it."""
        options = controls[name].options
        values = [o[1] if isinstance(o, tuple) else o for o in options]
        controls[name].set_state({"index": values.index(value)})

    def running() -> None:
        """Score-CAM chosen in the page (a new class each time: nothing cached), then a
        wait until two batches are done and a random time within the next."""
        panel.method, panel.target = "gradcam", next(targets)
        stamps.clear()
        page("method", "scorecam")
        while len(stamps) < 2:
            time.sleep(0.002)
        gaps.append(stamps[1] - stamps[0])
        time.sleep(pause.uniform(0.0, gaps[-1]))

    def look() -> float:
        running()
        ms = timed(lambda: page("colormap", next(colormaps)))
        assert "Score-CAM running" in controls["status"].value, "Score-CAM ended too soon"
        return ms

    def shown_then_idle(action) -> tuple[float, float]:
        running()
        start = time.perf_counter()
        action()
        shown = (time.perf_counter() - start) * 1000.0
        panel.wait()
        return shown, (time.perf_counter() - start) * 1000.0

    quiet_look = median_of([lambda: setattr(panel, "colormap", next(colormaps))] * runs)
    looks = [look() for _ in range(runs)]
    gradcam = [shown_then_idle(lambda: page("method", "gradcam")) for _ in range(runs)]
    cancels = [shown_then_idle(controls["cancel"].click) for _ in range(runs)]
    batch = statistics.median(gaps) * 1000.0
    panel.method = "gradcam"
    median = statistics.median
    changes = [
        ("look, Score-CAM on", median(looks), 15.0, quiet_look),
        ("Grad-CAM over it", median(s for s, _ in gradcam), 25.0, None),
        ("… worker idle", median(i for _, i in gradcam), batch, batch),
        ("cancel, worker idle", median(i for _, i in cancels), batch, batch),
    ]
    return changes, batch, passes.batch_size(ex.scorecam_batch_size, ex.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--models", default="lite0,vit")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu or cuda")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    photo = samples.load("chelsea")
    for key in args.models.split(","):
        title, load = MODELS[key]
        model, preprocess, labels = load()
        model = model.to(args.device)
        panel = camwidget.CAMWidget(model, photo, preprocess=preprocess, labels=labels)
        reference = References(panel, photo)
        rows = rows_for(panel, photo, args.runs, reference)
        changes, one_batch, size = while_scorecam_runs(panel, max(3, args.runs // 4))
        forward, backward, kept = (reference.median(n) for n in ("forward", "backward", "kept"))
        panel.close()
        where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
        print(
            f"\ncamwidget interaction latency, {title} at 224, median of {args.runs}, "
            f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads"
        )
        print(
            f"reference: one plain forward {forward:.1f} ms; one partial backward to every "
            f"layer {backward:.1f} ms (its result dropped), {kept:.1f} ms (kept, as a "
            f"cache must); one batch of Score-CAM in the worker ({size} masked inputs "
            f"at {panel.layer}, the partial map painted) {one_batch:.1f} ms\n"
        )
        print(
            f"| {'change':<20} | {'camwidget ms':>12} | {'target ms':>9} | "
            f"{'vs reference':>12} | ok  |"
        )
        print(f"|{'-' * 22}|{'-' * 14}|{'-' * 11}|{'-' * 14}|-----|")
        for name, ms, target, reference in [*rows, *changes]:
            ratio = f"{ms / reference:.2f}×" if reference else ""
            ok = "yes" if ms <= target else "NO"
            print(f"| {name:<20} | {ms:>12.1f} | {target:>9.1f} | {ratio:>12} | {ok:<3} |")


if __name__ == "__main__":
    main()
