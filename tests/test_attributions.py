"""Attributions at the pixels (Captum's family): each against Captum where the
definitions agree, and their defining identities (integrated gradients' completeness,
DeepLIFT's summation to delta, SmoothGrad at σ = 0, seeded noise)."""

from __future__ import annotations

import warnings
from copy import deepcopy

import numpy as np
import pytest
import torch
from captum.attr import (
    DeepLift,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from conftest import ModelState
from pytorch_grad_cam import FullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import camwidget
from camwidget import CamwidgetError, Explainer, deeplift
from camwidget.attributions import Windows, gauss_legendre
from camwidget.fullgrad import decomposition

TARGET = 7


def relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def captum(peer, x: torch.Tensor, **kwargs) -> np.ndarray:
    """The peer's attribution of TARGET for ``x`` (3, H, W), without its warnings that
    it set requires_grad on the input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = peer.attribute(x[None].clone(), target=TARGET, **kwargs)
    return found[0].detach().numpy()


def value(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(x[None])[0, TARGET])


def biased(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose biases (zero as torchvision initialises them) are drawn
    from N(0, 0.1²): the reference activations are no longer 0 (seeded)."""
    generator = torch.Generator().manual_seed(1)
    copy = deepcopy(model)
    with torch.no_grad():
        for name, parameter in copy.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return copy


@pytest.fixture(scope="module")
def small(photo_tensor):
    """The photo at 64×64: occlusion's windows stay few."""
    return nn.functional.interpolate(photo_tensor[None], size=(64, 64), mode="area")[0]


@pytest.mark.parametrize(
    ("method", "peer", "options", "theirs"),
    [
        ("saliency", Saliency, {}, {}),
        ("saliency", Saliency, {"saliency_abs": False}, {"abs": False}),
        ("input-x-gradient", InputXGradient, {}, {}),
        ("integrated-gradients", IntegratedGradients, {"ig_batch_size": 16}, {"n_steps": 50}),
    ],
)
@pytest.mark.parametrize("model_name", ["vgg11", "resnet18"])
def test_equal_to_captum(request, photo_tensor, model_name, method, peer, options, theirs):
    model = request.getfixturevalue(model_name)
    before = ModelState.of(model)
    ours = Explainer(model, **options).explain(photo_tensor, target=TARGET, method=method)
    expected = captum(peer(model), photo_tensor, **theirs)
    assert np.abs(expected).max() > 0
    assert relative(ours.attribution, expected) <= 1e-4
    np.testing.assert_allclose(ours.raw, ours.attribution.sum(axis=0), rtol=1e-5, atol=1e-7)
    before.assert_same(model)


@pytest.mark.parametrize(("window", "stride"), [(16, 8), (15, 8), (64, 64)])
def test_occlusion_equals_captum(vgg11, small, window, stride):
    ex = Explainer(vgg11, occlusion_window=window, occlusion_stride=stride)
    ours = ex.explain(small, target=TARGET, method="occlusion")
    expected = captum(
        Occlusion(vgg11),
        small,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
    )
    assert relative(ours.attribution, expected) <= 1e-4
    count = len(Windows(64, 64, window, stride))
    assert ex.passes["scored"] == count and ex.passes["backward"] == 0
    if window == 64:  # one window over everything: y(x) - y(0) at every pixel
        drop = value(vgg11, small) - value(vgg11, torch.zeros_like(small))
        np.testing.assert_allclose(ours.attribution, drop, rtol=1e-4)


def test_occlusion_windows_are_made_a_batch_at_a_time():
    windows = Windows(224, 224, 15, 8)
    assert len(windows) == 28 * 28  # Captum's count: ceil((224 - 15) / 8) + 1 per side
    part = windows[3:5]
    assert part.shape == (2, 1, 224, 224)
    assert (part[0, 0] == 0).sum() == 15 * 15  # the fourth window, whole
    last = windows[len(windows) - 1 : len(windows)][0, 0]
    assert (last == 0).sum() == 8 * 8  # the last, cut at the border (216..223)
    spread = windows.spread(torch.ones(len(windows)))
    assert torch.equal(spread, torch.ones(224, 224, dtype=torch.float64))  # all covered


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_integrated_gradients_are_complete(request, photo_tensor, model_name):
    model = request.getfixturevalue(model_name)
    e = Explainer(model).explain(photo_tensor, target=TARGET, method="integrated-gradients")
    delta = value(model, photo_tensor) - value(model, torch.zeros_like(photo_tensor))
    assert abs(float(e.attribution.sum()) - delta) <= 0.01 * abs(delta)


def test_gauss_legendre_integrates_polynomials_exactly():
    alphas, weights = gauss_legendre(5)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-14)
    for degree in range(10):  # exact up to degree 2n - 1
        assert float((weights * alphas**degree).sum()) == pytest.approx(1 / (degree + 1))


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_deeplift_sums_to_the_difference_from_the_baseline(request, photo_tensor, model_name):
    """ResNet-18 reuses each block's ReLU module and applies it in place: the rule still
    holds exactly, where Captum's hooks would need one module per use. Before its last
    layer, the seeded ResNet-18 has no bias (BatchNorm at its initial state): from the
    zero baseline every reference activation is 0, so DeepLIFT is input × gradient
    there; with biases it differs."""
    for model in (request.getfixturevalue(model_name), biased(request.getfixturevalue(model_name))):
        before = ModelState.of(model)
        e = Explainer(model).explain(photo_tensor, target=TARGET, method="deeplift")
        delta = value(model, photo_tensor) - value(model, torch.zeros_like(photo_tensor))
        assert float(e.attribution.sum()) == pytest.approx(delta, rel=1e-4)
        gradient = Explainer(model).explain(photo_tensor, target=TARGET, method="input-x-gradient")
        plain = relative(e.attribution, gradient.attribution)
        assert plain <= 1e-5 if model is request.getfixturevalue(model_name) else plain > 0.05
        before.assert_same(model)


