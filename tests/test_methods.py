"""The method family: exact identities, the peer where definitions agree, and direct
float64 evaluations where they do not."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
from sklearn.decomposition import KernelPCA
from torch import nn
from torch.nn import functional as F
from torchcam.methods import ISCAM, SSCAM, SmoothGradCAMpp
from torchcam.methods import ScoreCAM as TorchCAMScoreCAM

import camwidget
from camwidget import METHODS, CamwidgetError, Explainer, components, render
from camwidget.cams import gradcam_plus_plus, randomcam, xgradcam
from camwidget.components import eigencam
from camwidget.methods import MethodContext
from camwidget.perturbation import ablationcam, scorecam

PEERS = {
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "gradcam-elementwise": GradCAMElementWise,
}
LAYERS = {
    "resnet18": ["layer1", "layer2.1.conv1", "layer3", "layer4"],
    "vgg11": ["features.4", "features.12", "features.19"],
}


def a_and_g(model, x, layer, target):
    """A and dy_c/dA by plain torch hooks, independently of camwidget (float64 numpy)."""
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        logits = model(x[None].clone().requires_grad_(True))
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(logits[0, target], store["a"])
    return store["a"][0].detach().double().numpy(), g[0].double().numpy()


def heatmap_of(raw, size=(224, 224)):
    return render.normalise(render.upsample(raw, size))


def test_every_contract_method_is_registered():
    assert set(METHODS) == {
        "cam",
        "gradcam",
        "gradcam++",
        "hirescam",
        "xgradcam",
        "layercam",
        "scorecam",
        "eigencam",
        "ablationcam",
        "guided-backprop",
        "lrp",
        "guided-gradcam",
        "gradcam-elementwise",
        "eigengradcam",
        "fem",
        "randomcam",
        "kpcacam",
        "finercam",
        "shapleycam",
        "smoothgradcam++",
        "saliency",
        "input-x-gradient",
        "integrated-gradients",
        "smoothgrad",
        "gradientshap",
        "occlusion",
        "deeplift",
        "sscam",
        "iscam",
        "fullgrad",
        "legrad",
    }


def test_identities_at_a_gap_fc_layer(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    weights = resnet18.fc.weight.detach().double().numpy()
    for target in (7, 281, 954):
        maps = {
            m: ex.explain(photo_tensor, "layer4", target, m).heatmap
            for m in ("gradcam", "hirescam", "xgradcam", "layercam")
        }
        np.testing.assert_allclose(maps["hirescam"], maps["gradcam"], atol=1e-5)
        np.testing.assert_allclose(maps["xgradcam"], maps["gradcam"], atol=1e-5)
        a, _ = a_and_g(resnet18, photo_tensor, "layer4", target)
        expected = np.maximum(np.einsum("k,khw->hw", np.maximum(weights[target], 0), a), 0)
        np.testing.assert_allclose(maps["layercam"], heatmap_of(expected), atol=1e-5)


@pytest.mark.parametrize("model_name", list(LAYERS))
@pytest.mark.parametrize("method", list(PEERS))
def test_peer_agreement(request, photo_tensor, model_name, method):
    model = request.getfixturevalue(model_name)
    ex = Explainer(model)
    for layer in LAYERS[model_name]:
        with PEERS[method](model=model, target_layers=[model.get_submodule(layer)]) as peer:
            for target in (3, 281):
                theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(target)])[0]
                ours = ex.explain(photo_tensor, layer=layer, target=target, method=method)
                diff = float(np.abs(ours.heatmap - theirs).max())
                assert diff <= 1e-3, f"{method} {model_name} {layer} {target}: {diff}"


def gradcam_pp_float64(a, g):
    """Eq. 19 of Chattopadhay et al., written out independently in numpy float64."""
    out = np.zeros(a.shape[1:])
    weights = []
    for ak, gk in zip(a, g, strict=True):
        numerator = gk**2
        denominator = 2 * gk**2 + ak.sum() * gk**3
        alpha = np.divide(
            numerator, denominator, out=np.zeros_like(gk), where=(gk != 0) & (denominator != 0)
        )
        weights.append((alpha * np.maximum(gk, 0)).sum())
    for wk, ak in zip(weights, a, strict=True):
        out += wk * ak
    return np.maximum(out, 0)


def test_gradcam_plus_plus_is_exactly_eq19(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    worst_peer = 0.0
    for layer in ("layer2", "layer3", "layer4"):
        a, g = a_and_g(resnet18, photo_tensor, layer, 281)
        expected = gradcam_pp_float64(a, g)
        ours = ex.explain(photo_tensor, layer, 281, "gradcam++")
        np.testing.assert_allclose(ours.raw, expected, rtol=1e-4, atol=1e-6 * expected.max())
        with GradCAMPlusPlus(model=resnet18, target_layers=[resnet18.get_submodule(layer)]) as peer:
            theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(281)])[0]
        worst_peer = max(worst_peer, float(np.abs(ours.heatmap - theirs).max()))
    # pytorch-grad-cam adds eps = 1e-6 to a denominator of order g^2 (~1e-6 here)
    print(f"\nGrad-CAM++ vs pytorch-grad-cam, unscaled resnet18: max diff {worst_peer:.3f}")
    assert worst_peer > 1e-2, "the peer's epsilon should matter on the unscaled model"


def test_gradcam_plus_plus_equals_the_peer_when_gradients_are_large(resnet18, photo_tensor):
    model = copy.deepcopy(resnet18)
    with torch.no_grad():
        model.fc.weight.mul_(1000)  # gradients x1000: the peer's eps becomes negligible
    ex = Explainer(model)
    for layer in ("layer2", "layer3", "layer4"):
        with GradCAMPlusPlus(model=model, target_layers=[model.get_submodule(layer)]) as peer:
            theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(281)])[0]
        ours = ex.explain(photo_tensor, layer, 281, "gradcam++").heatmap
        assert np.abs(ours - theirs).max() <= 1e-3, layer


def eigencam_float64(a):
    matrix = a.reshape(a.shape[0], -1).T
    _, _, vh = np.linalg.svd(matrix, full_matrices=False)
    projection = matrix @ vh[0]
    mean_map = matrix.mean(axis=1)
    if np.corrcoef(projection, mean_map)[0, 1] < 0:
        projection = -projection
    return projection.reshape(a.shape[1:])


def test_eigencam_is_the_first_component_with_a_fixed_sign(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    correlations = []
    for layer in ("layer2", "layer3", "layer4"):
        a, _ = a_and_g(resnet18, photo_tensor, layer, 0)
        e = ex.explain(photo_tensor, layer, 5, "eigencam")
        expected = eigencam_float64(a)
        np.testing.assert_allclose(e.raw, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
        assert np.corrcoef(e.raw.ravel(), a.mean(axis=0).ravel())[0, 1] > 0
        # class-agnostic: another class gives the same map, with no backward
        before = ex.passes["backward"]
        np.testing.assert_array_equal(ex.explain(photo_tensor, layer, 77, "eigencam").raw, e.raw)
        assert ex.passes["backward"] == before
        with EigenCAM(model=resnet18, target_layers=[resnet18.get_submodule(layer)]) as peer:
            theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(5)])[0]
        correlations.append(np.corrcoef(e.heatmap.ravel(), theirs.ravel())[0, 1])
    print(
        "\nEigen-CAM vs pytorch-grad-cam (centred, ReLU, sign left to SVD): correlation "
        + ", ".join(f"{c:+.2f}" for c in correlations)
    )


def test_eigengradcam_is_the_peers_with_the_sign_fixed(resnet18, photo_tensor):
    """The peer's definition (B = g ⊙ A centred on its column means, projected on its
    first right singular vector, ReLU): the peer takes the SVD's sign as it comes, ours
    the sign that correlates with the mean of B's columns; so the peer's map is one of
    the two signs' maps and ours is the one this rule picks."""
    ex = Explainer(resnet18)
    for layer in LAYERS["resnet18"]:
        module = resnet18.get_submodule(layer)
        for target in (3, 281):
            a, g = a_and_g(resnet18, photo_tensor, layer, target)
            b = (g * a).reshape(a.shape[0], -1).T
            b = b - b.mean(axis=0)
            projection = b @ np.linalg.svd(b, full_matrices=False)[2][0]
            signs = {
                s: heatmap_of(np.maximum(s * projection, 0).reshape(a.shape[1:])) for s in (1, -1)
            }
            with EigenGradCAM(model=resnet18, target_layers=[module]) as peer:
                theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(target)])[0]
            assert min(np.abs(theirs - m).max() for m in signs.values()) <= 1e-3, (layer, target)
            sign = 1 if np.corrcoef(projection, b.mean(axis=1))[0, 1] >= 0 else -1
            ours = ex.explain(photo_tensor, layer, target, "eigengradcam").heatmap
            assert np.abs(ours - signs[sign]).max() <= 1e-3, (layer, target)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "cosine"])
