"""camwidget against the peers, measured in one run on the same model, input and machine.

    python benchmarks/run.py [--runs 10] [--skip-memory] [--skip-methods] [--device cuda]

1. Interaction: time to the next rendered overlay (JPEG bytes ready) for a colormap,
   layer, class or image change. camwidget: setting the panel's trait. The peers have no
   panel and no cache, so each re-runs what its API needs: pytorch-grad-cam and Captum a
   forward and a backward for any change of layer, class or image; TorchCAM the same,
   except that a class change can reuse the forward (``retain_graph=True``). For a
   colormap change the peers' cheapest path is re-blending a heatmap the user kept
   ("re-blend"); their re-run is shown beside it. A new image must be read and resized
   to the display size by every contender (the panel does it; the peers' runs too).
   The panel's class and image changes are measured at the default layer. The
   contenders run in turns, so that a drift of the machine's speed reaches all alike.
2. Batch throughput: Grad-CAM maps per second on batches of 16 at 224 (ResNet-50).
3. Methods: each method against the peer's implementation of it, one map from
   nothing kept (see ``benchmarks/methods_vs_peers.py``).
4. Memory: peak RSS growth of a process holding the panel with one image and every
   layer's gradients cached, against a plain forward + backward of the same model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision

import camwidget
from camwidget import render, samples, zoo
from camwidget.images import to_rgb
from camwidget.widget.views import display_frame

warnings.filterwarnings("ignore")


DISPLAY = 448  # the panel's frame: 448 px on the long side


def medians(actions: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """The median ms of each action, run in turns (each round runs every action once,
    starting one further along each time), so that a drift of the machine's speed
    during the run reaches every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    names = list(actions)
    for round_ in range(runs):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            actions[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def median_ms(action: Callable[[], object], runs: int) -> float:
    """The median ms of ``action`` over ``runs`` runs."""
    return medians({"action": action}, runs)["action"]


def frame(rgb: np.ndarray, heatmap: np.ndarray, colormap: str = "jet") -> bytes:
    """What every contender must produce: the overlay at the panel's display size,
    encoded for the browser (``rgb`` is already at that size)."""
    heat = render.upsample(heatmap, rgb.shape[:2])
    return render.encode(render.blend(rgb, np.clip(heat, 0, 1), colormap, 0.5), "jpeg")


def models(device: str) -> dict[str, tuple[torch.nn.Module, str, list[str]]]:
    """name -> (model, default layer, other layers to switch between), on ``device``."""
    lite0, _, _ = zoo.load("efficientnet_lite0")
    torch.manual_seed(0)
    resnet50 = torchvision.models.resnet50(weights=None).eval()
    lite0, resnet50 = lite0.to(device), resnet50.to(device)
    return {
        "EfficientNet-Lite0": (lite0, "head", ["blocks.15", "blocks.12", "blocks.9"]),
        "ResNet-50": (resnet50, "layer4", ["layer3", "layer2", "layer4.1"]),
    }


def interaction(runs: int, device: str) -> list[tuple]:
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchCAMGradCAM

    photo = samples.load("chelsea").resize((224, 224))
    x = camwidget.explainer.imagenet_preprocess(np.asarray(photo)).to(device)
    rgb = np.asarray(photo.resize((DISPLAY, DISPLAY)))

    def shown(image):
        """The photo at display size: kept for the first image; a new image must be
        read and resized, as the panel does."""
        return rgb if image is x else display_frame(to_rgb(image), DISPLAY)

    variants = [x.roll(shifts=s, dims=2) for s in range(1, 4 * runs + 2)]
    rows = []
    for name, (model, layer, others) in models(device).items():
        panel = camwidget.CAMWidget(model, x, layer=layer)
        colormaps = itertools.cycle(["viridis", "jet"])

        def module(name_):
            return model.get_submodule(name_)

        def grad_cam_run(layer_name, target, image=x):
            with GradCAM(model=model, target_layers=[module(layer_name)]) as cam:
                heat = cam(image[None], targets=[ClassifierOutputTarget(target)])[0]
            return frame(shown(image), heat)

        def torchcam_run(layer_name, target, image=x):
            with TorchCAMGradCAM(model, module(layer_name)) as extractor:
                scores = model(image[None])
                heat = extractor(target, scores)[0][0].detach().cpu().numpy()
            return frame(shown(image), render.normalise(render.upsample(heat, (224, 224))))

        kept = {}

        def torchcam_class(target):
            if "extractor" not in kept:
                kept["extractor"] = TorchCAMGradCAM(model, module(layer))
                kept["scores"] = model(x[None])
                kept["extractor"].disable_hooks()  # the others run the model in between
            heat = kept["extractor"](target, kept["scores"], retain_graph=True)[0][0]
            heat = render.upsample(heat.detach().cpu().numpy(), (224, 224))
            return frame(rgb, render.normalise(heat))

        def captum_run(layer_name, target, image=x):
            attribution = LayerGradCam(model, module(layer_name)).attribute(
                image[None].clone(), target=target
            )
            heat = LayerAttribution.interpolate(attribution, (224, 224), "bilinear")
            heat = torch.relu(heat)[0, 0].detach().cpu().numpy()
            return frame(shown(image), render.normalise(heat))

        with GradCAM(model=model, target_layers=[module(layer)]) as cam:
            kept_heat = cam(x[None], targets=[ClassifierOutputTarget(1)])[0]
        peer_colormaps = itertools.cycle(["viridis", "jet"])
        # Each contender keeps its own sequence of layers, classes and images.
        layer_cycles = [itertools.cycle([layer, *others]) for _ in range(4)]
        class_counters = [itertools.count(10) for _ in range(4)]
        image_iters = [iter(variants) for _ in range(4)]
        changes = {
            "colormap": {
                "camwidget": lambda: setattr(panel, "colormap", next(colormaps)),
                "re-blend": lambda: frame(rgb, kept_heat, next(peer_colormaps)),
                "pytorch-grad-cam": lambda: grad_cam_run(layer, 1),
                "TorchCAM": lambda: torchcam_run(layer, 1),
                "Captum LayerGradCam": lambda: captum_run(layer, 1),
            },
            "layer": {
                "camwidget": lambda: setattr(panel, "layer", next(layer_cycles[0])),
                "pytorch-grad-cam": lambda: grad_cam_run(next(layer_cycles[1]), 1),
                "TorchCAM": lambda: torchcam_run(next(layer_cycles[2]), 1),
                "Captum LayerGradCam": lambda: captum_run(next(layer_cycles[3]), 1),
            },
            "class": {  # the panel at its default layer, as the peers
                "camwidget": lambda: setattr(panel, "target", next(class_counters[0])),
                "pytorch-grad-cam": lambda: grad_cam_run(layer, next(class_counters[1])),
                "TorchCAM": lambda: torchcam_class(next(class_counters[2])),
                "Captum LayerGradCam": lambda: captum_run(layer, next(class_counters[3])),
            },
            "new image": {
                "camwidget": lambda: panel.set_image(next(image_iters[0])),
                "pytorch-grad-cam": lambda: grad_cam_run(layer, 1, next(image_iters[1])),
                "TorchCAM": lambda: torchcam_run(layer, 1, next(image_iters[2])),
                "Captum LayerGradCam": lambda: captum_run(layer, 1, next(image_iters[3])),
            },
        }
        for change, actions in changes.items():
            if change == "class":
                panel.layer = layer
            ms = medians(actions, runs)
            reblend = ms.pop("re-blend", None)
            ours = ms.pop("camwidget")
            peers = {p: v if reblend is None else (reblend, v) for p, v in ms.items()}
            rows.append((name, change, ours, peers))
        kept.get("extractor") and kept["extractor"].remove_hooks()
        panel.close()
    return rows


BATCH_PROBE = """
import statistics, sys, time, warnings
import torch, torchvision
warnings.filterwarnings("ignore")
name, runs, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = torchvision.models.resnet50(weights=None).eval().to(device)
images = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
if name == "camwidget explain_batch":
    import camwidget
    ex = camwidget.Explainer(model)
    ex.layers  # the catalogue is built once, outside the timing
    def action():
        ex.explain_batch(list(images), layer="layer4")
elif name == "pytorch-grad-cam":
    from pytorch_grad_cam import GradCAM
    def action():
        with GradCAM(model=model, target_layers=[model.layer4]) as cam:
            cam(images, targets=None)
else:
    from torchcam.methods import GradCAM
    def action():
        with GradCAM(model, model.layer4) as extractor:
            scores = model(images)
            extractor(scores.argmax(1).tolist(), scores)
action()  # warm-up
times = []
for _ in range(runs):
    sync()
    start = time.perf_counter()
    action()
    sync()
    times.append(time.perf_counter() - start)
print(16 / statistics.median(times))
"""


def batch_throughput(runs: int, device: str) -> dict[str, float]:
    """Each contender in a fresh process (what one leaves in the allocator, e.g.
    pytorch-grad-cam's filled parameter gradients, must not slow the next), twice,
    in alternating order; the better of the two medians counts."""
    names = ["camwidget explain_batch", "pytorch-grad-cam", "TorchCAM"]
    rates: dict[str, float] = {}
    for name in names + names[::-1]:
        out = subprocess.run(
            [sys.executable, "-c", BATCH_PROBE, name, str(max(3, runs // 2)), device],
            capture_output=True,
            text=True,
            check=True,
        )
        rates[name] = max(rates.get(name, 0.0), float(out.stdout.strip().splitlines()[-1]))
    return rates


MEMORY_PROBE = """
import json, os, sys, threading, time, torch, torchvision, camwidget
from camwidget import samples, zoo

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

name, mode = sys.argv[1], sys.argv[2]
if name == "lite0":
    model, _, _ = zoo.load("efficientnet_lite0")
else:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
x = camwidget.explainer.imagenet_preprocess(samples.load("chelsea").resize((224, 224)))
base, peak, running = rss_mb(), [0.0], [True]

def sample():
    while running[0]:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.0005)

sampler = threading.Thread(target=sample)
sampler.start()
if mode == "plain":
    logits = model(x[None])
    logits[0, 1].backward()
else:
    panel = camwidget.CAMWidget(model, x)
    for info in panel.explainer.layers:
        panel.layer = info.name
time.sleep(0.05)
running[0] = False
sampler.join()
print(json.dumps({"growth_mb": max(peak[0], rss_mb()) - base}))
"""


def memory() -> dict[str, tuple[float, float]]:
    results = {}
    for name, label in (("lite0", "EfficientNet-Lite0"), ("resnet50", "ResNet-50")):
        growth = []
        for mode in ("plain", "panel"):
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_PROBE, name, mode],
                capture_output=True,
                text=True,
                check=True,
            )
            growth.append(json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"])
        results[label] = (growth[0], growth[1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-methods", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (memory: CPU only)")
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, "
        f"median of {args.runs} runs, input 224×224\n"
    )

    print("## Interaction: ms to the next rendered overlay (lower is better)\n")
    print("| model | change | camwidget | pytorch-grad-cam | × | TorchCAM | × | Captum | × |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, change, ms, peers in interaction(args.runs, args.device):
        cells = []
        for peer in ("pytorch-grad-cam", "TorchCAM", "Captum LayerGradCam"):
            value = peers[peer]
            if isinstance(value, tuple):
                cells += [
                    f"{value[0]:.1f} re-blend / {value[1]:.0f} re-run",
                    f"{value[0] / ms:.1f} / {value[1] / ms:.0f}",
                ]
            else:
                cells += [f"{value:.1f}", f"{value / ms:.2f}"]
        print(f"| {model} | {change} | {ms:.1f} | " + " | ".join(cells) + " |")

    print("\n## Batch throughput: Grad-CAM maps/s, ResNet-50, batches of 16 at 224\n")
    rates = batch_throughput(args.runs, args.device)
    fastest_peer = max(v for k, v in rates.items() if not k.startswith("camwidget"))
    print("| implementation | maps/s | vs fastest peer |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / fastest_peer:.2f}× |")

    if not args.skip_methods:
        print("\n## Methods: one map from nothing kept, ResNet-18 at 224 (median ms)\n")
        script = str(Path(__file__).with_name("methods_vs_peers.py"))
        runs = str(max(3, args.runs // 3))
        command = [sys.executable, script, "--runs", runs, "--device", args.device]
        print(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    if not args.skip_memory and args.device == "cpu":
        print("\n## Memory: peak RSS growth (MB)\n")
        print("| model | plain forward + backward | panel, all layers cached | ratio |")
        print("|---|---|---|---|")
        for model, (plain, panel) in memory().items():
            print(f"| {model} | {plain:.0f} | {panel:.0f} | {panel / plain:.2f}× |")


if __name__ == "__main__":
    main()
