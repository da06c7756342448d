"""The model-randomisation sanity check for every method, on the pretrained
EfficientNet-Lite0 and two real photos.

    python benchmarks/sanity.py [--methods fullgrad sscam ...] [--vit]

Spearman's ρ between the magnitudes of each method's map and those of the same model
with its classifier (the last linear layer) drawn anew, at the default layer, for the
photo's top class (Adebayo et al., NeurIPS 2018): near 1, the map does not depend on
what the classifier learned; well below 1, it does. Class-agnostic methods are 1 by
construction. SS-CAM and IS-CAM score the 128 most active channels (SS-CAM in 8
noisy rounds): their defaults would take over an hour at the head's 1,280 channels.

``--vit``: the same for a small vision transformer (torchvision's, 4 blocks of width 64
on 4 x 4 patches of 32 x 32 inputs) trained here first, seeded, on scikit-learn's
handwritten digits (1,500 for training, ~1 minute on 2 cores; ~96 % on the other 297),
explained on the first test digit of each class it gets right (median ρ over the ten,
and the range): the methods for transformers (LeGrad) have no pretrained one on this
machine.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import torchvision
from sklearn.datasets import load_digits
from torch.nn import functional as F

from camwidget import CamwidgetError, Explainer, methods, samples, zoo
from camwidget.sanity import randomised_classifier

warnings.filterwarnings("ignore")
PHOTOS = ("chelsea", "coffee")


def digits_vit() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A small ViT trained on scikit-learn's digits (seeded), and for each class the first
    test digit it classifies right, as model inputs (3, 32, 32)."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x, y = (x.repeat(1, 3, 1, 1) - 0.5) / 0.5, torch.tensor(digits.target)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=10,
    )  # fmt: skip
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    for epoch in range(30):
        order = torch.randperm(1500, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, 1500, 64):
            rows = order[start : start + 64]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        right = (model(x[1500:]).argmax(1) == y[1500:]).nonzero().flatten() + 1500
    print(f"test accuracy {len(right) / (len(x) - 1500):.3f}\n")
    first = {int(y[i]): i for i in reversed(right.tolist())}
    return model, {f"digit {digit}": x[first[digit]] for digit in sorted(first)}


def table(ex: Explainer, images: dict[str, object], chosen: list[str], pooled: bool) -> None:
    """One row per method that applies at the default layer: ρ for each image, or
    (``pooled``) their median and range, with the images whose map was constant."""
    print(f"at {ex.default_layer}\n")
    columns = ["median ρ", "min", "max", "constant maps"] if pooled else [f"ρ, {n}" for n in images]
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, spec in methods.REGISTRY.items():
        if name not in chosen or ex.why_not(name, ex.default_layer) is not None:
            continue
        try:
            rhos = np.array([randomised_classifier(ex, image, name) for image in images.values()])
        except CamwidgetError as error:
            print(f"| {spec.title} | does not run: {str(error).split(' (')[0]} |")
            continue
        found = [np.nanmedian(rhos), np.nanmin(rhos), np.nanmax(rhos)] if pooled else rhos
        cells = [f"{rho:.2f}" for rho in found] + ([str(np.isnan(rhos).sum())] if pooled else [])
        print(f"| {spec.title} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(methods.REGISTRY))
    parser.add_argument("--vit", action="store_true", help="a small ViT trained on digits")
    args = parser.parse_args()
    if args.vit:
        model, digits = digits_vit()
        table(Explainer(model, sscam_samples=8), digits, args.methods, pooled=True)
        return
    model, preprocess, labels = zoo.load("efficientnet_lite0")
    options = {"sscam_channels": 128, "sscam_samples": 8, "iscam_channels": 128}
    ex = Explainer(model, preprocess, labels, **options)
    table(ex, {photo: samples.load(photo) for photo in PHOTOS}, args.methods, pooled=False)


if __name__ == "__main__":
    main()