def test_kpcacam_is_scikit_learns_kernel_pca_with_the_sign_fixed(resnet18, photo_tensor, kernel):
    """KPCA-CAM: the leading kernel principal component of the cells' centred activation
    vectors, as scikit-learn's KernelPCA computes it; the peer takes scikit-learn's sign
    (its largest entry positive), ours the one that correlates with the mean of the
    centred activations: the peer's map is one of the two signs' maps (checked with the
    default kernel), ours the one the rule picks."""
    ex = Explainer(resnet18, kpcacam_kernel=kernel)
    for layer in LAYERS["resnet18"]:
        a, _ = a_and_g(resnet18, photo_tensor, layer, 3)
        x = a.reshape(a.shape[0], -1).T
        x = x - x.mean(axis=0)
        projection = KernelPCA(n_components=1, kernel=kernel).fit_transform(x)[:, 0]
        signs = {s: heatmap_of(np.maximum(s * projection, 0).reshape(a.shape[1:])) for s in (1, -1)}
        if kernel == "sigmoid":
            module = resnet18.get_submodule(layer)
            with KPCA_CAM(model=resnet18, target_layers=[module]) as peer:
                theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(3)])[0]
            assert min(np.abs(theirs - m).max() for m in signs.values()) <= 1e-3, layer
        sign = 1 if np.corrcoef(projection, x.mean(axis=1))[0, 1] >= 0 else -1
        ours = ex.explain(photo_tensor, layer, 3, "kpcacam")
        assert np.abs(ours.heatmap - signs[sign]).max() <= 1e-3, layer
        np.testing.assert_array_equal(ex.explain(photo_tensor, layer, 281, "kpcacam").raw, ours.raw)


