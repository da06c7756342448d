"""Each method against the peer's implementation of the same method, one map each.

    python benchmarks/methods_vs_peers.py [--runs 3] [--device cuda]

One map of class 1 for one 224×224 input on ResNet-18, from nothing kept: camwidget's
explainer is cleared before each run, so its forward and backward count as the peer's
do. The peers: pytorch-grad-cam for the CAM family, Captum for the attributions at the
pixels (its defaults where they agree with camwidget's: 50 Gauss-Legendre steps, 16
noise samples, 16×16 windows moved by 8). The contenders run in turns; the table gives
the median milliseconds and the ratio peer / camwidget (above 1: camwidget is faster).
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

    return {
        "gradcam-elementwise": run(peers.GradCAMElementWise),
        "eigengradcam": run(peers.EigenGradCAM),
        "kpcacam": run(peers.KPCA_CAM),
        "fem": run(peers.FEM),
        "shapleycam": run(peers.ShapleyCAM),
        "finercam": finer,
        "randomcam": run(peers.RandomCAM),
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


def timings(runs: int, device: str) -> list[tuple[str, str, float, float | str]]:
    """(method, peer, camwidget ms, peer ms or why the peer failed), medians of ``runs``."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    ex = camwidget.Explainer(model)
    ex.explain(x, LAYER, TARGET)  # the catalogue is built once, outside the timing
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for peer_name, peers in (("pytorch-grad-cam", _grad_cam), ("Captum", _captum)):
        for method, peer in peers(model, x).items():

            def ours(method: str = method) -> object:
                ex.clear()
                return ex.explain(x, LAYER, TARGET, method)

            times: dict[str, list[float]] = {"ours": [], "peer": []}
            failed = None
            for _ in range(runs):
                for name, action in (("ours", ours), ("peer", peer)):
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
            mine = statistics.median(times["ours"])
            rows.append((method, peer_name, mine, failed or statistics.median(times["peer"])))
    return rows


def table(rows: list[tuple[str, str, float, float | str]]) -> str:
    lines = ["| method | peer | camwidget ms | peer ms | peer / camwidget |"]
    lines.append("|---|---|---|---|---|")
    for method, peer, mine, theirs in rows:
        if isinstance(theirs, str):
            lines.append(f"| {method} | {peer} | {mine:.0f} | {theirs} | — |")
        else:
            lines.append(f"| {method} | {peer} | {mine:.0f} | {theirs:.0f} | {theirs / mine:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(table(timings(args.runs, args.device)))


if __name__ == "__main__":
    main()
