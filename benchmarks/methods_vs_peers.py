"""Each method against the peer's implementation of the same method, one map each.

    python benchmarks/methods_vs_peers.py [--runs 3] [--device cuda] [--methods fem,kpcacam]

One map of class 1 for one 224×224 input on ResNet-18, from nothing kept: camwidget
explains a photo it has not seen (the input with its first value nudged by 1e-4 times
the run's number), so its forward and backward count as the peer's do; what it learns
once per model (the layer list, where CAM applies, the default layer: ``clear()``
forgets those too) was learnt on the first photo, as for any photo after the first.
The peers: pytorch-grad-cam for the CAM family, Captum for the attributions at the
pixels (its defaults where they agree with camwidget's: 50 Gauss-Legendre steps, 16
noise samples, 16×16 windows moved by 8), TorchCAM for SS-CAM and IS-CAM (2 rounds on
a 64×64 input: 1,024 passes each, its default 35 and 10 rounds take minutes) and for
LeGrad (ViT-B/16, the last 2 blocks). The contenders run in turns; the table gives
the median milliseconds and the ratio peer / camwidget (above 1: camwidget is faster),
and camwidget's time for the photo on show in the panel: its forward kept (and the
gradients of the classes asked before), a method picked for another class.
Run by ``benchmarks/run.py`` too, in a process of its own.
"""

from __future__ import annotations

import os

# numpy's BLAS threads spin on after each call (the peers' SVD, kernel PCA) and take
# the two cores from torch's next forward, whichever contender runs it: one BLAS
# thread removes that artefact for both (set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision

import camwidget

warnings.filterwarnings("ignore")

TARGET, LAYER = 1, "layer4"