def test_kpcacam_of_a_layer_with_many_cells_is_that_of_its_pooled_grid(resnet18, photo):
    """ResNet-18's conv1 on the 512×600 photo has 300 × 256 cells (a 47 GB kernel
    matrix): KPCA-CAM there is KPCA-CAM of the maps averaged over 5 × 5 blocks (60 × 52
    cells: adaptive average pooling, the last column of blocks one cell narrower),
    upsampled back."""
    ex = Explainer(resnet18)
    explained = ex.explain(photo, "conv1", 3, "kpcacam")
    inputs = ex.prepare(photo).inputs
    activations = camwidget.capture.forward(resnet18, inputs).activations["conv1"][0].detach()
    assert activations.shape[-2:] == (300, 256) and components.KPCA_CELLS < 300 * 256
    pooled = F.adaptive_avg_pool2d(activations.double()[None], (60, 52))[0]
    context = SimpleNamespace(options={"kernel": "sigmoid", "gamma": None})
    coarse = components.kpcacam(pooled, None, context)
    expected = F.interpolate(coarse[None, None].float(), (300, 256), mode="bilinear")[0, 0]
    torch.testing.assert_close(torch.as_tensor(explained.raw), expected, rtol=1e-5, atol=1e-6)


def test_finercam_equals_the_peers(resnet18, photo_tensor):
    """Finer-CAM: Grad-CAM of class c against the classes nearest it; equal to
    pytorch-grad-cam's FinerCAM (its three nearest classes, alpha 1 and 0.6) and to its
    FinerWeightedTarget for classes given; with alpha 0 the contrast is y_c itself."""
    for alpha in (1.0, 0.6):
        ex = Explainer(resnet18, finercam_alpha=alpha)
        for layer in ("layer3", "layer4"):
            ours = ex.explain(photo_tensor, layer, 3, "finercam")
            with FinerCAM(resnet18, [resnet18.get_submodule(layer)]) as peer:
                theirs = peer(photo_tensor[None], target_idx=3, alpha=alpha)[0]
            assert np.abs(ours.heatmap - theirs).max() <= 1e-3, (alpha, layer)
            assert ours.target.index == 3 and len(ours.target.others) == 3
    ex = Explainer(resnet18, finercam_against=(281, 285))
    ours = ex.explain(photo_tensor, "layer4", 3, "finercam")
    assert " against " in ours.label and ours.target.others == (281, 285)
    with GradCAM(resnet18, [resnet18.layer4]) as peer:
        target = FinerWeightedTarget(3, [281, 285], 1.0)
        theirs = peer(photo_tensor[None], targets=[target])[0]
    assert np.abs(ours.heatmap - theirs).max() <= 1e-3
    plain = Explainer(resnet18, finercam_alpha=0.0, finercam_against=(281,))
    contrast = plain.explain(photo_tensor, "layer4", 3, "finercam").raw
    gradcam = plain.explain(photo_tensor, "layer4", 3, "gradcam").raw
    # p_j y_c / (p_j + 1e-9): y_c up to the peer's 1e-9 (p_j is ~1e-4 here)
    np.testing.assert_allclose(contrast, gradcam, rtol=0, atol=1e-4 * np.abs(gradcam).max())


def smooth_plus_plus(a, gradients, last=None):
    """Smooth Grad-CAM++ in float64 numpy from A and the gradients at the noisy inputs:
    camwidget's rule (the paper's: sum_ab A times mean g^3, ReLU of the mean gradient),
    or, given ``last`` (the last noisy input's A), TorchCAM's code (sum_ab of A times
    mean g^3, +1e-8, ReLU of the last sample's gradient, weights applied to ``last``)."""
    g = np.stack(gradients)
    torchcam = last is not None
    g2, g3 = (g**2).mean(0), (g**3).mean(0)
    if torchcam:
        denominator = 2 * g2 + (g3 * a).sum(axis=(1, 2), keepdims=True) + 1e-8
        alpha, positive = g2 / denominator, np.maximum(g[-1], 0)
    else:
        denominator = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
        ok = (g2 != 0) & (denominator != 0)
        alpha = np.where(ok, g2 / np.where(ok, denominator, 1), 0)
        positive = np.maximum(g.mean(0), 0)
    weights = (alpha * positive).sum(axis=(1, 2))
    return np.maximum(np.einsum("k,khw->hw", weights, last if torchcam else a), 0)


