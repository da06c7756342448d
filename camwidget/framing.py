"""Where a preprocess puts the photo: the part of the photo its output covers (its
resize and crop, or its padding) and its normalisation, found by running it on three
probe images of the photo's size.

Probes: black, white, and a ramp (red grows left to right, green top to bottom, blue
constant). Black and white give each channel's normalisation (the lowest and highest
model input); the ramp, undone by it, gives for every input pixel the photo position
it came from. A resize, crop or pad maps input rows and columns onto the photo by a
straight line each way: the fitted lines are the :class:`Frame`. A preprocess that does
anything else (flip, rotate, mix the channels, add noise) has no frame, and the map is
stretched over the photo as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class Frame:
    """The model input's extent on the photo, as fractions of the photo's height and
    width: ``top`` and ``left`` of its first row and column's outer edges, ``height``
    and ``width`` of the whole input. (0, 0, 1, 1) is the whole photo; a centre crop
    lies inside it, a padded input reaches beyond it."""

    top: float
    left: float
    height: float
    width: float

    @property
    def lines(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((top, height), (left, width)): where the input lies down and across."""
        return (self.top, self.height), (self.left, self.width)

    @property
    def inverse(self) -> Frame:
        """The photo's extent as fractions of the input: the frame by which a map at the
        photo's size is cut back to the input's."""
        return Frame(
            -self.top / self.height, -self.left / self.width, 1 / self.height, 1 / self.width
        )

    def __str__(self) -> str:
        bottom, right = self.top + self.height, self.left + self.width
        return (
            f"rows {self.top:.1%}–{bottom:.1%} and columns {self.left:.1%}–{right:.1%} of the photo"
        )


@dataclass(frozen=True)
class Probed:
    """What the probes found: the ``frame`` (None: the whole photo, or none could be
    found, said in ``note``), and the lowest and highest model input per channel
    (``low``, ``high``: (C,)), None where they are not one number per channel."""

    frame: Frame | None
    low: np.ndarray | None
    high: np.ndarray | None
    note: str | None = None

    def say(self) -> str | None:
        """What the probes found, in words, where it is worth a note."""
        if self.frame is not None:
            return f"the preprocess crops or pads the photo: the model sees {self.frame}"
        return self.note


#: How far (a fraction of the photo) a probe may stray from a straight line and a
#: frame from the whole photo before it counts.
_TOLERANCE = 0.01


def probe(preprocess: Callable[[np.ndarray], Tensor], size: tuple[int, int]) -> Probed:
    """Run ``preprocess`` (uint8 (H, W, 3) -> (1, C, h, w) tensor, C = 3 or 1) on the
    probes at ``size`` (H, W) and read its frame and normalisation from what it returns.
    One ramp in three channels tells both directions; a preprocess to one channel gets
    each ramp as a gray photo of its own."""
    height, width = size
    black = _values(preprocess(np.zeros((height, width, 3), np.uint8)))
    white = _values(preprocess(np.full((height, width, 3), 255, np.uint8)))
    ramp = _ramp(height, width)
    ramps = [ramp] if black.shape[0] >= 3 else [ramp[..., [i] * 3] for i in (0, 1, 2)]
    answers = [_values(preprocess(probe)) for probe in ramps]
    if any(not black.shape == white.shape == answer.shape for answer in answers):
        return Probed(None, None, None, "the preprocess gives inputs of different sizes")
    spread = white - black
    photo = (np.abs(spread) > 1e-6).all(axis=0)  # padding stays the same under every probe
    if not photo.any():
        return Probed(None, None, None, "the preprocess ignores the photo")
    low = np.median(black[:, photo], axis=1)
    high = np.median(white[:, photo], axis=1)
    # each probe's value / 255, by direction: across, down, flat
    shares = np.concatenate([(a[:, photo] - black[:, photo]) / spread[:, photo] for a in answers])
    rows, cols = np.nonzero(photo)
    across = _line(cols, shares[0], width, black.shape[2])
    down = _line(rows, shares[1], height, black.shape[1])
    flat = np.abs(shares[2] - 128 / 255).max() <= _TOLERANCE
    if across is None or down is None or not flat:
        note = "the preprocess does more than resize, crop or pad the photo"
        return Probed(None, low, high, f"{note}: the map is stretched over it")
    frame = Frame(down[0], across[0], down[1], across[1])
    whole = max(abs(frame.top), abs(frame.left), abs(frame.height - 1), abs(frame.width - 1))
    return Probed(None if whole <= _TOLERANCE else frame, low, high)


def _values(inputs: Tensor) -> np.ndarray:
    """One model input (C, h, w) as float64."""
    return inputs.detach().reshape(inputs.shape[-3:]).to("cpu").double().numpy()


def _ramp(height: int, width: int) -> np.ndarray:
    """The ramp probe: red 0→255 across, green 0→255 down, blue 128. Each ramp is
    rounded with a dither that changes along the other side in 32 bands (wider than a
    resize blends), so that its mean over the bands keeps the fractions of a level that
    8 bits lose, here and in the preprocess's output (rounded alike, a ramp of about one
    level per input row reads a few rows steeper or flatter)."""
    generator = np.random.default_rng(0)
    ramp = np.empty((height, width, 3), np.uint8)
    ramp[..., 0] = np.floor(np.linspace(0, 255, width)[None, :] + _bands(height, generator))
    ramp[..., 1] = np.floor(np.linspace(0, 255, height)[:, None] + _bands(width, generator).T)
    ramp[..., 2] = 128
    return ramp


def _bands(length: int, generator: np.random.Generator) -> np.ndarray:
    """(length, 1): a random value in [0, 1) per band of ``length / 32`` places."""
    band = max(1, length // 32)
    return np.repeat(generator.random(-(-length // band)), band)[:length, None]


def _line(
    index: np.ndarray, shares: np.ndarray, photo: int, extent: int
) -> tuple[float, float] | None:
    """Where input rows (or columns) ``index`` lie on the photo, from the ramp's
    ``shares`` there: (start, span) as fractions of the photo's side ``photo``, of an
    input side of ``extent`` pixels; None unless they lie on one rising straight line."""
    position = (shares * (photo - 1) + 0.5) / photo  # a photo pixel's centre, as a fraction
    centre = (index + 0.5) / extent
    if np.ptp(centre) == 0:
        return None
    span, start = np.polyfit(centre, position, 1)
    stray = np.abs(start + span * centre - position)
    if span <= 0 or stray.max() > _TOLERANCE + 1.0 / photo:
        return None
    return float(start), float(span)
