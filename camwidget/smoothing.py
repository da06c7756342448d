"""Test-time augmentation smoothing, as pytorch-grad-cam's ``aug_smooth``: a layer
method's map made for the input flipped or not and with its values multiplied by 0.9,
1 and 1.1 (six copies, one batched pass), each map min-max normalised, flipped back and
averaged. Maps that shift with small changes of the input fade; the result lies in
[0, 1] (its sign, for a signed method, is not kept)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

FLIPS = (False, True)
FACTORS = (0.9, 1.0, 1.1)


def augmented(inputs: Tensor) -> list[Tensor]:
    """The six copies of ``inputs`` (1, 3, H, W): each flip, each factor."""
    return [(inputs.flip(-1) if flip else inputs) * factor for flip in FLIPS for factor in FACTORS]


def smoothed(raws: np.ndarray) -> np.ndarray:
    """The mean of the six maps (6, h, w) made for :func:`augmented`'s copies, each
    min-max normalised (pytorch-grad-cam's 1e-7 guard) and flipped back."""
    flipped = [flip for flip in FLIPS for _ in FACTORS]
    found = []
    for raw, flip in zip(raws.astype(np.float64), flipped, strict=True):
        scaled = (raw - raw.min()) / (raw.max() - raw.min() + 1e-7)
        found.append(scaled[:, ::-1] if flip else scaled)
    return np.mean(found, axis=0).astype(np.float32)