def test_smoothgradcampp_on_its_draws_and_against_torchcam(resnet18, photo_tensor):
    """Ours equals the paper's rule on the documented draws; TorchCAM's extractor, fed
    the same draws, equals its code's rule: the two differ exactly there."""
    ex = Explainer(resnet18, smoothgradcampp_samples=3, smoothgradcampp_seed=5)
    generator = torch.Generator().manual_seed(5)
    scale = 0.15 * float(photo_tensor.max() - photo_tensor.min())
    draws = scale * torch.randn((3, *photo_tensor.shape), generator=generator)
    noisy = [photo_tensor + draw.float() for draw in draws]
    for layer in ("layer3", "layer4"):
        a, _ = a_and_g(resnet18, photo_tensor, layer, 3)
        gradients = [a_and_g(resnet18, x, layer, 3)[1] for x in noisy]
        ours = ex.explain(photo_tensor, layer, 3, "smoothgradcam++")
        expected = smooth_plus_plus(a, gradients)
        assert np.abs(ours.raw - expected).max() <= 1e-4 * np.abs(expected).max(), layer
        supply = iter(draw.float()[None] for draw in draws)
        with SmoothGradCAMpp(resnet18, layer, num_samples=3) as peer:
            peer._distrib = SimpleNamespace(sample=lambda size, supply=supply: next(supply))
            scores = resnet18(photo_tensor[None])
            theirs = peer(3, scores)[0][0].detach().numpy()
        rule = smooth_plus_plus(a, gradients, last=a_and_g(resnet18, noisy[-1], layer, 3)[0])
        rule = (rule - rule.min()) / (rule.max() - rule.min())  # TorchCAM's normalisation
        assert np.abs(theirs - rule).max() <= 1e-3, layer
        assert np.abs(heatmap_of(expected) - heatmap_of(rule)).max() > 1e-3  # they differ


def test_smoothgradcampp_without_noise_is_gradcampp(resnet18, photo_tensor):
    ex = Explainer(resnet18, smoothgradcampp_sigma=0.0, smoothgradcampp_samples=2)
    for layer in ("layer2", "layer4"):
        smooth = ex.explain(photo_tensor, layer, 3, "smoothgradcam++").raw
        plain = ex.explain(photo_tensor, layer, 3, "gradcam++").raw
        # the noisy copies run as a batch, with batch norms folded: float rounding
        np.testing.assert_allclose(smooth, plain, rtol=0, atol=1e-4 * np.abs(plain).max())


def smooth_net():
    """A small classifier with smooth activations: its Hessians are not zero."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GELU(), nn.Conv2d(8, 16, 3, stride=2), nn.SiLU(),
        nn.Conv2d(16, 16, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()  # fmt: skip


def test_shapleycam_equals_the_peers():
    """ShapleyCAM's weights: mean(g - H A / 2). On a network with smooth activations H A
    is not 0 and the map differs from Grad-CAM; it equals pytorch-grad-cam's."""
    model = smooth_net()
    x = torch.randn(3, 64, 64)
    ex = Explainer(model)
    for layer in ("1", "3"):
        ours = ex.explain(x, layer, 3, "shapleycam")
        with ShapleyCAM(model, [model.get_submodule(layer)]) as peer:
            theirs = peer(x[None], targets=[ClassifierOutputTarget(3)])[0]
        assert np.abs(ours.heatmap - theirs).max() <= 1e-3, layer
        assert np.abs(ours.heatmap - ex.explain(x, layer, 3, "gradcam").heatmap).max() > 1e-3
        batch = ex.explain_batch([x, x.flip(2)], layer, [3, 5], "shapleycam")
        np.testing.assert_allclose(batch[0].raw, ours.raw, rtol=1e-5, atol=1e-7)
        single = ex.explain(x.flip(2), layer, 5, "shapleycam").raw
        np.testing.assert_allclose(batch[1].raw, single, rtol=1e-5, atol=1e-7)


