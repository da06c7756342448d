"""The model-randomisation sanity check (Adebayo et al., NeurIPS 2018), last layer.

A map that explains what the model learned must change when the classifier forgets
it. :func:`randomised_classifier` explains an image with the model and with a copy
whose final linear layer is drawn anew (PyTorch's own initialisation, seeded), and
gives the Spearman rank correlation of the two maps' magnitudes: near 1, the method
ignores the classifier (an edge detector would pass unchanged); near 0 or below, it
depends on it. The model itself is never changed.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from . import methods
from .errors import CamwidgetError
from .explainer import Explainer


def randomised_classifier(
    explainer: Explainer,
    image: object,
    method: str,
    layer: str | None = None,
    target: int | None = None,
    seed: int = 0,
) -> float:
    """Spearman's ρ between |map| of ``explainer``'s model and |map| of a copy with the
    last ``nn.Linear`` re-initialised (seeded by ``seed``), for the same image, layer
    and class (None: the model's top class); the copy's explainer takes the same
    preprocess, labels and method options."""
    if target is None:
        target = explainer.predict(image, 1)[0][0]
    trained = explainer.explain(image, layer, target, method)
    model = copy.deepcopy(explainer.model)
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise CamwidgetError("the sanity check re-draws the last nn.Linear; this model has none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linears[-1].reset_parameters()
    spec = methods.get(method)
    options = {spec.keyword(name): value for name, value in explainer.options(method).items()}
    other = Explainer(
        model, explainer.preprocess, explainer.labels, activation=explainer.activation, **options
    )
    forgot = other.explain(image, trained.layer, target, method)
    a, b = np.abs(trained.raw).ravel(), np.abs(forgot.raw).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant map has no ranks
    return float(spearmanr(a, b).statistic)
