"""Faithfulness metrics: equal to TorchCAM's and pytorch-grad-cam's on the same maps, exact
on hand-made cases, and Grad-CAM beats random maps of the same smoothness."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

from camwidget import CamwidgetError, Explainer, metrics, samples, zoo


@pytest.fixture(scope="module")
def lite0():
    return zoo.load("efficientnet_lite0")


class GivenMap:
    """A TorchCAM extractor that hands out a map we give it: both sides score one map."""

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


def close(ours: float, theirs: float) -> None:
    assert abs(ours - theirs) <= 1e-3 * max(1.0, abs(theirs)), (ours, theirs)


def cases(request, photo_tensor, lite0):
    """(model, model input (3, h, w), heatmap at the input's size, target) on resnet18 and
    on EfficientNet-Lite0 with a real photo."""
    resnet18 = request.getfixturevalue("resnet18")
    model, preprocess, _ = lite0
    coffee = preprocess(samples.load("coffee").resize((224, 224)))
    for net, x in ((resnet18, photo_tensor), (model, coffee)):
        ex = Explainer(net)
        e = ex.explain(x)
        yield net, x, e.heatmap, e.target, ex


def test_deletion_and_insertion_equal_torchcam(request, photo_tensor, lite0):
    for model, x, heatmap, target, ex in cases(request, photo_tensor, lite0):
        deleted, inserted = metrics.deletion_insertion(ex, x, heatmap, target)
        assert len(deleted.fractions) == 21 and deleted.fractions[-1] == 1.0
        peer = DeletionInsertionMetric(GivenMap(model, heatmap), partial(torch.softmax, dim=-1))
        peer.update(x[None], class_idx=target)
        theirs = peer.summary()
        close(deleted.auc, theirs["deletion_auc"])
        close(inserted.auc, theirs["insertion_auc"])
        assert deleted.auc == metrics.deletion(ex, x, heatmap, target).auc
        assert inserted.auc == metrics.insertion(ex, x, heatmap, target).auc


def test_average_drop_and_increase_equal_torchcam(request, photo_tensor, lite0):
    for model, x, heatmap, target, ex in cases(request, photo_tensor, lite0):
        peer = ClassificationMetric(GivenMap(model, heatmap), partial(torch.softmax, dim=-1))
        peer.update(x[None], class_idx=target)
        theirs = peer.summary()
        close(metrics.average_drop(ex, x, heatmap, target), theirs["avg_drop"])
        assert metrics.increase_in_confidence(ex, x, heatmap, target) == theirs["conf_increase"]


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # the peer's numpy use
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_pytorch_grad_cam(request, photo_tensor, lite0, order):
    removal = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    for model, x, heatmap, target, ex in cases(request, photo_tensor, lite0):
        ours = metrics.road(
            ex, x, heatmap, target, order=order, noise=0.0, percentiles=(20, 50, 80)
        )
        for percentile, change in zip(ours.percentiles, ours.changes, strict=True):
            peer = PerturbationConfidenceMetric(removal(percentile, NoisyLinearImputer(noise=0)))
            theirs = peer(x[None], heatmap[None], [ClassifierOutputSoftmaxTarget(target)], model)
            close(change, float(theirs[0]))


def test_imputation_is_the_mean_of_the_neighbours_and_noise_is_seeded():
    image = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6) % 7
    keep = np.ones((5, 6), bool)
    keep[2, 3] = keep[0, 0] = False
    filled = metrics.impute(image, keep, noise=0.0)
    assert torch.equal(filled[:, keep], image[:, keep])
    inside = sum(w * image[:, 2 + dr, 3 + dc] for (dr, dc), w in metrics.NEIGHBOURS)
    torch.testing.assert_close(filled[:, 2, 3], inside)
    corner = [(dr, dc, w) for (dr, dc), w in metrics.NEIGHBOURS if dr >= 0 and dc >= 0]
    expected = sum(w * image[:, dr, dc] for dr, dc, w in corner) / sum(w for *_, w in corner)
    torch.testing.assert_close(filled[:, 0, 0], expected)  # renormalised at the border
    a = metrics.impute(image, keep, 0.01, torch.Generator().manual_seed(3))
    b = metrics.impute(image, keep, 0.01, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, filled)


def test_pointing_game_and_energy_by_hand():
    heat = np.zeros((100, 100), np.float32)
    heat[50, 50] = 1.0
    heat[10:20, 10:20] = 0.5
    assert metrics.pointing_game(heat, (40, 40, 60, 60))
    assert metrics.pointing_game(heat, (58, 62, 90, 90))  # √(8² + 12²) ≈ 14.4 < 15 px away
    assert not metrics.pointing_game(heat, (70, 70, 90, 90))
    assert not metrics.pointing_game(heat, (70, 70, 90, 90), tolerance=0)
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True
    assert metrics.energy_in_box(heat, mask) == pytest.approx(50 / 51)
    assert metrics.energy_in_box(heat, (50, 50, 50, 50)) == pytest.approx(1 / 51)
    assert metrics.energy_in_box(np.zeros((4, 4)), mask[:4, :4]) == 0.0
    with pytest.raises(CamwidgetError, match="a box"):
        metrics.energy_in_box(heat, np.ones((3, 3)))


def test_baselines_and_bad_arguments(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    heat = ex.explain(photo_tensor, "layer4").heatmap
    aucs = {
        name: metrics.deletion(ex, photo_tensor, heat, 3, baseline=name, steps=4).auc
        for name in ("zeros", "blur", "mean")
    }
    assert len(set(aucs.values())) == 3
    same = metrics.deletion(ex, photo_tensor, heat, 3, baseline=torch.zeros(3, 1, 1), steps=4)
    assert same.auc == aucs["zeros"]
    logits = metrics.deletion(ex, photo_tensor, heat, 3, steps=4, score="logit")
    assert logits.scores[0] == pytest.approx(ex.explain(photo_tensor, "layer4", 3).score, rel=1e-5)
    with pytest.raises(CamwidgetError, match="baseline must be"):
        metrics.deletion(ex, photo_tensor, heat, 3, baseline="noise")
    with pytest.raises(CamwidgetError, match="a heatmap must be"):
        metrics.insertion(ex, photo_tensor, heat[None], 3)
    with pytest.raises(CamwidgetError, match="score must be"):
        metrics.average_drop(ex, photo_tensor, heat, 3, score="probs")


def test_perturbed_inputs_are_scored_in_batches(resnet18, photo_tensor, monkeypatch):
    ex = Explainer(resnet18)
    heat = ex.explain(photo_tensor, "layer4").heatmap
    calls = []
    handle = resnet18.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    try:
        metrics.deletion_insertion(ex, photo_tensor, heat, 3, steps=20, batch_size=16)
    finally:
        handle.remove()
    assert calls == [16, 16, 7]  # 39 perturbed inputs; the original comes from the cache


def test_the_curves_are_told_as_their_points_are_scored(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    heat = ex.explain(photo_tensor, "layer4").heatmap
    told = []
    deleted, inserted = metrics.deletion_insertion(
        ex,
        photo_tensor,
        heat,
        3,
        steps=20,
        batch_size=16,
        drawn=lambda *so_far: told.append(so_far),
    )
    assert [fraction for *_, fraction in told] == [16 / 39, 32 / 39, 1.0]
    assert [len(d.fractions) for d, _, _ in told] == [17, 21, 21]  # deletion's points first
    assert [len(i.fractions) for _, i, _ in told] == [0, 13, 21]
    np.testing.assert_array_equal(told[0][0].scores, deleted.scores[:17])
    np.testing.assert_array_equal(told[1][1].scores, inserted.scores[:13])
    for curve, final in zip(told[-1][:2], (deleted, inserted), strict=True):
        np.testing.assert_array_equal(curve.fractions, final.fractions)
        np.testing.assert_array_equal(curve.scores, final.scores)


def test_grad_cam_beats_random_maps_of_the_same_smoothness(lite0):
    """Insertion − deletion AUC on every shipped photo, against the mean of five random
    maps drawn on the layer's grid and upsampled like a CAM."""
    model, preprocess, labels = lite0
    ex = Explainer(model, preprocess, labels)
    for name in samples.names():
        photo = samples.load(name)
        e = ex.explain(photo)
        deleted, inserted = metrics.deletion_insertion(ex, photo, e.heatmap, e.target)
        ours = inserted.auc - deleted.auc
        floor = []
        for seed in range(5):
            noise = metrics.random_heatmap(e.raw.shape, e.heatmap.shape, seed)
            d, i = metrics.deletion_insertion(ex, photo, noise, e.target)
            floor.append(i.auc - d.auc)
        print(f"\n{name}: Grad-CAM {ours:+.3f}, random maps {np.mean(floor):+.3f} (mean of 5)")
        assert ours > np.mean(floor), name