def test_a_batch_takes_one_hessian_product(monkeypatch):
    """ShapleyCAM over a batch: one backward for the gradients and one double backward
    (two passes) for every image's H A, not two per image; also where the method is
    called on one image at a time (the maps unchanged)."""
    images = [torch.randn(3, 64, 64) for _ in range(3)]
    ex = Explainer(smooth_net())
    whole = ex.explain_batch(images, "3", [3, 5, 7], "shapleycam")
    assert ex.passes["backward"] == 3
    monkeypatch.setattr(camwidget.requests, "CHUNK", (1, 1))
    ex = Explainer(smooth_net())
    parts = ex.explain_batch(images, "3", [3, 5, 7], "shapleycam")
    assert ex.passes["backward"] == 3
    for one, other in zip(whole, parts, strict=True):
        np.testing.assert_allclose(one.raw, other.raw, rtol=1e-6, atol=1e-9)


def test_batched_methods_equal_their_rows():
    """Every method registered as batched gives, over a batch (N, C, h, w), each image's
    map as it gives it alone: with eigen_smooth, and for an image with no activation."""
    torch.manual_seed(0)
    a, g = torch.randn(4, 6, 5, 7).relu(), torch.randn(4, 6, 5, 7)
    a[2] = 0
    weights, hessian = torch.randn(4, 6), torch.randn(4, 6, 5, 7)
    inputs, scores = torch.randn(4, 3, 20, 28), torch.randn(4)
    batched = [spec for spec in camwidget.methods.REGISTRY.values() if spec.batched]
    assert {"gradcam", "gradcam++", "eigencam", "shapleycam", "cam"} <= {s.name for s in batched}
    for spec in batched:
        defaults = {name: option.default for name, option in spec.options.items()}
        smoothed = [{**defaults, "eigen_smooth": True}] if "eigen_smooth" in defaults else []
        for options in [defaults, *smoothed]:

            def context(rows, options=options):
                return MethodContext(
                    class_weights=weights[rows], hessian=lambda: hessian[rows],
                    target_score=scores[rows], inputs=inputs[rows], input_size=(20, 28),
                    options=options,
                )  # fmt: skip

            together = spec.fn(a, g, context(slice(None)))
            alone = torch.stack([spec.fn(a[i], g[i], context(i)) for i in range(4)])
            assert together.shape == (4, 5, 7) and alone.abs().max() > 0, spec.name
            bound = 1e-6 * float(alone.abs().max())
            torch.testing.assert_close(together, alone, rtol=0, atol=bound, msg=spec.name)


def test_shapleycam_is_gradcam_where_the_score_is_piecewise_linear(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    for layer in ("layer3", "layer4"):
        ours = ex.explain(photo_tensor, layer, 3, "shapleycam").raw
        np.testing.assert_array_equal(ours, ex.explain(photo_tensor, layer, 3, "gradcam").raw)


def test_finercam_explains_classes_only(resnet18, photo_tensor):
    ex = Explainer(resnet18)
    region = camwidget.targets.Similarity(torch.ones(1000))
    with pytest.raises(CamwidgetError, match="Finer-CAM contrasts a class of a classifier"):
        ex.explain(photo_tensor, "layer4", region, "finercam")


def test_fem_equals_the_peers(resnet18, photo_tensor):
    """FEM: w_k = share of A^k's cells above mean + k std; equal to pytorch-grad-cam's
    FEM at every layer, for k = 2 (default) and 1, and the same for every class."""
    for k in (2.0, 1.0):
        ex = Explainer(resnet18, fem_k=k)
        for layer in LAYERS["resnet18"]:
            with FEM(model=resnet18, target_layers=[resnet18.get_submodule(layer)], k=k) as peer:
                theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(3)])[0]
            ours = ex.explain(photo_tensor, layer, 3, "fem")
            assert np.abs(ours.heatmap - theirs).max() <= 1e-3, (k, layer)
            np.testing.assert_array_equal(ex.explain(photo_tensor, layer, 281, "fem").raw, ours.raw)


def test_gradcam_elementwise_bounds_hirescam(resnet18, photo_tensor):
    """sum_k ReLU(g^k A^k) >= ReLU(sum_k g^k A^k) at every cell, equal where the terms
    of a cell share their sign: an exact inequality between the two raw maps."""
    ex = Explainer(resnet18)
    for layer in ("layer2", "layer4"):
        a, g = a_and_g(resnet18, photo_tensor, layer, 281)
        elementwise = ex.explain(photo_tensor, layer, 281, "gradcam-elementwise").raw
        hires = ex.explain(photo_tensor, layer, 281, "hirescam").raw
        np.testing.assert_allclose(
            elementwise, np.maximum(g * a, 0).sum(axis=0), rtol=1e-4, atol=1e-7
        )
        assert (elementwise >= hires - 1e-5 * elementwise.max()).all()
        same_sign = ((g * a) >= 0).all(axis=0)
        np.testing.assert_allclose(elementwise[same_sign], hires[same_sign], rtol=1e-4, atol=1e-7)


