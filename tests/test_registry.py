"""Every registered method, checked from its descriptor alone (as Captum generates its
hook-removal tests from a config), and a new method added in one function and one entry."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import ModelState

import camwidget
from camwidget import CAMWidget, CamwidgetError, Explainer, methods
from camwidget.methods import Method, MethodContext, Option

SMALL = {  # keep the methods of many passes quick
    "scorecam_channels": 6, "scorecam_batch_size": 4, "ig_steps": 4, "ig_batch_size": 4,
    "smoothgrad_samples": 2, "smoothgrad_batch_size": 2, "gradientshap_samples": 3,
    "gradientshap_batch_size": 3, "occlusion_window": 48, "occlusion_stride": 48,
    "occlusion_batch_size": 4, "smoothgradcampp_samples": 2, "smoothgradcampp_batch_size": 2,
    "sscam_channels": 4, "sscam_samples": 2, "sscam_batch_size": 4, "iscam_channels": 4,
    "iscam_samples": 2, "iscam_batch_size": 4,
}  # fmt: skip
# another value of an option whose default is not a number
ANOTHER = {
    "lrp_composite": "epsilon-alpha2-beta1", "ablation_batch_size": 64,
    "saliency_abs": False, "smoothgrad_of": "input-x-gradient", "kpcacam_kernel": "rbf",
    "kpcacam_gamma": 0.01, "finercam_against": (1, 2),
}  # fmt: skip


@pytest.fixture(scope="module")
def image(photo_tensor):
    return torch.nn.functional.interpolate(photo_tensor[None], size=(96, 96))[0]


@pytest.fixture(scope="module")
def vit():
    """A small timm ViT (random weights): a 6×6 patch grid on the 96-pixel image."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=96, num_classes=10, dynamic_img_size=True
    ).eval()


def model_for(spec: Method, resnet18, vit):
    """ResNet-18, or the ViT for a method that reads a transformer's attention."""
    return resnet18 if spec.suits(resnet18) else vit


def test_the_registry_is_the_contract():
    assert tuple(methods.REGISTRY) == camwidget.METHODS
    for name, spec in methods.REGISTRY.items():
        assert spec.name == name and spec.title and callable(spec.fn)
        assert spec.fallback is None or spec.fallback in methods.REGISTRY
        explainer = Explainer(torch.nn.Conv2d(3, 1, 1))
        for option, declared in spec.options.items():  # every option is a keyword
            assert getattr(explainer, spec.keyword(option)) == declared.default


@pytest.mark.parametrize("name", list(methods.REGISTRY))
def test_each_method_from_its_descriptor(resnet18, vit, image, name):
    spec = methods.REGISTRY[name]
    model = copy.deepcopy(model_for(spec, resnet18, vit)).train()
    before = ModelState.of(model)
    ex = Explainer(model, **SMALL)
    layer = next(info for info in reversed(ex.layers) if spec.applies(info)).name
    first = ex.explain(image, layer, 3, name)
    grid = (96, 96) if spec.pixel_level else ex.layer(layer).shape[1:]  # the input's pixels
    grid = grid if spec.needs_layer or spec.pixel_level else (6, 6)  # LeGrad: the patches
    assert first.raw.shape == grid and np.isfinite(first.raw).all()
    assert first.heatmap.shape == (96, 96) and 0 <= first.heatmap.min() <= first.heatmap.max() <= 1
    # one backward to the layer for gradients, one to the input for pixel-level methods
    # or to the layer at noisy inputs (SMALL's steps and samples fit one batch), none for
    # occlusion's masked inputs, two more for a Hessian-vector product
    backward = spec.needs_gradients + (spec.pixel_level and not spec.perturbing)
    backward += 2 * ("hessian" in spec.needs) + ("layer_gradients" in spec.needs)
    backward += "attention_gradients" in spec.needs  # one pass, a small backward per block
    assert ex.passes["backward"] == backward
    assert (first.attribution is not None) == spec.signed
    if spec.rectified:
        assert first.raw.min() >= 0
    passes = dict(ex.passes)
    again = ex.explain(image, layer, 3, name)  # cached: no pass of any kind
    assert dict(ex.passes) == passes and again.timings == {"forward": 0, "backward": 0, "map": 0}
    np.testing.assert_array_equal(again.raw, first.raw)
    other = ex.explain(image, layer, 7, name)
    assert np.array_equal(other.raw, first.raw) == spec.class_agnostic
    before.assert_same(model)


@pytest.mark.parametrize(
    "name", [name for name, spec in methods.REGISTRY.items() if spec.requirement]
)
def test_where_a_method_does_not_apply(resnet18, image, name):
    spec = methods.REGISTRY[name]
    ex = Explainer(resnet18)
    ex.explain(image)
    outside = next(info.name for info in ex.layers if ex.why_not(name, info.name))
    reason = ex.why_not(name, outside)
    where = "to this model" if not spec.suits(resnet18) else f"at layer {outside!r}"
    assert reason.startswith(f"{spec.title} does not apply {where}")
    with pytest.raises(CamwidgetError, match="does not apply") as error:
        ex.explain(image, outside, 3, name)
    assert spec.requirement.format(layer=outside) in str(error.value)
    resolved = ex.resolve(name, outside, 3, fallback=True)
    assert (resolved.method, resolved.layer, resolved.target) == (spec.fallback, outside, 3)
    assert f"switched to {methods.REGISTRY[spec.fallback].title}" in resolved.note


