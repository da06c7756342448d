"""Faithfulness: does a map point at what the model uses?

Every metric takes an :class:`~camwidget.Explainer`, an image, a heatmap (float (H, W)
in [0, 1], e.g. ``Explanation.heatmap``) and a target (anything ``explain`` accepts;
None: the model's top answer), and scores with the target's probability
(``score="probability"``, by the explainer's activation) or its value (``"logit"``).
Pixels are ranked by the heatmap resized (bilinear) to the model input's size, highest
first, ties broken by flat index. Perturbed inputs are scored in batches without
autograd; the unperturbed score comes from the explainer's cached forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import passes, render
from .errors import CamwidgetError
from .explanation import PreparedImage

Progress = Callable[[int, int], None]
#: Told the deletion and insertion curves so far and the fraction of their inputs scored.
Drawn = Callable[["Curve", "Curve", float], None]
#: ROAD's noisy linear imputation: each removed pixel is this weighted mean of its
#: 8 neighbours (Rong et al., ICML 2022).
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve: ``scores`` at ``fractions`` of the pixels
    perturbed; ``auc`` is the trapezoid area under it."""

    fractions: np.ndarray
    scores: np.ndarray

    @property
    def auc(self) -> float:
        widths = np.diff(self.fractions)
        return float(np.sum(widths * (self.scores[1:] + self.scores[:-1]) / 2.0))


@dataclass(frozen=True)
class Road:
    """ROAD: the score change after removing the pixels above (``"morf"``) or below
    (``"lerf"``) each heatmap percentile; ``mean`` over the percentiles."""

    order: str
    percentiles: tuple[int, ...]
    changes: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.changes.mean())


def deletion(
    ex,
    image: object,
    heatmap: np.ndarray,
    target: object = None,
    *,
    steps: int = 20,
    baseline: str | Tensor = "zeros",
    score: str = "probability",
    batch_size: int | None = None,
) -> Curve:
    """RISE's deletion (Petsiuk et al., 2018): the score as the top-k pixels are replaced
    by ``baseline``, k = 0, s, 2s, ... and n, s = ceil(n / steps). Lower AUC: the map
    found what the model needs."""
    return deletion_insertion(ex, image, heatmap, target, steps, baseline, score, batch_size)[0]


def insertion(
    ex,
    image: object,
    heatmap: np.ndarray,
    target: object = None,
    *,
    steps: int = 20,
    baseline: str | Tensor = "zeros",
    score: str = "probability",
    batch_size: int | None = None,
) -> Curve:
    """RISE's insertion: the score as the top-k pixels are restored on ``baseline``.
    Higher AUC: the map found what suffices."""
    return deletion_insertion(ex, image, heatmap, target, steps, baseline, score, batch_size)[1]


def deletion_insertion(
    ex,
    image: object,
    heatmap: np.ndarray,
    target: object = None,
    steps: int = 20,
    baseline: str | Tensor = "zeros",
    score: str = "probability",
    batch_size: int | None = None,
    progress: Progress | None = None,
    drawn: Drawn | None = None,
) -> tuple[Curve, Curve]:
    """Both RISE curves at once, sharing the all-baseline input: 2 × steps - 1 perturbed
    forwards. ``baseline``: ``"zeros"`` (of the model input, as TorchCAM), ``"blur"``
    (Gaussian, kernel 11, sigma 5, as RISE's insertion), ``"mean"`` (per channel) or a
    tensor broadcastable to the input (3, h, w). ``drawn(deletion, insertion, fraction)``
    is told the curves so far after each batch (deletion's points are scored first)."""
    if steps < 1:
        raise CamwidgetError(f"steps must be at least 1, not {steps}")
    original, prepared, ranks = _setup(ex, image, heatmap, target, score)
    inputs = prepared.inputs[0]
    filler = _baseline(inputs, baseline)
    n = ranks.size
    counts = [*range(0, n, math.ceil(n / steps)), n]
    jobs = [(count, False) for count in counts[1:]] + [(count, True) for count in counts[1:-1]]
    ranks = torch.from_numpy(ranks).to(inputs.device)

    def perturbed(chunk: list[tuple[int, bool]]) -> Tensor:
        kept = torch.stack([ranks < count for count, _ in chunk])[:, None]
        restore = torch.tensor([insert for _, insert in chunk], device=inputs.device)
        return torch.where(kept ^ ~restore[:, None, None, None], inputs, filler)

    fractions = np.asarray(counts, dtype=np.float64) / n

    def scored(so_far: np.ndarray) -> None:
        drawn(*_curves(original, so_far, fractions), len(so_far) / len(jobs))

    found = _scored(
        ex, prepared, target, score, jobs, perturbed, batch_size, progress,
        scored if drawn is not None else None,
    )  # fmt: skip
    return _curves(original, found, fractions)