def test_randomcam_is_seeded_and_the_same_for_every_class(resnet18, photo_tensor):
    """ReLU(sum_k w_k A^k) with w ~ U[-1, 1) from a generator seeded with
    ``randomcam_seed``: the same seed, the same map; another seed, another map."""
    a, _ = a_and_g(resnet18, photo_tensor, "layer3", 0)
    weights = (
        2 * torch.rand(a.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        - 1
    )
    expected = np.maximum(np.einsum("k,khw->hw", weights.numpy(), a), 0)
    ex = Explainer(resnet18, randomcam_seed=5)
    first = ex.explain(photo_tensor, "layer3", 3, "randomcam").raw
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-6 * expected.max())
    np.testing.assert_array_equal(
        Explainer(resnet18, randomcam_seed=5).explain(photo_tensor, "layer3", 9, "randomcam").raw,
        first,
    )
    ex.randomcam_seed = 6
    assert not np.allclose(ex.explain(photo_tensor, "layer3", 3, "randomcam").raw, first)
    zeros = torch.zeros(4, 3, 3)
    assert not randomcam(zeros, zeros, MethodContext(options={"seed": 0})).any()


def test_eigencam_sign_is_fixed_against_the_mean_activation():
    torch.manual_seed(0)
    a = torch.rand(6, 5, 5)
    a[:, 1:3, 1:3] += 3.0  # a bright blob: the map must be high on it, whatever the SVD
    for flip in (1.0, -1.0):
        out = eigencam(a * flip if flip > 0 else a, torch.zeros_like(a), MethodContext())
        assert out[1:3, 1:3].mean() > out.mean()


class Tiny(nn.Module):
    """Three 3×3 conv channels and a linear head: small enough to score by hand."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 3, 3, stride=4)
        self.act = nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def test_scorecam_against_a_direct_float64_evaluation():
    model = Tiny().eval()
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))
    ex = Explainer(model)
    e = ex.explain(x, layer="act", target=2, method="scorecam")
    with torch.no_grad():
        a = model.act(model.conv(x[None]))[0].double()
        weights = []
        for ak in a:
            mask = torch.nn.functional.interpolate(
                ak[None, None], size=(16, 16), mode="bilinear", align_corners=False
            )[0, 0]
            if mask.max() == mask.min():
                weights.append(0.0)
                continue
            mask = (mask - mask.min()) / (mask.max() - mask.min())
            probs = torch.softmax(model.double()(x[None].double() * mask)[0], dim=0)
            weights.append(float(probs[2]))
        model.float()
        expected = torch.relu(sum(w * ak for w, ak in zip(weights, a, strict=True)))
    np.testing.assert_allclose(e.raw, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert ex.passes["scored"] == sum(w != 0 for w in weights)
    ex.explain(x, layer="act", target=2, method="scorecam")  # cached: no more forwards
    assert ex.passes["scored"] == sum(w != 0 for w in weights)


def test_scorecam_batches_caps_channels_and_reports_progress(resnet18, photo_tensor):
    small = torch.nn.functional.interpolate(photo_tensor[None], size=(64, 64))[0]
    ex = Explainer(resnet18, scorecam_batch_size=7, scorecam_channels=20)
    seen = []
    e = ex.explain(small, "layer3", 281, "scorecam", progress=lambda *p: seen.append(p))
    assert ex.passes["scored"] <= 20 and seen[-1][0] == seen[-1][1] == ex.passes["scored"]
    assert len(seen) == -(-ex.passes["scored"] // 7)  # one call per batch
    assert np.count_nonzero(e.raw) > 0
    with ScoreCAM(model=resnet18, target_layers=[resnet18.layer3]) as peer:
        theirs = peer(small[None], targets=[ClassifierOutputTarget(281)])[0]
    ex.scorecam_channels = None
    full = ex.explain(small, "layer3", 281, "scorecam").heatmap
    print(
        f"\nScore-CAM vs pytorch-grad-cam (softmax over channels, align_corners=True): "
        f"correlation {np.corrcoef(full.ravel(), theirs.ravel())[0, 1]:+.2f}"
    )


def torchcam_map(peer_class, model, layer, x, target, **options):
    """TorchCAM's map for ``target`` at ``layer`` (its own min-max normalisation)."""
    size = tuple(x.shape)
    with peer_class(model, layer, input_shape=size, **options) as peer:
        return peer(target, model(x[None]))[0][0].numpy()


def min_max(raw):
    return (raw - raw.min()) / (raw.max() - raw.min())


@pytest.mark.parametrize("layer", ["layer2", "layer4"])
def test_iscam_equals_torchcam(resnet18, photo_tensor, layer):
    small = F.interpolate(photo_tensor[None], size=(64, 64))[0]
    ex = Explainer(resnet18, iscam_samples=3, iscam_batch_size=64)
    e = ex.explain(small, layer, 7, "iscam")
    theirs = torchcam_map(ISCAM, resnet18, layer, small, 7, num_samples=3, batch_size=64)
    np.testing.assert_allclose(min_max(e.raw), theirs, atol=1e-4)
    assert ex.passes["scored"] == 3 * resnet18.get_submodule(layer)[-1].bn2.num_features


