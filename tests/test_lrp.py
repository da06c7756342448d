"""LRP through zennit: equal to zennit used directly, conservative where it must be, the
model restored, EfficientNet-Lite0's residuals canonized, bad models told in words."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import ModelState, seeded
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat
from zennit.core import Composite
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from camwidget import CamwidgetError, Explainer, lrp, samples, zoo
from camwidget.zoo import efficientnet_lite


def zennit_direct(model, x, composite, target):
    """zennit's own Gradient attributor, initial relevance = one-hot x logit."""
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x[None].clone(), lambda out: torch.eye(1000)[[target]] * out)
    return relevance[0].numpy()


def relative(ours, theirs):
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def vgg16():
    return seeded(torchvision.models.vgg16)


@pytest.mark.parametrize(
    ("model_name", "canonizer"), [("resnet18", ResNetCanonizer), ("vgg16", VGGCanonizer)]
)
def test_equal_to_zennit_used_directly(request, photo_tensor, model_name, canonizer):
    model = request.getfixturevalue(model_name)
    e = Explainer(model).explain(photo_tensor, target=7, method="lrp")
    theirs = zennit_direct(model, photo_tensor, EpsilonPlusFlat(canonizers=[canonizer()]), 7)
    assert relative(e.attribution, theirs) <= 1e-5
    np.testing.assert_allclose(e.raw, e.attribution.sum(axis=0), rtol=1e-5, atol=1e-9)


def test_the_other_composites(resnet18, photo_tensor):
    ex = Explainer(resnet18, lrp_composite="epsilon-alpha2-beta1")
    e = ex.explain(photo_tensor, target=3, method="lrp")
    theirs = zennit_direct(
        resnet18, photo_tensor, EpsilonAlpha2Beta1(canonizers=[ResNetCanonizer()]), 3
    )
    assert relative(e.attribution, theirs) <= 1e-5
    ex.lrp_composite = "epsilon-gamma-box"  # a setting of the map: part of the cache key
    box = ex.explain(photo_tensor, target=3, method="lrp")
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    low, high = ((0 - mean) / std).expand(1, 3, 224, 224), ((1 - mean) / std).expand(1, 3, 224, 224)
    composite = EpsilonGammaBox(low=low, high=high, canonizers=[ResNetCanonizer()])
    assert relative(box.attribution, zennit_direct(resnet18, photo_tensor, composite, 3)) <= 1e-5
    ex.lrp_composite = "nonsense"
    with pytest.raises(CamwidgetError, match="unknown LRP composite 'nonsense'"):
        ex.explain(photo_tensor, target=3, method="lrp")


class BiasFree(nn.Module):
    """Conv-ReLU-conv-ReLU-GAP-FC with no bias anywhere: LRP must conserve the logit."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        hidden = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(hidden).flatten(1))


@pytest.mark.parametrize("composite", list(lrp.COMPOSITES))
def test_relevance_sums_to_the_logit_in_a_bias_free_network(composite):
    model = BiasFree().eval()
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    logits = model(x[None])[0].detach()
    target = int(logits.argmax())
    e = Explainer(model, lrp_composite=composite).explain(x, "conv2", target, "lrp")
    assert e.score == pytest.approx(float(logits[target]))
    assert float(e.attribution.sum()) == pytest.approx(e.score, rel=1e-4)


@pytest.mark.parametrize("model_name", ["resnet18", "lite0"])
def test_the_model_is_restored_exactly(request, photo_tensor, model_name):
    model = zoo.load("efficientnet_lite0")[0] if model_name == "lite0" else None
    model = model or request.getfixturevalue(model_name)
    model.train()
    state = ModelState.of(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        Explainer(model).explain(photo_tensor, target=1, method="lrp")
        state.assert_same(model)
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key  # bit for bit: canonizers undone
        assert not any(hasattr(m, "canonizer_sum") for m in model.modules())
    finally:
        model.eval()


def test_efficientnet_lite0_residuals_are_canonized_without_changing_a_bit():
    model, _, labels = zoo.load("efficientnet_lite0")
    ex = Explainer(model, labels=labels)
    x = ex.prepare(samples.load("chelsea")).inputs
    with torch.no_grad():
        plain = model(x)
        with Composite(canonizers=[efficientnet_lite.mbconv_canonizer()]).context(model):
            sums = sum(hasattr(m, "canonizer_sum") for m in model.modules())
            canonized = model(x)
    assert sums == 9 and torch.equal(canonized, plain)  # the 9 blocks with a skip
    e = ex.explain(x, None, None, "lrp")
    assert e.label == "Egyptian cat" and np.isfinite(e.attribution).all()
    assert np.abs(e.raw).max() > 0


class WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def test_a_layer_without_a_rule_is_named():
    with pytest.raises(CamwidgetError, match=r"no rule for 'norm' \(GroupNorm\)"):
        Explainer(WithLayerNorm().eval()).explain(torch.rand(3, 16, 16), "conv", 0, "lrp")
