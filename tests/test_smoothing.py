"""Test-time augmentation smoothing (``aug_smooth``): the mean of the six copies' maps,
each normalised and flipped back, for every layer method; pytorch-grad-cam's differs
only in normalising each map again after upsampling it."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam import GradCAM, HiResCAM, LayerCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_methods import a_and_g, heatmap_of

from camwidget import Explainer, methods, smoothing


def copies_raw(model, x, layer, target, method="gradcam"):
    """Each augmented copy's map, explained on its own (no smoothing)."""
    plain = Explainer(model)
    copies = smoothing.augmented(x[None])
    return np.stack([plain.explain(c[0], layer, target, method).raw for c in copies])


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_aug_smooth_is_the_mean_of_the_copies_and_the_peers_but_for_a_normalisation(
    resnet18, photo_tensor, layer
):
    ex = Explainer(resnet18)
    off = ex.explain(photo_tensor, layer, 3, "gradcam").raw
    before = dict(ex.passes)
    ex.aug_smooth = True
    e = ex.explain(photo_tensor, layer, 3, "gradcam")
    assert ex.passes["forward"] == before["forward"] + 1  # the six copies: one batch
    assert ex.passes["backward"] == before["backward"] + 1
    raws = copies_raw(resnet18, photo_tensor, layer, 3)
    np.testing.assert_allclose(e.raw, smoothing.smoothed(raws), atol=1e-5)
    assert e.raw.min() >= 0 and e.raw.max() <= 1
    # the peer normalises each copy's map before and again after upsampling it (cv2)
    scaled = scale_cam_image(scale_cam_image(raws, (224, 224)))
    scaled[3:] = scaled[3:, :, ::-1]
    with GradCAM(resnet18, [resnet18.get_submodule(layer)]) as peer:
        theirs = peer(photo_tensor[None], [ClassifierOutputTarget(3)], aug_smooth=True)[0]
    np.testing.assert_allclose(theirs, scaled.mean(axis=0), atol=1e-4)
    assert not np.allclose(off / off.max(), e.raw / e.raw.max(), atol=1e-2)


def test_every_layer_method_takes_it(resnet18, photo_tensor):
    layer_methods = [
        n for n, spec in methods.REGISTRY.items() if spec.needs_layer and not spec.pixel_level
    ]
    for name, spec in methods.REGISTRY.items():
        assert ("aug_smooth" in spec.options) == (name in layer_methods)
        if name in layer_methods:
            assert spec.keyword("aug_smooth") == "aug_smooth"
    ex = Explainer(resnet18, aug_smooth=True, scorecam_channels=4)
    for name in ("gradcam", "eigencam", "finercam", "scorecam", "cam"):
        e = ex.explain(photo_tensor, "layer4", 3, name)
        assert np.isfinite(e.raw).all() and 0 <= e.raw.min() <= e.raw.max() <= 1
        assert ex.options(name)["aug_smooth"] is True
    ex.aug_smooth = False  # part of the cache key: made again
    again = ex.explain(photo_tensor, "layer4", 3, "gradcam")
    assert again.timings["backward"] > 0 or again.timings["map"] > 0
    batch = Explainer(resnet18, aug_smooth=True).explain_batch([photo_tensor], "layer4", [3])
    np.testing.assert_allclose(
        batch[0].raw, Explainer(resnet18, aug_smooth=True).explain(photo_tensor, "layer4", 3).raw
    )


CONTRIBUTIONS = {  # each method's per-channel maps, from A and g (float64)
    "gradcam": (GradCAM, lambda a, g: g.mean(axis=(1, 2))[:, None, None] * a),
    "hirescam": (HiResCAM, lambda a, g: g * a),
    "layercam": (LayerCAM, lambda a, g: np.maximum(g, 0) * a),
}


@pytest.mark.parametrize("method", list(CONTRIBUTIONS))
def test_eigen_smooth_is_the_peers_first_component_with_the_sign_fixed(
    resnet18, photo_tensor, method
):
    """eigen_smooth: the first principal component of the per-channel maps (centred), as
    pytorch-grad-cam's; its sign, which the peer leaves to the SVD, is the one that
    correlates with the mean of the centred maps."""
    peer, contributions = CONTRIBUTIONS[method]
    ex = Explainer(resnet18, eigen_smooth=True)
    for layer in ("layer3", "layer4"):
        a, g = a_and_g(resnet18, photo_tensor, layer, 3)
        x = contributions(a, g).reshape(a.shape[0], -1).T
        x = x - x.mean(axis=0)
        projection = x @ np.linalg.svd(x, full_matrices=False)[2][0]
        signs = {s: heatmap_of(np.maximum(s * projection, 0).reshape(a.shape[1:])) for s in (1, -1)}
        with peer(resnet18, [resnet18.get_submodule(layer)]) as cam:
            theirs = cam(photo_tensor[None], [ClassifierOutputTarget(3)], eigen_smooth=True)[0]
        assert min(np.abs(theirs - m).max() for m in signs.values()) <= 1e-3, layer
        sign = 1 if np.corrcoef(projection, x.mean(axis=1))[0, 1] >= 0 else -1
        ours = ex.explain(photo_tensor, layer, 3, method).heatmap
        assert np.abs(ours - signs[sign]).max() <= 1e-3, layer