def test_sscam_equals_torchcam_on_its_documented_draws(resnet18, photo_tensor):
    small = F.interpolate(photo_tensor[None], size=(48, 48))[0]
    ex = Explainer(resnet18, sscam_samples=2, sscam_seed=5, sscam_batch_size=64)
    e = ex.explain(small, "layer3", 7, "sscam")
    generator = torch.Generator().manual_seed(5)  # one generator, the rounds in order
    draws = SimpleNamespace(sample=lambda size: 2.0 * torch.randn(size, generator=generator))
    with SSCAM(resnet18, "layer3", num_samples=2, input_shape=(3, 48, 48)) as peer:
        peer._distrib = draws  # TorchCAM's N(0, 2²), on the draws we document
        theirs = peer(7, resnet18(small[None]))[0][0].numpy()
    np.testing.assert_allclose(min_max(e.raw), theirs, atol=1e-4)
    again = Explainer(resnet18, sscam_samples=2, sscam_seed=5, sscam_batch_size=7)
    np.testing.assert_allclose(again.explain(small, "layer3", 7, "sscam").raw, e.raw, rtol=1e-5)
    other = Explainer(resnet18, sscam_samples=2, sscam_seed=6).explain(small, "layer3", 7, "sscam")
    assert not np.allclose(other.raw, e.raw, atol=1e-3 * e.raw.max())


def test_sscam_without_noise_is_torchcams_scorecam(resnet18, photo_tensor):
    small = F.interpolate(photo_tensor[None], size=(48, 48))[0]
    ex = Explainer(resnet18, sscam_samples=2, sscam_sigma=0.0, sscam_batch_size=64)
    e = ex.explain(small, "layer3", 7, "sscam")
    theirs = torchcam_map(TorchCAMScoreCAM, resnet18, "layer3", small, 7, batch_size=64)
    np.testing.assert_allclose(min_max(e.raw), theirs, atol=1e-4)


def test_sscam_and_iscam_cap_channels_and_preview(resnet18, photo_tensor):
    small = F.interpolate(photo_tensor[None], size=(48, 48))[0]
    for name in ("sscam", "iscam"):
        ex = Explainer(resnet18, **{f"{name}_channels": 5, f"{name}_samples": 3})
        frames: list[float] = []
        ex.explain(small, "layer4", 7, name, preview=lambda raw, f, seen=frames: seen.append(f))
        assert ex.passes["scored"] == 15
        assert frames and frames[-1] == 1.0 and frames == sorted(frames)


