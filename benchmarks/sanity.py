"""The model-randomisation sanity check for every method, on the pretrained
EfficientNet-Lite0 and two real photos.

    python benchmarks/sanity.py [--methods fullgrad sscam ...]

Spearman's ρ between the magnitudes of each method's map and those of the same model
with its classifier (the last linear layer) drawn anew, at the default layer, for the
photo's top class (Adebayo et al., NeurIPS 2018): near 1, the map does not depend on
what the classifier learned; well below 1, it does. Class-agnostic methods are 1 by
construction. SS-CAM and IS-CAM score the 128 most active channels (SS-CAM in 8
noisy rounds): their defaults would take over an hour at the head's 1,280 channels.
"""

from __future__ import annotations

import argparse
import warnings

from camwidget import Explainer, methods, samples, zoo
from camwidget.sanity import randomised_classifier

warnings.filterwarnings("ignore")
PHOTOS = ("chelsea", "coffee")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(methods.REGISTRY))
    chosen = parser.parse_args().methods
    model, preprocess, labels = zoo.load("efficientnet_lite0")
    options = {"sscam_channels": 128, "sscam_samples": 8, "iscam_channels": 128}
    ex = Explainer(model, preprocess, labels, **options)
    print("| method | " + " | ".join(f"ρ, {photo}" for photo in PHOTOS) + " |")
    print("|---|" + "---|" * len(PHOTOS))
    for name, spec in methods.REGISTRY.items():
        if name not in chosen or ex.why_not(name, ex.default_layer) is not None:
            continue
        rhos = [randomised_classifier(ex, samples.load(photo), name) for photo in PHOTOS]
        print(f"| {spec.title} | " + " | ".join(f"{rho:.2f}" for rho in rhos) + " |")


if __name__ == "__main__":
    main()