def _grad_cam(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    import pytorch_grad_cam as peers
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run(kind: type, **kwargs: object) -> Callable[[], object]:
        def action() -> object:
            with kind(model=model, target_layers=[model.get_submodule(LAYER)], **kwargs) as cam:
                return cam(x[None], targets=[ClassifierOutputTarget(TARGET)])

        return action

    def finer() -> object:
        with peers.FinerCAM(model, [model.get_submodule(LAYER)]) as cam:
            return cam(x[None], target_idx=TARGET)

    def fullgrad() -> object:
        with peers.FullGrad(model, []) as cam:
            return cam(x[None], targets=[ClassifierOutputTarget(TARGET)])

    return {
        "gradcam-elementwise": run(peers.GradCAMElementWise),
        "eigengradcam": run(peers.EigenGradCAM),
        "kpcacam": run(peers.KPCA_CAM),
        "fem": run(peers.FEM),
        "shapleycam": run(peers.ShapleyCAM),
        "finercam": finer,
        "randomcam": run(peers.RandomCAM),
        "fullgrad": fullgrad,
    }


def _captum(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    from captum import attr

    sigma = 0.15 * float(x.max() - x.min())

    def run(method: object, **kwargs: object) -> Callable[[], object]:
        return lambda: method.attribute(x[None].clone(), target=TARGET, **kwargs)

    return {
        "saliency": run(attr.Saliency(model)),
        "input-x-gradient": run(attr.InputXGradient(model)),
        "integrated-gradients": run(attr.IntegratedGradients(model), internal_batch_size=8),
        "smoothgrad": run(
            attr.NoiseTunnel(attr.Saliency(model)),
            nt_samples=16,
            nt_samples_batch_size=8,
            stdevs=sigma,
            nt_type="smoothgrad",
        ),
        "gradientshap": run(
            attr.GradientShap(model), baselines=torch.zeros_like(x[None]), n_samples=16
        ),
        "occlusion": run(
            attr.Occlusion(model),
            sliding_window_shapes=(3, 16, 16),
            strides=(3, 8, 8),
            perturbations_per_eval=8,
        ),
        "deeplift": run(attr.DeepLift(model)),
    }


def _torchcam_rounds(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    from torchcam import methods as peers

    def run(kind: type, **kwargs: object) -> Callable[[], object]:
        def action() -> object:
            with kind(model, LAYER, input_shape=tuple(x.shape), **kwargs) as cam:
                return cam(TARGET, model(x[None]))

        return action

    return {
        "sscam": run(peers.SSCAM, num_samples=2, batch_size=8),
        "iscam": run(peers.ISCAM, num_samples=2, batch_size=8),
    }


def _torchcam_legrad(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    from torchcam.methods import LeGrad

    def legrad() -> object:
        with LeGrad(model, list(model.encoder.layers)[-2:]) as cam:
            return cam(TARGET, model(x[None]))

    return {"legrad": legrad}


def _suites(device: str) -> list[tuple[str, Callable, torch.nn.Module, torch.Tensor, str | None]]:
    """(peer, its contenders, model, input, layer) of each comparison."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval().to(device)
    vit = torchvision.models.vit_b_16(weights=None).eval().to(device)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts it at zero
    x = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    small = torch.nn.functional.interpolate(x[None], size=(64, 64))[0]
    return [
        ("pytorch-grad-cam", _grad_cam, resnet, x, LAYER),
        ("Captum", _captum, resnet, x, LAYER),
        ("TorchCAM", _torchcam_rounds, resnet, small, LAYER),
        ("TorchCAM", _torchcam_legrad, vit, x, None),
    ]


def _nudged(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` with its first value moved by k × 1e-4: a photo the explainer has not seen."""
    nudged = x.clone()
    nudged.view(-1)[0] += k * 1e-4
    return nudged


def timings(
    runs: int, device: str, only: set[str] | None = None
) -> list[tuple[str, str, float, float | str, float]]:
    """(method, peer, camwidget ms, peer ms or why the peer failed, camwidget ms with the
    image's forward kept), medians of ``runs``; ``only``: these methods (None: all)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    options = {"sscam_samples": 2, "iscam_samples": 2}
    for peer_name, peers, model, x, layer in _suites(device):
        ex = camwidget.Explainer(model, **options)
        ex.explain(x, layer, TARGET)  # the catalogue is built once, outside the timing
        for method, peer in peers(model, x).items():
            if only is not None and method not in only:
                continue
            unseen = iter([_nudged(x, k) for k in range(1, runs + 1)])

            def ours(method: str = method, ex=ex, unseen=unseen, layer=layer) -> object:
                return ex.explain(next(unseen), layer, TARGET, method)

            targets = iter(range(TARGET + 1, TARGET + 1 + runs))

            def seen(method: str = method, ex=ex, x=x, layer=layer, targets=targets) -> object:
                return ex.explain(x, layer, next(targets), method)

            times: dict[str, list[float]] = {"ours": [], "peer": [], "seen": []}
            failed = None
            ex.explain(x, layer, TARGET)  # the image's forward, kept for ``seen``
            for _ in range(runs):
                for name, action in (("seen", seen), ("ours", ours), ("peer", peer)):
                    if name == "peer" and failed:
                        continue
                    sync()
                    start = time.perf_counter()
                    try:
                        action()
                    except Exception as error:  # a peer that refuses the model
                        failed = f"fails: {type(error).__name__}"
                    sync()
                    times[name].append((time.perf_counter() - start) * 1000)
            mine, panel = statistics.median(times["ours"]), statistics.median(times["seen"])
            theirs = failed or statistics.median(times["peer"])
            rows.append((method, peer_name, mine, theirs, panel))
    return rows


def table(rows: list[tuple[str, str, float, float | str, float]]) -> str:
    lines = [
        "| method | peer | camwidget ms | peer ms | peer / camwidget "
        "| camwidget ms, photo on show |"
    ]
    lines.append("|---|---|---|---|---|---|")
    for method, peer, mine, theirs, seen in rows:
        if isinstance(theirs, str):
            lines.append(f"| {method} | {peer} | {mine:.0f} | {theirs} | — | {seen:.0f} |")
        else:
            ratio = theirs / mine
            lines.append(
                f"| {method} | {peer} | {mine:.0f} | {theirs:.0f} | {ratio:.2f} | {seen:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", help="comma-separated methods to time (default: all)")
    args = parser.parse_args()
    only = set(args.methods.split(",")) if args.methods else None
    print(table(timings(args.runs, args.device, only)))


if __name__ == "__main__":
    main()