def _curves(original: float, scores: np.ndarray, fractions: np.ndarray) -> tuple[Curve, Curve]:
    """The deletion and insertion curves of ``scores``, deletion's first (steps of them:
    the last is the all-baseline input, where insertion starts), then insertion's (steps
    - 1; the original score ends it); each curve up to its last point scored so far."""
    steps = len(fractions) - 1
    removed, inserted = scores[:steps], scores[steps:]
    deleted = Curve(fractions[: len(removed) + 1], np.concatenate([[original], removed]))
    if len(removed) < steps:
        return deleted, Curve(fractions[:0], np.zeros(0))
    ends = [original] if len(inserted) == steps - 1 else []
    points = np.concatenate([[removed[-1]], inserted, ends])
    return deleted, Curve(fractions[: len(points)], points)


def average_drop(
    ex, image: object, heatmap: np.ndarray, target: object = None, *, score: str = "probability"
) -> float:
    """max(0, Y − O) / Y, with Y the score on the image and O on the image multiplied by
    the heatmap (Chattopadhay et al., Grad-CAM++, §5); 0 where Y ≤ 0."""
    original, masked = _masked(ex, image, heatmap, target, score)
    return max(0.0, original - masked) / original if original > 0 else 0.0


def increase_in_confidence(
    ex, image: object, heatmap: np.ndarray, target: object = None, *, score: str = "probability"
) -> float:
    """1 if the score on the image multiplied by the heatmap exceeds the score on the
    image, else 0 (Grad-CAM++, §5)."""
    original, masked = _masked(ex, image, heatmap, target, score)
    return 1.0 if masked > original else 0.0


def road(
    ex,
    image: object,
    heatmap: np.ndarray,
    target: object = None,
    *,
    percentiles: tuple[int, ...] = PERCENTILES,
    order: str = "morf",
    noise: float = 0.01,
    seed: int = 0,
    score: str = "probability",
    batch_size: int | None = None,
) -> Road:
    """ROAD, remove and debias (Rong et al., ICML 2022): for each percentile p, the
    pixels whose heatmap value is at or above its p-th percentile (``"morf"``, most
    relevant first), or whose 1 − heat is (``"lerf"``), are replaced by noisy linear
    imputation; the result is the score change per percentile. One batch of forwards."""
    if order not in ("morf", "lerf"):
        raise CamwidgetError(f"order must be 'morf' or 'lerf', not {order!r}")
    original, prepared, _ = _setup(ex, image, heatmap, target, score)
    inputs = prepared.inputs[0]
    heat = _resized(heatmap, prepared)
    values = heat if order == "morf" else 1.0 - heat
    generator = torch.Generator().manual_seed(seed)
    imputed = torch.stack(
        [impute(inputs, values < np.percentile(values, p), noise, generator) for p in percentiles]
    )
    scores = ex.scores(prepared, target, imputed, score=score, batch_size=batch_size)
    return Road(order, tuple(percentiles), scores.cpu().numpy().astype(np.float64) - original)


def road_combined(
    ex, image: object, heatmap: np.ndarray, target: object = None, **options: object
) -> float:
    """(LeRF − MoRF) / 2 of the mean ROAD changes: higher is more faithful."""
    lerf = road(ex, image, heatmap, target, order="lerf", **options)
    morf = road(ex, image, heatmap, target, order="morf", **options)
    return (lerf.mean - morf.mean) / 2.0


def impute(image: Tensor, keep: np.ndarray, noise: float = 0.01, generator=None) -> Tensor:
    """``image`` (C, h, w) with the pixels where ``keep`` (bool (h, w)) is False replaced
    by the weighted mean of their 8 neighbours (:data:`NEIGHBOURS`, solved as one sparse
    linear system over all removed pixels) plus Gaussian ``noise``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    height, width = keep.shape
    flat = keep.ravel()
    missing = np.flatnonzero(~flat)
    out = image.detach().cpu().reshape(image.shape[0], -1).clone()
    if not len(missing):
        return out.reshape(image.shape).to(image.device)
    index = np.full(flat.size, -1)
    index[missing] = np.arange(len(missing))
    values = out.double().numpy()
    rows, cols, weights, total = [], [], [], np.ones(len(missing))
    right = np.zeros((len(missing), image.shape[0]))
    row, col = np.divmod(missing, width)
    for (dr, dc), weight in NEIGHBOURS:
        r, c = row + dr, col + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        total[~inside] -= weight
        equation, neighbour = np.flatnonzero(inside), (r * width + c)[inside]
        known = flat[neighbour]
        right[equation[known]] -= weight * values[:, neighbour[known]].T
        rows.append(equation[~known])
        cols.append(index[neighbour[~known]])
        weights.append(np.full(int((~known).sum()), weight))
    diagonal = np.arange(len(missing))
    system = coo_matrix(
        (
            np.concatenate([*weights, -total]),
            (np.concatenate([*rows, diagonal]), np.concatenate([*cols, diagonal])),
        ),
        shape=(len(missing), len(missing)),
    ).tocsc()
    solved = torch.from_numpy(np.asarray(spsolve(system, right)).reshape(len(missing), -1))
    filled = solved.T.to(out.dtype)
    if noise:
        filled = filled + noise * torch.randn(filled.shape, generator=generator)
    out[:, missing] = filled
    return out.reshape(image.shape).to(image.device)


def pointing_game(heatmap: np.ndarray, box_or_mask: object, tolerance: int = 15) -> bool:
    """Whether the heatmap's maximum lies in the box (x1, y1, x2, y2, in its pixels) or
    the bool mask (H, W), within ``tolerance`` pixels (Zhang et al., 2018)."""
    heat = np.asarray(heatmap)
    region = _region(box_or_mask, heat.shape)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    rows, cols = np.nonzero(region)
    return bool(len(rows)) and bool(((rows - y) ** 2 + (cols - x) ** 2 <= tolerance**2).any())


def energy_in_box(heatmap: np.ndarray, box_or_mask: object) -> float:
    """The share of the heatmap's mass inside the box or mask (Wang et al., Score-CAM)."""
    heat = np.asarray(heatmap, dtype=np.float64)
    total = heat.sum()
    return float(heat[_region(box_or_mask, heat.shape)].sum() / total) if total > 0 else 0.0


