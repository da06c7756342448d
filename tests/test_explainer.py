"""The engine: the model is left untouched, caches save passes, bad input is explained."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import ModelState
from torch import nn

from camwidget import CamwidgetError, Explainer, explain_dataset


class Counted:
    """Counts forwards (a pre-hook the test owns) and backwards (torch.autograd.grad)."""

    def __init__(self, model, monkeypatch):
        self.forwards = 0
        self.backwards = 0
        model.register_forward_pre_hook(self._forward)
        grad = torch.autograd.grad

        def counting_grad(*args, **kwargs):
            self.backwards += 1
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", counting_grad)

    def _forward(self, module, args):
        self.forwards += 1

    def take(self) -> tuple[int, int]:
        counts = (self.forwards, self.backwards)
        self.forwards = self.backwards = 0
        return counts


def test_caches_spare_every_pass_they_can(resnet18, photo, monkeypatch):
    model = copy.deepcopy(resnet18)
    ex = Explainer(model)
    counted = Counted(model, monkeypatch)
    # The first pass finds the maps that resnet18's in-place ReLUs rewrite and runs
    # again, handing copies of those on, and the model's one shape pass at a second size
    # proves the layouts (passes["probe"]); from then on, one forward per image.
    ex.explain(photo.rotate(180), layer="layer4", target=5)
    assert counted.take() == (3, 1) and ex.passes["probe"] == 1
    ex.explain(photo, layer="layer4.1.bn2", target=5)
    assert counted.take() == (1, 1)
    ex.explain(photo, layer="layer4", target=5)  # after the deepest reached: free
    ex.explain(photo, layer="layer4", target=5, method="cam")  # another method
    assert counted.take() == (0, 0)
    ex.explain(photo, layer="layer2", target=5)  # earlier: one backward completes all
    assert counted.take() == (0, 1)
    ex.explain(photo.copy(), layer="layer3.0.conv2", target=5)  # same pixels, new object
    ex.explain(photo, layer="conv1", target=5)
    assert counted.take() == (0, 0)
    ex.explain(photo, layer="layer4", target=6)  # another class: one partial backward
    assert counted.take() == (0, 1)
    ex.predict(photo)
    assert counted.take() == (0, 0)
    ex.explain(photo.rotate(90), layer="layer4", target=6)  # a new image
    assert counted.take() == (1, 1)
    assert ex.passes["forward"] == 4 and ex.passes["backward"] == 5


def test_backward_only_as_deep_as_needed(resnet18, photo_tensor, monkeypatch):
    """A class change back-propagates to the shown layer and the layers after it; the
    first visit to an earlier layer completes all of them in one more backward. The
    maps are exactly those of a backward to every layer at once."""
    requested = []
    grad = torch.autograd.grad
    monkeypatch.setattr(
        torch.autograd,
        "grad",
        lambda outputs, inputs, **k: requested.append(len(inputs)) or grad(outputs, inputs, **k),
    )
    ex = Explainer(resnet18)
    names = [layer.name for layer in ex.layers]
    later = names[names.index("layer4.1.conv2") :]  # layer4.1.conv2, .bn2, layer4.1, layer4
    ex.explain(photo_tensor, layer="layer4.1.conv2", target=1)
    distinct = len({id(m) for m in capture_maps(resnet18, photo_tensor, later)})
    assert requested == [distinct] and distinct < len(names) // 5
    for name in later:
        ex.explain(photo_tensor, layer=name, target=1)
    assert len(requested) == 1
    lazy = {name: ex.explain(photo_tensor, layer=name, target=1).raw for name in names}
    assert len(requested) == 2  # one more backward for all the earlier layers
    at_once = Explainer(resnet18)
    at_once.explain(photo_tensor, layer="conv1", target=1)  # the earliest: every layer
    for name in names:
        np.testing.assert_allclose(
            lazy[name], at_once.explain(photo_tensor, layer=name, target=1).raw, atol=1e-7
        )
    assert at_once.passes["backward"] == 1


def capture_maps(model, image, names):
    from camwidget import capture

    kept = capture.forward(model, image[None])
    return [kept.activations[name] for name in names]


def test_model_untouched_and_hook_free(resnet18, photo):
    model = copy.deepcopy(resnet18)
    model.train()
    model.layer2.eval()
    for param in model.layer1.parameters():
        param.requires_grad_(False)
    before = ModelState.of(model)
    ex = Explainer(model)
    for method in ("gradcam", "cam"):
        ex.explain(photo, layer="layer4", method=method)
    ex.explain(photo, layer="layer1.0.conv1", target=3)
    ex.predict(photo)
    ex.explain_batch([photo, photo.rotate(90)], layer="layer3")
    before.assert_same(model)
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_is_explained_in_eval_mode(resnet18, photo_tensor):
    model = copy.deepcopy(resnet18).train()
    ours = Explainer(model).explain(photo_tensor, layer="layer3", target=9)
    reference = Explainer(resnet18).explain(photo_tensor, layer="layer3", target=9)
    np.testing.assert_allclose(ours.raw, reference.raw, rtol=1e-5, atol=1e-7)
    assert model.training and all(m.training for m in model.modules())


def test_frozen_model_still_explained(resnet18, photo_tensor):
    model = copy.deepcopy(resnet18).requires_grad_(False)
    e = Explainer(model).explain(photo_tensor, layer="layer3", target=9)
    reference = Explainer(resnet18).explain(photo_tensor, layer="layer3", target=9)
    np.testing.assert_allclose(e.raw, reference.raw, rtol=1e-5, atol=1e-7)
    assert not any(p.requires_grad for p in model.parameters())


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.explode = False

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.explode:
            raise RuntimeError("boom in forward")
        return self.fc(x.mean(dim=(2, 3)))


def test_exception_inside_forward_leaves_model_untouched():
    model = Exploding().train()
    model.conv.weight.requires_grad_(False)
    ex = Explainer(model)
    assert [layer.name for layer in ex.layers] == ["conv", "bn"]
    before = ModelState.of(model)
    model.explode = True
    with pytest.raises(CamwidgetError, match="the model failed.*boom in forward"):
        ex.explain(np.zeros((32, 32, 3), np.uint8))
    before.assert_same(model)
    model.explode = False
    assert ex.explain(np.full((32, 32, 3), 100, np.uint8), layer="bn").heatmap.shape == (32, 32)


class Wrapped(nn.Module):
    """Returns the wrapped network's logits in another container."""

    def __init__(self, net, wrap):
        super().__init__()
        self.net = net
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(self.net(x))


