"""Faithfulness metrics against the peers, measured in one run on the same map, model
and input: deletion + insertion (20 steps) against TorchCAM's DeletionInsertionMetric,
ROAD (MoRF, 9 percentiles) against pytorch-grad-cam's ROADMostRelevantFirstAverage.

    python benchmarks/metrics.py [--runs 5]

Both sides score the same Grad-CAM heatmap (TorchCAM's metric is handed it through a
stand-in extractor, so neither pays for a CAM). camwidget takes the unperturbed score
from the explainer's cached forward and batches the perturbed inputs; the imputation
solves one sparse system per percentile, as the peer does.
"""

from __future__ import annotations

import argparse
import warnings
from contextlib import contextmanager
from functools import partial

import torch
import torchvision
from run import median_ms  # benchmarks/run.py, beside this script

from camwidget import Explainer, metrics, samples, zoo

warnings.filterwarnings("ignore")


class GivenMap:
    def __init__(self, model, heatmap):
        self.model = model
        self.map = torch.from_numpy(heatmap)[None]

    def __call__(self, class_idx, scores=None, **kwargs):
        return [self.map]

    def fuse_cams(self, cams):
        return cams[0]

    @contextmanager
    def _hooks_off(self):
        yield


def main() -> None:
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchcam.metrics import DeletionInsertionMetric

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    lite0, preprocess, _ = zoo.load("efficientnet_lite0")
    torch.manual_seed(0)
    resnet50 = torchvision.models.resnet50(weights=None).eval()
    x = preprocess(samples.load("chelsea").resize((224, 224)))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {runs}, 224×224\n"
    )
    print("| model | metric | camwidget ms | peer | peer ms | × (peer / camwidget) |")
    print("|---|---|---|---|---|---|")
    for name, model in (("EfficientNet-Lite0", lite0), ("ResNet-50", resnet50)):
        ex = Explainer(model)
        e = ex.explain(x)
        heat, target = e.heatmap, e.target

        def torchcam() -> None:
            metric = DeletionInsertionMetric(GivenMap(model, heat), partial(torch.softmax, dim=-1))
            metric.update(x[None], class_idx=target)
            metric.summary()

        def peer_road() -> None:
            ROADMostRelevantFirstAverage()(
                x[None], heat[None], [ClassifierOutputSoftmaxTarget(target)], model
            )

        rows = [
            (
                "deletion + insertion",
                median_ms(lambda: metrics.deletion_insertion(ex, x, heat, target), runs),
                "TorchCAM",
                median_ms(torchcam, runs),
            ),
            (
                "ROAD MoRF, 9 percentiles",
                median_ms(lambda: metrics.road(ex, x, heat, target), runs),
                "pytorch-grad-cam",
                median_ms(peer_road, runs),
            ),
        ]
        for metric, ours, peer, theirs in rows:
            print(
                f"| {name} | {metric} | {ours:.0f} | {peer} | {theirs:.0f} | {theirs / ours:.2f} |"
            )


if __name__ == "__main__":
    main()