@pytest.mark.parametrize("name", [name for name, spec in methods.REGISTRY.items() if spec.options])
def test_options_enter_the_cache_key(resnet18, vit, image, name):
    spec = methods.REGISTRY[name]
    ex = Explainer(model_for(spec, resnet18, vit), **SMALL)
    layer = next(info.name for info in ex.layers if spec.applies(info) and info.shape[0] >= 128)
    ex.explain(image, layer, 3, name)
    for keyword in map(spec.keyword, spec.options):
        passes = sum(ex.passes.values())
        value = ANOTHER[keyword] if keyword in ANOTHER else getattr(ex, keyword) + 1
        setattr(ex, keyword, value)
        made = ex.explain(image, layer, 3, name).timings["map"] > 0  # a cached map: 0
        assert made or sum(ex.passes.values()) > passes, f"{keyword} did not enter the cache key"


def random_map(activations, gradients, context: MethodContext):
    """A baseline: uniform noise on the layer's grid, seeded by the option ``seed``."""
    generator = torch.Generator().manual_seed(int(context.options["seed"]))
    return torch.rand(activations.shape[1:], generator=generator)


def test_a_new_method_is_one_function_and_one_entry(resnet18, image, monkeypatch):
    seed = Option(0, "the noise's seed")  # the method's one option, declared on it
    entry = Method("random", "Random", random_map, class_agnostic=True, options={"seed": seed})
    monkeypatch.setitem(methods.REGISTRY, "random", entry)  # the one registry entry

    ex = Explainer(resnet18)
    e = ex.explain(image, "layer2", method="random")
    expected = torch.rand((12, 12), generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(e.raw, expected)
    assert e.title == "Random" and ex.passes["backward"] == 0
    batch = ex.explain_batch([image, image], "layer2", method="random")  # one row at a time
    assert [b.raw.shape for b in batch] == [(12, 12)] * 2
    with pytest.raises(CamwidgetError, match="a batched method may need only"):
        Method("batch", "Batch", random_map, needs=("score",), batched=True)
    assert ex.random_seed == 0 and ex.options("random") == {"seed": 0}
    ex.random_seed = 1  # part of the cache key: the map is made again, with seed 1
    again = ex.explain(image, "layer2", method="random").raw
    np.testing.assert_array_equal(
        again, torch.rand((12, 12), generator=torch.Generator().manual_seed(1)).numpy()
    )
    seeded_two = Explainer(resnet18, random_seed=2)  # a keyword generated from the entry
    third = seeded_two.explain(image, "layer2", method="random").raw
    np.testing.assert_array_equal(
        third, torch.rand((12, 12), generator=torch.Generator().manual_seed(2)).numpy()
    )
    with pytest.raises(CamwidgetError, match="random_seed"):  # known keywords are listed
        Explainer(resnet18, random_seeds=2)

    panel = CAMWidget(resnet18, image, layer="layer2")
    assert ("Random", "random") in panel.controls["method"].options
    panel.method = "random"
    assert panel.explanation.method == "random"
    assert "Random is class-agnostic" in panel.controls["messages"].value
    panel.close()


class Labelled(torch.utils.data.Dataset):
    """Images with their labels, as a dataset for the audit."""

    def __init__(self, images: list, labels: list[int]) -> None:
        self.items = list(zip(images, labels, strict=True))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple:
        return self.items[index]


@pytest.mark.parametrize("name", list(methods.REGISTRY))
def test_each_method_in_batches_the_metrics_and_the_audit(resnet18, vit, image, name):
    spec = methods.REGISTRY[name]
    ex = Explainer(model_for(spec, resnet18, vit), **SMALL)
    layer = next(info for info in reversed(ex.layers) if spec.applies(info)).name
    images = [image, image.flip(2)]
    batch = ex.explain_batch(images, layer, [3, 5], method=name)
    for one, target, e in zip(images, [3, 5], batch, strict=True):
        single = ex.explain(one, layer, target, name)
        assert np.isfinite(e.raw).all()
        # Ablation-CAM's weights are differences of nearly equal scores (y_c - y_c^k):
        # the rounding of a batch's forward against one image's shows at 1e-4
        tolerance = 1e-3 if name == "ablationcam" else 1e-5
        np.testing.assert_allclose(e.raw, single.raw, atol=tolerance * np.abs(single.raw).max())
    deleted, inserted = camwidget.metrics.deletion_insertion(ex, image, batch[0].heatmap, 3, 4)
    assert 0 <= deleted.auc <= 1 and 0 <= inserted.auc <= 1
    audit = camwidget.explain_dataset(
        ex, Labelled(images, [3, 5]), layer=layer, method=name, targets="true", progress=False
    )
    assert len(audit) == 2 and audit.complete
    size = ex.model_input.size or ex.model_input.preferred  # the audit's input size
    resized = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear")[0]
    expected = ex.explain(resized, layer, 3, name).raw
    np.testing.assert_allclose(audit[0].raw, expected, rtol=1e-3, atol=1e-3 * expected.max())
