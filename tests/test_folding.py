"""Batch norms folded into their convolutions for batched passes (camwidget.folding):
the same function to float rounding, only where the dataflow allows, the model left
as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import ModelState, seeded
from torch import nn
from torch.overrides import TorchFunctionMode

from camwidget import Explainer, folding
from camwidget.capture import guarded


class NormCalls(TorchFunctionMode):
    """Counts the batch norms that run."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") == "batch_norm"
        return func(*args, **(kwargs or {}))


def with_statistics(model: nn.Module, seed: int = 1) -> nn.Module:
    """``model`` with batch norm statistics and affine terms far from the identity, so
    that folding them changes the convolutions' weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


def run(model: nn.Module, x: torch.Tensor, keep=()) -> tuple[torch.Tensor, int]:
    """The model's output with folding, and how many batch norms ran."""
    calls = NormCalls()
    with torch.no_grad(), guarded(model), folding.folded(model, x, keep), calls:
        out = model(x)
    return out, calls.count


@pytest.fixture
def resnet():
    return with_statistics(seeded(torchvision.models.resnet18))


def test_resnet_folds_every_norm_and_keeps_its_function(resnet):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = ModelState.of(resnet)
    with torch.no_grad():
        expected = resnet(x)
    first, norms_first = run(resnet, x)  # the look at the model, then the folded pass
    again, norms_again = run(resnet, x)
    assert norms_first == norms_again == 0  # all 20 folded, from the first pass on
    assert len(folding._plans[resnet][next(iter(folding._plans[resnet]))]) == 20
    scale = float(expected.abs().max())
    assert float((first - expected).abs().max()) <= 1e-5 * scale
    assert torch.equal(first, again)
    before.assert_same(resnet)


def test_a_kept_layer_and_its_pair_are_not_folded(resnet):
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    with torch.no_grad(), guarded(resnet) as handles, folding.folded(resnet, x, {"layer1.0.conv1"}):
        hook = lambda m, a, out: seen.__setitem__("conv", out.clone())  # noqa: E731
        handles.append(resnet.layer1[0].conv1.register_forward_hook(hook))
        calls = NormCalls()
        with calls:
            resnet(x)
    assert calls.count == 1  # layer1.0.bn1 alone
    with torch.no_grad():
        stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        raw = resnet.layer1[0].conv1(stem)  # the convolution's own output, not normalised
    torch.testing.assert_close(seen["conv"], raw, rtol=1e-5, atol=1e-5)


class ReadTwice(nn.Module):
    """The convolution's output is read by its norm and by the sum after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


class Returned(ReadTwice):
    """The convolution's output is read by its norm alone, and returned as well."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return self.norm(y), y


class NormOfSomethingElse(nn.Module):
    """The norm reads the convolution's output after a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.conv(x)))


class SharedConvolution(nn.Module):
    """One convolution and norm run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.norm(self.conv(x))))


class PaddedConv(nn.Conv2d):
    """A convolution with its own forward (as timm's 'same' padding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (1, 0, 1, 0)))


def no_running_stats() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))


@pytest.mark.parametrize(
    "make",
    [
        ReadTwice,
        Returned,
        NormOfSomethingElse,
        SharedConvolution,
        lambda: nn.Sequential(PaddedConv(3, 4, 3), nn.BatchNorm2d(4)),
        no_running_stats,
    ],
    ids=["read-twice", "returned", "norm-after-relu", "shared", "own-forward", "batch-statistics"],
)
def test_nothing_folded_where_the_dataflow_or_the_modules_do_not_allow(make):
    torch.manual_seed(0)
    model = with_statistics(make())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    out, norms = run(model, x)
    assert norms > 0
    for ours, theirs in zip(folding._tensors_in(out), folding._tensors_in(expected), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("first", [True, False], ids=["hook-first", "hook-later"])
def test_a_users_hook_sees_its_own_convolutions_output_once_per_pass(first):
    """A hook of the user's: nothing is folded where it is, and no extra pass calls it
    (the look at a model with hooks waits for a pass without them)."""
    torch.manual_seed(0)
    model = with_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.randn(2, 3, 16, 16)
    if not first:
        run(model, x)  # the look, then folded
    seen = []
    handle = model[0].register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    _, norms = run(model, x)
    _, norms_again = run(model, x)
    with torch.no_grad():
        raw = nn.functional.conv2d(x, model[0].weight, model[0].bias)
    assert norms == norms_again == 1
    assert len(seen) == 2 and all(torch.equal(s, raw) for s in seen)
    handle.remove()
    _, norms = run(model, x)
    assert norms == 0


def test_changed_statistics_are_folded_anew(resnet):
    x = torch.randn(2, 3, 64, 64)
    run(resnet, x)
    with torch.no_grad():
        resnet.layer2[0].bn1.running_mean.add_(3.0)  # in place, as training does
        resnet.layer3[1].bn2.weight.mul_(-2.0)
        expected = resnet(x)
    out, _ = run(resnet, x)
    assert float((out - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


@pytest.mark.parametrize(("layer", "bound"), [("layer4", 1e-5), ("layer2", 1e-3)])
def test_explain_batch_runs_no_norm_and_leaves_the_model(resnet, photo, layer, bound):
    """At the last block the batch's maps equal the one-image path's to 1e-5 of their
    maximum (issue 28); earlier, where gradients cancel, float rounding shows more."""
    ex = Explainer(resnet)
    images = [photo, photo.rotate(90), photo.transpose(0)]
    ex.explain_batch(images, layer=layer)
    before = ModelState.of(resnet)
    calls = NormCalls()
    with calls:
        batch = ex.explain_batch(images, layer=layer)
    assert calls.count == 0
    before.assert_same(resnet)
    for image, e in zip(images, batch, strict=True):
        single = ex.explain(image, layer=layer, target=e.target)
        scale = np.abs(single.raw).max()
        assert scale > 0 and np.abs(e.raw - single.raw).max() <= bound * scale


def test_views_of_one_models_weights_share_the_folded_weights(resnet):
    from camwidget.sharing import shared_view

    x = torch.randn(2, 3, 64, 64)
    view = shared_view(resnet)
    run(resnet, x), run(resnet, x)
    run(view, x), run(view, x)
    assert folding._held[view.layer1[0].conv1] is folding._held[resnet.layer1[0].conv1]
    with torch.no_grad():
        resnet.layer1[0].bn1.running_var.mul_(4.0)  # seen by the view: the same memory
        expected = view(x)
    out, _ = run(view, x)
    assert folding._held[view.layer1[0].conv1] is not folding._held[resnet.layer1[0].conv1]
    assert float((out - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