class Output:
    def __init__(self, logits):
        self.logits = logits
        self.hidden = None


@pytest.mark.parametrize(
    "wrap",
    [
        lambda y: (y, "aux"),
        lambda y: [y],
        lambda y: {"logits": y, "pooled": None},
        lambda y: OrderedDict(logits=y),
        Output,
    ],
    ids=["tuple", "list", "dict", "ordered-dict", "logits-attribute"],
)
def test_output_containers(resnet18, photo_tensor, wrap):
    reference = Explainer(resnet18).explain(photo_tensor, layer="layer3", target=4)
    ours = Explainer(Wrapped(resnet18, wrap)).explain(photo_tensor, layer="net.layer3", target=4)
    np.testing.assert_allclose(ours.raw, reference.raw, rtol=1e-6)
    assert ours.score == pytest.approx(reference.score)


def test_unusable_output_is_explained(resnet18, photo_tensor):
    ex = Explainer(Wrapped(resnet18, lambda y: "text"))
    with pytest.raises(CamwidgetError, match="returned a str.*logits"):
        ex.explain(photo_tensor)


def test_no_feature_map_is_explained():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    with pytest.raises(CamwidgetError, match="no layer whose output is a feature map"):
        Explainer(model).explain(np.zeros((8, 8, 3), np.uint8))


def test_unknown_layer_lists_valid_ones(resnet18, photo):
    with pytest.raises(CamwidgetError) as error:
        Explainer(resnet18).explain(photo, layer="layer5")
    message = str(error.value)
    assert "unknown layer 'layer5'" in message and "Did you mean" in message
    assert "layer4.1.conv2" in message and "conv1" in message