def test_deeplift_equals_captum_where_no_nonlinearity_feeds_another(photo_tensor):
    torch.manual_seed(0)
    model = biased(
        nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 10),
        ).eval()
    )  # fmt: skip
    ours = Explainer(model).explain(photo_tensor, target=TARGET, method="deeplift")
    assert relative(ours.attribution, captum(DeepLift(model), photo_tensor)) <= 1e-4


def test_deeplift_differs_from_captum_only_at_max_pools_after_a_relu(vgg11, photo_tensor):
    """In VGG every max pooling follows a ReLU; Captum's hooks then give the pooling
    its plain gradient (the ReLU's hook reads the gradient before the pooling's rule
    rewrites it), and its attributions no longer sum to the difference exactly."""
    model = biased(vgg11)
    theirs = captum(DeepLift(model), photo_tensor)
    ours = Explainer(model).explain(photo_tensor, target=TARGET, method="deeplift").attribution
    delta = value(model, photo_tensor) - value(model, torch.zeros_like(photo_tensor))
    assert abs(float(ours.sum()) - delta) <= 1e-4 * abs(delta)
    assert abs(float(theirs.sum()) - delta) > 10 * abs(float(ours.sum()) - delta)
    assert relative(ours, theirs) > 0.05

    def plain_pooling(module, x, out):
        return lambda gradient: deeplift._vjp(module, x, gradient)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deeplift, "_pool", plain_pooling)
        plain = Explainer(model).explain(photo_tensor, target=TARGET, method="deeplift")
    assert relative(plain.attribution, theirs) <= 1e-4


def test_deeplift_refuses_a_relu_applied_as_a_function():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    with pytest.raises(CamwidgetError, match="DeepLIFT cannot follow a ReLU applied as a"):
        Explainer(Functional()).explain(torch.rand(3, 32, 32), target=1, method="deeplift")


def draws(x: torch.Tensor, samples: int, sigma: float, seed: int, alphas: bool = False):
    """The draws the docs promise: α ~ U[0, 1) first where the method takes them, then
    N(0, (σ · the input's range)²)."""
    generator = torch.Generator().manual_seed(seed)
    alpha = torch.rand(samples, generator=generator, dtype=torch.float64) if alphas else None
    scale = sigma * float(x.max() - x.min())
    return alpha, scale * torch.randn((samples, *x.shape), generator=generator)


@pytest.mark.parametrize("of", ["saliency", "input-x-gradient", "integrated-gradients"])
def test_smoothgrad_at_no_noise_is_its_method(resnet18, small, of):
    ex = Explainer(resnet18, smoothgrad_sigma=0.0, smoothgrad_samples=3, smoothgrad_of=of)
    smoothed = ex.explain(small, target=TARGET, method="smoothgrad").attribution
    base = Explainer(resnet18, ig_steps=16).explain(small, target=TARGET, method=of).attribution
    assert relative(smoothed, base) <= 1e-5