def test_ablationcam_against_a_direct_evaluation():
    model = Tiny().eval()
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))
    ex = Explainer(model, ablation_batch_size=2)
    seen = []
    e = ex.explain(
        x, layer="act", target=2, method="ablationcam", progress=lambda *p: seen.append(p)
    )
    with torch.no_grad():
        a = model.act(model.conv(x[None]))[0].double()
        fc = model.fc.double()
        score = float(fc(a.flatten()[None])[0, 2])
        weights = []
        for k in range(len(a)):
            ablated = a.clone()
            ablated[k] = 0
            weights.append((score - float(fc(ablated.flatten()[None])[0, 2])) / score)
        model.float()
        expected = torch.relu(sum(w * ak for w, ak in zip(weights, a, strict=True)))
    np.testing.assert_allclose(e.raw, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert ex.passes["scored"] == 3 and seen == [(2, 3), (3, 3)]  # batches of 2
    ex.explain(x, layer="act", target=2, method="ablationcam")  # cached: no more forwards
    assert ex.passes["scored"] == 3


def test_ablationcam_at_a_gap_fc_layer_is_the_weight_times_the_mean(resnet18, photo_tensor):
    small = torch.nn.functional.interpolate(photo_tensor[None], size=(64, 64))[0]
    ex = Explainer(resnet18, ablation_batch_size=128)
    e = ex.explain(small, "layer4", 281, "ablationcam")
    a, _ = a_and_g(resnet18, small, "layer4", 281)
    weights = resnet18.fc.weight[281].detach().double().numpy() * a.mean(axis=(1, 2))
    expected = np.maximum(np.einsum("k,khw->hw", weights / e.score, a), 0)
    np.testing.assert_allclose(e.raw, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())


def test_ablationcam_equals_the_peer(resnet18, photo_tensor):
    small = torch.nn.functional.interpolate(photo_tensor[None], size=(128, 128))[0]
    e = Explainer(resnet18).explain(small, "layer4", 7, "ablationcam")
    with AblationCAM(model=resnet18, target_layers=[resnet18.layer4]) as peer:
        theirs = peer(small[None], targets=[ClassifierOutputTarget(7)])[0]
    np.testing.assert_allclose(e.heatmap, theirs, atol=1e-3)
    assert e.heatmap.max() == 1.0


def test_divisions_are_guarded():
    zeros = torch.zeros(4, 3, 3)
    gradients = torch.randn(4, 3, 3)
    assert torch.isfinite(xgradcam(zeros, gradients, MethodContext())).all()
    assert not xgradcam(zeros, gradients, MethodContext()).any()
    a = torch.rand(4, 3, 3)
    assert not gradcam_plus_plus(a, torch.zeros_like(a), MethodContext()).any()
    assert not eigencam(zeros, zeros, MethodContext()).any()
    # a denominator of exactly zero: 2 g^2 + (sum A) g^3 = 0 where g = -2 / sum A
    g = torch.full((1, 3, 3), -2.0 / float(a[0].sum()))
    assert torch.isfinite(gradcam_plus_plus(a[:1], g, MethodContext())).all()
    masks_score = lambda masks, scored=None: torch.ones(len(masks))  # noqa: E731
    context = MethodContext(score=masks_score, input_size=(6, 6))
    assert not scorecam(torch.ones(2, 3, 3), zeros[:2], context).any()  # constant channels
    unchanged = MethodContext(
        ablate=lambda channels, scored=None: torch.zeros(len(channels)),
        target_score=torch.tensor(0.0),
    )
    assert torch.isfinite(ablationcam(a, zeros, unchanged)).all()  # a score of zero


def in_two_batches(weight_of):
    """A scoring function as the engine lends it: scores in two batches, telling
    ``scored(scores so far)`` after each; ``weight_of(item)`` scores one item."""

    def score(items, scored=None):
        values = torch.stack([torch.as_tensor(weight_of(item)) for item in items]).float()
        half = (len(items) + 1) // 2
        for done in (half, len(items)):
            if scored is not None:
                scored(values[:done])
        return values

    return score


def test_scorecam_previews_fill_the_unscored_channels_with_the_mean_weight():
    torch.manual_seed(0)
    a = torch.rand(5, 2, 2)
    a[3] = 0.25  # a constant channel: no mask, weight 0, never filled
    weights = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.5])
    masks = F.interpolate(a[:, None], size=(4, 4), mode="bilinear")[:, 0]
    low, high = masks.amin(dim=(1, 2), keepdim=True), masks.amax(dim=(1, 2), keepdim=True)
    masks = (masks - low) / (high - low)
    frames, asked = [], []

    def weight_of(mask):  # the weight of the channel the mask came from
        asked.append(next(k for k in (0, 1, 2, 4) if torch.allclose(mask[0], masks[k])))
        return weights[asked[-1]]

    context = MethodContext(
        score=in_two_batches(weight_of),
        input_size=(4, 4),
        preview=lambda raw, fraction: frames.append((fraction, raw)),
    )
    final = scorecam(a, torch.zeros_like(a), context)
    assert sorted(asked) == [0, 1, 2, 4] and [f for f, _ in frames] == [0.5, 1.0]
    half = torch.zeros(5)
    half[[0, 1, 2, 4]] = weights[asked[:2]].mean()
    half[asked[:2]] = weights[asked[:2]]
    torch.testing.assert_close(frames[0][1], torch.relu((half[:, None, None] * a).sum(0)))
    torch.testing.assert_close(frames[1][1], final)
    torch.testing.assert_close(final, torch.relu((weights[:, None, None] * a).sum(0)))


def test_ablationcam_previews_leave_the_unscored_channels_at_zero():
    torch.manual_seed(1)
    a, drops = torch.rand(4, 3, 3), torch.tensor([0.5, -0.25, 1.0, 0.75])
    frames, asked = [], []

    def ablate(channels, scored=None):
        asked.extend(channels.tolist())
        return in_two_batches(lambda k: 2.0 - drops[k] * 2.0)(channels, scored)

    context = MethodContext(
        ablate=ablate,
        target_score=torch.tensor(2.0),
        preview=lambda raw, fraction: frames.append((fraction, raw)),
    )
    final = ablationcam(a, torch.zeros_like(a), context)
    assert sorted(asked) == [0, 1, 2, 3] and [f for f, _ in frames] == [0.5, 1.0]
    half = torch.zeros(4)
    half[asked[:2]] = drops[asked[:2]]
    torch.testing.assert_close(frames[0][1], torch.relu((half[:, None, None] * a).sum(0)))
    torch.testing.assert_close(frames[1][1], final)
    torch.testing.assert_close(final, torch.relu((drops[:, None, None] * a).sum(0)))


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("cam", "legrad")])
def test_no_nan_on_an_all_zero_input(resnet18, method):
    ex = Explainer(resnet18, scorecam_channels=4, sscam_channels=4, iscam_channels=4)
    e = ex.explain(torch.zeros(3, 32, 32), layer="layer2", target=0, method=method)
    assert np.isfinite(e.heatmap).all() and np.isfinite(e.raw).all()