@pytest.mark.parametrize("target", [1000, -1, 10**9])
def test_target_out_of_range(resnet18, photo, target):
    with pytest.raises(
        CamwidgetError, match="out of range: this model has 1000 classes, indices 0 to 999"
    ):
        Explainer(resnet18).explain(photo, target=target)


def test_target_is_an_index_or_a_class_name(resnet18, photo_tensor):
    with pytest.raises(CamwidgetError, match="class index"):
        Explainer(resnet18).explain(photo_tensor, target=2.5)
    with pytest.raises(CamwidgetError, match="no class names are known.*class index"):
        Explainer(resnet18).explain(photo_tensor, target="cat")
    labels = [f"thing {i}" for i in range(1000)]
    ex = Explainer(resnet18, labels=labels)
    by_name = ex.explain(photo_tensor, layer="layer3", target="Thing 281")
    assert by_name.target == 281 and ex.explain(photo_tensor, target="12").target == 12
    np.testing.assert_array_equal(by_name.raw, ex.explain(photo_tensor, "layer3", 281).raw)
    with pytest.raises(CamwidgetError, match="ambiguous"):
        ex.explain(photo_tensor, target="thin")


def test_cam_where_it_does_not_apply(resnet18, photo):
    ex = Explainer(resnet18)
    with pytest.raises(CamwidgetError) as error:
        ex.explain(photo, layer="layer3", method="cam")
    message = str(error.value)
    assert "CAM does not apply at layer 'layer3'" in message
    assert "global average pooling and then the final fully connected layer" in message
    assert "gradcam" in message and "layer4" in message


def test_unknown_method(resnet18, photo):
    with pytest.raises(CamwidgetError, match=r"unknown method 'gradcam\+'.*gradcam"):
        Explainer(resnet18).explain(photo, method="gradcam+")


def test_cam_applicability_is_numerical(resnet18, vgg11):
    assert {x.name for x in Explainer(resnet18).layers if x.cam} == {"layer4", "layer4.1"}
    assert not any(x.cam for x in Explainer(vgg11).layers)  # vgg: a 3-layer classifier


def test_catalogue_order_shapes_and_default(resnet18, photo):
    ex = Explainer(resnet18)
    names = [layer.name for layer in ex.layers]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert names.index("layer1.0.conv1") < names.index("layer1.0") < names.index("layer1")
    assert ex.default_layer == "layer4"
    info = {layer.name: layer for layer in ex.layers}
    assert info["layer4"].shape == (512, 7, 7) and info["layer4"].kind == "Sequential"
    assert info["layer4.1"].label == "layer4.1 · BasicBlock · 512×7×7"
    assert "layer1.0.relu" not in info  # BasicBlock calls its ReLU twice
    ex.explain(photo)  # shapes follow the current input (600×512)
    assert {layer.name: layer for layer in ex.layers}["layer4"].shape == (512, 19, 16)


def test_the_layer_list_is_made_once_per_input_size(resnet18, photo, monkeypatch):
    from camwidget import layers

    made = []
    catalogue = layers.catalogue
    monkeypatch.setattr(layers, "catalogue", lambda *args: made.append(1) or catalogue(*args))
    ex = Explainer(resnet18, max_images=3)
    ex.explain(photo)
    first = ex.layers
    ex.explain(photo.rotate(180))  # another image of the same size: the same list
    assert ex.layers is first and len(made) == 1
    ex.explain(photo.resize((224, 224)))  # another size: new shapes
    assert len(made) == 2
    assert {x.name: x for x in ex.layers}["layer4"].shape == (512, 7, 7)
    ex.explain(photo)  # a kept pass keeps its list
    assert ex.layers is first and len(made) == 2


def test_default_layer_skips_an_upsampling_pool(vgg11):
    ex = Explainer(vgg11)
    # the 7×7 pool is no map: 7×7 at any input size (at 224, the map of `features`)
    assert ex.default_layer == "features" and "avgpool" not in {x.name for x in ex.layers}
    ex.explain(torch.zeros(3, 32, 32))  # features end at 1×1; the pool blows it up to 7×7
    assert ex.default_layer == "features.19"
    assert {x.name: x for x in ex.layers}["features.19"].shape == (512, 2, 2)