def random_heatmap(grid: tuple[int, int], size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A random map as smooth as a CAM: uniform values on the layer's ``grid`` (h', w'),
    upsampled to ``size`` and normalised as a CAM is. Per-pixel noise would be no fair
    floor: scattered noise breaks any CNN quickly and wins at deletion."""
    values = np.random.default_rng(seed).random(grid).astype(np.float32)
    return render.normalise(render.upsample(values, size))


def _setup(ex, image: object, heatmap: np.ndarray, target: object, score: str):
    """The unperturbed score, the prepared image and the pixel ranks at the model
    input's size (0 = the highest heat; ties by flat index)."""
    original = float(ex.scores(image, target, score=score))
    prepared = ex.prepare(image)
    heat = _resized(heatmap, prepared)
    order = np.argsort(-heat.ravel(), kind="stable")
    ranks = np.empty(heat.size, dtype=np.int64)
    ranks[order] = np.arange(heat.size)
    return original, prepared, ranks.reshape(heat.shape)


def _resized(heatmap: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    """``heatmap`` at the model input's size: a map at the image's size is cut to the
    part the model saw (its frame)."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or not heat.size or not np.isfinite(heat).all():
        raise CamwidgetError(f"a heatmap must be a finite 2-D array (H, W); got {heat.shape}")
    size = tuple(prepared.inputs.shape[-2:])
    if heat.shape == size:
        return heat
    frame = prepared.frame if heat.shape == tuple(prepared.size) else None
    return render.upsample(heat, size, frame.inverse if frame else None)


def _baseline(inputs: Tensor, baseline: str | Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(inputs), inputs.shape)
        except RuntimeError:
            raise CamwidgetError(
                f"a baseline tensor must broadcast to the input {tuple(inputs.shape)}; got "
                f"{tuple(baseline.shape)}"
            ) from None
    if baseline == "zeros":
        return torch.zeros_like(inputs)
    if baseline == "mean":
        return inputs.mean(dim=(1, 2), keepdim=True).expand_as(inputs)
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(inputs[None], kernel_size=11, sigma=5.0)[0]
    raise CamwidgetError(f"baseline must be 'zeros', 'blur', 'mean' or a tensor, not {baseline!r}")


def _masked(ex, image: object, heatmap: np.ndarray, target: object, score: str):
    """The score on the image and on the image multiplied by the heatmap."""
    original = float(ex.scores(image, target, score=score))
    prepared = ex.prepare(image)
    inputs = prepared.inputs
    heat = torch.from_numpy(_resized(heatmap, prepared)).to(inputs)
    return original, float(ex.scores(image, target, inputs * heat, score=score)[0])


def _scored(
    ex, prepared, target, score, jobs, perturbed, batch_size, progress, scored=None
) -> np.ndarray:
    """Scores of the perturbed inputs made from ``jobs``, ``batch_size`` at a time;
    after each batch, ``progress(done, total)`` (which may raise to stop) and then
    ``scored(scores so far)``."""
    step, found = passes.batch_size(batch_size, prepared.inputs.device), np.zeros(0)
    for start in range(0, len(jobs), step):
        chunk = jobs[start : start + step]
        scores = ex.scores(prepared, target, perturbed(chunk), score=score, batch_size=step)
        found = np.concatenate([found, scores.cpu().numpy().astype(np.float64)])
        if progress is not None:
            progress(min(start + step, len(jobs)), len(jobs))
        if scored is not None:
            scored(found)
    return found


def _region(box_or_mask: object, shape: tuple[int, int]) -> np.ndarray:
    region = np.asarray(box_or_mask)
    if region.shape == tuple(shape):
        return region.astype(bool)
    if region.size != 4:
        raise CamwidgetError(
            f"a region is a box (x1, y1, x2, y2) or a bool mask of the heatmap's shape "
            f"{tuple(shape)}; got shape {region.shape}"
        )
    x1, y1, x2, y2 = (float(v) for v in region.ravel())
    rows, cols = np.indices(shape)
    return (cols >= x1) & (cols <= x2) & (rows >= y1) & (rows <= y2)