def test_smoothgrad_is_captums_noise_tunnel_on_the_same_draws(resnet18, small):
    ex = Explainer(resnet18, smoothgrad_samples=4, smoothgrad_seed=3)
    ours = ex.explain(small, target=TARGET, method="smoothgrad").attribution
    _, noise = draws(small, 4, 0.15, seed=3)
    peer = Saliency(resnet18)
    expected = np.mean([captum(peer, small + draw) for draw in noise], axis=0)
    assert relative(ours, expected) <= 1e-4
    # Captum's own tunnel, on its own draws, estimates the same mean
    tunnel = NoiseTunnel(Saliency(resnet18))
    sigma = 0.15 * float(small.max() - small.min())
    torch.manual_seed(0)
    theirs = captum(tunnel, small, nt_type="smoothgrad", nt_samples=64, stdevs=sigma)
    many = Explainer(resnet18, smoothgrad_samples=64).explain(
        small, target=TARGET, method="smoothgrad"
    )
    assert np.corrcoef(many.attribution.ravel(), theirs.ravel())[0, 1] >= 0.9
    again = Explainer(resnet18, smoothgrad_samples=4, smoothgrad_seed=3)
    np.testing.assert_array_equal(
        again.explain(small, target=TARGET, method="smoothgrad").attribution, ours
    )
    other = Explainer(resnet18, smoothgrad_samples=4, smoothgrad_seed=4)
    assert not np.array_equal(
        other.explain(small, target=TARGET, method="smoothgrad").attribution, ours
    )


def test_gradientshap_is_the_mean_over_its_seeded_draws(vgg11, small):
    ex = Explainer(vgg11, gradientshap_samples=5, gradientshap_sigma=0.1, gradientshap_seed=2)
    ours = ex.explain(small, target=TARGET, method="gradientshap").attribution
    alphas, noise = draws(small, 5, 0.1, seed=2, alphas=True)
    peer = Saliency(vgg11)
    terms = [
        (small + draw).numpy() * captum(peer, float(alpha) * (small + draw), abs=False)
        for alpha, draw in zip(alphas, noise, strict=True)
    ]
    assert relative(ours, np.mean(terms, axis=0)) <= 1e-4
    assert ex.passes["backward"] == 1  # the five points in one batch (8 on CPU)


NEW = ("saliency", "input-x-gradient", "integrated-gradients", "smoothgrad")
NEW += ("gradientshap", "occlusion", "deeplift")


def test_batches_and_the_metrics_take_them(resnet18, small):
    options = {"ig_steps": 8, "smoothgrad_samples": 4, "gradientshap_samples": 4}
    ex = Explainer(resnet18, occlusion_window=32, occlusion_stride=16, **options)
    images = [small, small.flip(2)]
    for method in NEW:
        batch = ex.explain_batch(images, targets=[7, 9], method=method)
        for image, target, e in zip(images, [7, 9], batch, strict=True):
            single = ex.explain(image, target=target, method=method)
            assert np.isfinite(e.attribution).all() and np.abs(single.attribution).max() > 0
            assert relative(e.attribution, single.attribution) <= 1e-5
        deleted, inserted = camwidget.metrics.deletion_insertion(
            ex, small, batch[0].heatmap, 7, steps=4
        )
        assert 0 <= deleted.auc <= 1 and 0 <= inserted.auc <= 1


def with_statistics(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose batch norms carry drawn running statistics and affine
    parameters (seeded): every one adds a bias β - γ μ / √(σ² + ε) that is not 0."""
    generator = torch.Generator().manual_seed(2)
    copy = deepcopy(model)
    with torch.no_grad():
        for module in copy.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
    return copy


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_fullgrad_equals_pytorch_grad_cam(request, photo_tensor, model_name):
    """vgg11: biases of convolutions; resnet18: of batch norms (with their statistics)."""
    model = request.getfixturevalue(model_name)
    model = with_statistics(model) if model_name == "resnet18" else biased(model)
    small = nn.functional.interpolate(photo_tensor[None], size=(96, 96))[0]
    e = Explainer(model).explain(small, target=TARGET, method="fullgrad")
    with FullGrad(model, []) as peer:
        theirs = peer(small[None], targets=[ClassifierOutputTarget(TARGET)])[0]
    assert e.raw.shape == (96, 96) and e.attribution is None and e.raw.min() > 0
    np.testing.assert_allclose(e.heatmap, theirs, atol=1e-4)  # both min-max scaled


def test_fullgrads_parts_sum_to_the_score(resnet18, photo_tensor):
    """The paper's completeness: x · ∇_x y + Σ b · ∇_b y = y for a network of
    convolutions, batch norms (eval), in-place ReLUs, pooling and a linear layer, whose
    own bias adds b_c."""
    model = with_statistics(resnet18)
    before = ModelState.of(model)
    at_input, at_biases = decomposition(model, photo_tensor[None], lambda out: out[0, TARGET])
    total = float(at_input.sum()) + sum(float(part.sum()) for part in at_biases)
    total += float(model.fc.bias.detach()[TARGET])
    assert len(at_biases) == 20  # every batch norm of ResNet-18 (its convolutions: no bias)
    assert total == pytest.approx(value(model, photo_tensor), rel=1e-4, abs=1e-5)
    before.assert_same(model)