def test_reused_module_is_left_out_with_a_reason(resnet18, photo_tensor):
    from camwidget import capture

    result = capture.forward(resnet18, photo_tensor[None])
    assert "layer1.0.relu" not in result.activations
    assert "runs 2 times per forward" in result.skipped["layer1.0.relu"]


def test_inputs_of_every_kind_agree(resnet18, photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    ex = Explainer(resnet18)
    maps = [
        ex.explain(image, layer="layer3", target=2).heatmap
        for image in (photo, str(path), path, np.asarray(photo), path.read_bytes())
    ]
    for heatmap in maps[1:]:
        np.testing.assert_array_equal(heatmap, maps[0])
    assert ex.passes["forward"] == 2  # the same pixels: one image (two passes, the first)


def test_custom_preprocess_and_labels(resnet18, photo):
    def preprocess(image):
        return (
            torch.zeros(3, 64, 96)
            + torch.from_numpy(np.array(image.resize((96, 64)))).float().mean() / 255
        )

    labels = [f"thing {i}" for i in range(1000)]
    ex = Explainer(resnet18, preprocess=preprocess, labels=labels)
    e = ex.explain(photo, layer="layer2")
    assert e.heatmap.shape == (600, 512)  # the image's own size, not the input's
    assert e.label == labels[e.target]
    assert ex.predict(photo, k=3)[0][1] == labels[e.target]


def test_a_class_index_is_said_once(resnet18, photo):
    from camwidget.widget.views import caption

    unnamed = Explainer(resnet18, labels={}).explain(photo, layer="layer4", target=4)
    assert (unnamed.label, caption(unnamed, detail=False)) == ("class 4", "class 4")
    named = Explainer(resnet18, labels={4: "hammerhead"}).explain(photo, "layer4", 4)
    assert caption(named, detail=False) == "hammerhead (4)"


def test_bad_preprocess_is_explained(resnet18, photo):
    ex = Explainer(resnet18, preprocess=lambda image: np.zeros((3, 8, 8)))
    with pytest.raises(CamwidgetError, match="must return a torch tensor"):
        ex.explain(photo)


class ImageProcessor:
    """What a Hugging Face image processor returns when called on one image without
    ``return_tensors``: a mapping whose ``pixel_values`` is a list of one float array."""

    def __init__(self, as_tensors: bool = False) -> None:
        self.as_tensors = as_tensors

    def __call__(self, image, return_tensors=None):
        rgb = np.asarray(image.resize((64, 64)), dtype=np.float32) / 255.0
        pixels = ((rgb - 0.5) / 0.5).transpose(2, 0, 1)
        if self.as_tensors or return_tensors == "pt":
            return {"pixel_values": torch.from_numpy(pixels)[None]}
        return {"pixel_values": [pixels]}


def test_an_image_processor_is_a_preprocess(resnet18, photo):
    def same(image):  # the equivalent callable
        return ImageProcessor(as_tensors=True)(image)["pixel_values"][0]

    expected = Explainer(resnet18, preprocess=same).explain(photo, "layer3", 7)
    for processor in (ImageProcessor(), ImageProcessor(as_tensors=True)):
        e = Explainer(resnet18, preprocess=processor).explain(photo, "layer3", 7)
        np.testing.assert_array_equal(e.raw, expected.raw)
    folder = [(photo, 7), (photo.rotate(90), 3)]
    audit = explain_dataset(
        Explainer(resnet18, preprocess=ImageProcessor()), Pairs(folder), layer="layer3",
        targets="true", progress=False,
    )  # fmt: skip
    np.testing.assert_allclose(audit[0].raw, expected.raw, rtol=1e-3, atol=1e-3)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_a_processor_without_pixel_values_is_explained(resnet18, photo):
    ex = Explainer(resnet18, preprocess=lambda image: {"input_ids": [1, 2]})
    with pytest.raises(CamwidgetError, match="without 'pixel_values' \\(it has 'input_ids'\\)"):
        ex.explain(photo)


def test_predict(resnet18, photo_tensor):
    top = Explainer(resnet18).predict(photo_tensor, k=5)
    logits = resnet18(photo_tensor[None])[0].detach()
    probs = torch.softmax(logits, 0)
    assert [i for i, _, _ in top] == torch.topk(logits, 5).indices.tolist()
    assert top[0][2] == pytest.approx(float(probs.max()), rel=1e-5)
    assert top[0][1] == f"class {top[0][0]}"


def test_explain_batch_matches_explain(resnet18, photo):
    images = [photo, photo.rotate(90), photo.resize((300, 256))]
    ex = Explainer(resnet18)
    batch = ex.explain_batch(images, layer="layer3", targets=[1, None, 7])
    for image, target, e in zip(images, [1, None, 7], batch, strict=True):
        single = ex.explain(image, layer="layer3", target=target)
        assert (e.target, e.layer) == (single.target, single.layer)
        # float rounding (channels-last, folded batch norms) amplified where gradients
        # cancel: up to 1.3e-4 of the maximum measured here at layer3
        scale = np.abs(single.raw).max()
        np.testing.assert_allclose(e.raw, single.raw, rtol=0, atol=1e-3 * scale)
        np.testing.assert_allclose(e.heatmap, single.heatmap, atol=1e-3)


def test_model_is_never_moved(resnet18):
    with pytest.raises(CamwidgetError, match="camwidget never moves your model"):
        Explainer(resnet18, device="meta")


def test_gradient_cache_is_bounded_by_bytes(resnet18, photo_tensor):
    from camwidget import capture

    kept = capture.forward(resnet18, photo_tensor[None])
    grads = capture.backward(kept, kept.logits[0, 0])
    per_class = sum(g.numel() * 4 for g in {id(g): g for g in grads.values()}.values())
    ex = Explainer(resnet18, gradient_bytes=int(2.5 * per_class))
    for target in range(6):  # the earliest layer: every layer's gradients
        ex.explain(photo_tensor, target=target, layer="conv1")
    assert ex.passes["backward"] == 6
    for target in (5, 4):  # the two latest classes fit: another layer costs no backward
        ex.explain(photo_tensor, target=target, layer="layer1")
    assert ex.passes["backward"] == 6
    ex.explain(photo_tensor, target=3, layer="layer1")  # dropped: a backward again
    assert ex.passes["backward"] == 7
    ex.gradient_bytes = 0  # the latest class is always kept
    ex.explain(photo_tensor, target=6, layer="conv1")
    ex.explain(photo_tensor, target=6, layer="layer2")
    assert ex.passes["backward"] == 8
    ex.explain(photo_tensor, target=5, layer="layer2")
    assert ex.passes["backward"] == 9


def saved_for_backward(action) -> int:
    """How many tensors autograd saves for a backward while ``action`` runs."""
    count = [0]

    def pack(tensor):
        count[0] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        action()
    return count[0]


def test_explain_batch_records_the_graph_only_from_the_layer(resnet18, vgg11, photo_tensor):
    images = [photo_tensor, photo_tensor.flip(-1)]
    ex = Explainer(resnet18)
    assert ex.layers  # the catalogue first, outside the count
    batch = saved_for_backward(lambda: ex.explain_batch(images, layer="layer4"))
    single = saved_for_backward(lambda: Explainer(resnet18).explain(photo_tensor, "layer4"))
    assert 0 < batch <= 10 < 100 < single  # after layer4: a pool and the classifier
    # an in-place ReLU right after the layer must not touch the kept map
    assert isinstance(vgg11.features[17], torch.nn.ReLU) and vgg11.features[17].inplace
    ex = Explainer(vgg11)
    batch = ex.explain_batch(images, layer="features.16", targets=[3, 3], method="hirescam")
    for image, e in zip(images, batch, strict=True):
        single = ex.explain(image, "features.16", 3, "hirescam")
        np.testing.assert_allclose(e.raw, single.raw, rtol=1e-4, atol=1e-6)
    eigen = ex.explain_batch(images, layer="features.16", method="eigencam")[0].raw
    np.testing.assert_allclose(
        eigen, ex.explain(images[0], "features.16", None, "eigencam").raw, rtol=1e-4, atol=1e-5
    )
