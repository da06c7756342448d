"""The embedded default: real pretrained weights, labels and photos, all offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camwidget import CamwidgetError, Explainer, samples, zoo
from camwidget.labels import resolve_target
from camwidget.zoo import efficientnet_lite


@pytest.fixture(scope="module")
def lite0():
    return zoo.load("efficientnet_lite0")


@pytest.mark.parametrize(
    ("sample", "label"),
    [("grace_hopper", "military uniform"), ("chelsea", "Egyptian cat"), ("coffee", "espresso")],
)
def test_top1_of_the_pretrained_model(lite0, sample, label):
    model, preprocess, labels = lite0
    index, name, probability = Explainer(model, preprocess, labels).predict(samples.load(sample))[0]
    assert name == label and labels[index] == label
    assert probability > 0.3


def test_tensorflow_same_padding_matters(lite0):
    """Symmetric padding (PyTorch's usual) costs grace_hopper's top-1 much confidence."""
    model, preprocess, labels = lite0
    x = preprocess(samples.load("grace_hopper"))[None]
    with torch.no_grad():
        same = torch.softmax(model(x), 1)[0, labels.index("military uniform")]
    assert same > 0.4
    stride2 = model.stem.conv
    assert isinstance(stride2, efficientnet_lite.Conv2dSame)
    padded = stride2(x)  # 224 -> 112 with one pixel of padding after, none before
    manual = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, [0, 1, 0, 1]), stride2.weight, stride=2
    )
    torch.testing.assert_close(padded, manual)


def test_architecture_names_read_well(lite0):
    model, _, _ = lite0
    layers = Explainer(model).layers
    names = [layer.name for layer in layers]
    assert names[:4] == ["stem.conv", "stem.bn", "stem.act", "stem"]
    assert "blocks.0.expand" not in names and "blocks.1.expand.act" in names
    assert Explainer(model).default_layer == "head"
    assert {layer.name for layer in layers if layer.cam} == {"head.act", "head"}
    info = {layer.name: layer for layer in layers}
    assert info["head"].shape == (1280, 7, 7) and info["blocks.15"].shape == (320, 7, 7)
    assert info["blocks.1.depthwise.conv"].kind == "Conv2dSame"


def test_damaged_weights_are_refused_before_unpickling(tmp_path, monkeypatch):
    original = efficientnet_lite.weights_path().read_bytes()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    truncated = tmp_path / "efficientnet-lite0-57934424.pth"
    truncated.write_bytes(original[: len(original) // 2])
    altered = tmp_path / "altered.pth"
    altered.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    for path in (truncated, altered):
        with pytest.raises(CamwidgetError) as error:
            efficientnet_lite.load(path)
        assert str(path) in str(error.value) and "sha256" in str(error.value)
        assert "57934424" in str(error.value)


def test_unknown_model():
    with pytest.raises(CamwidgetError, match="unknown model 'resnet9000'.*efficientnet_lite0"):
        zoo.load("resnet9000")


def test_labels_are_imagenet():
    labels = zoo.imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[285] == "Egyptian cat"


def test_samples():
    assert samples.names() == ["grace_hopper", "chelsea", "coffee", "rocket", "astronaut"]
    for name in samples.names():
        photo = samples.load(name)
        assert photo.mode == "RGB" and min(photo.size) >= 256
    with pytest.raises(CamwidgetError, match="unknown sample 'cat'.*chelsea"):
        samples.load("cat")


def test_composite_tiles_side_by_side():
    image = samples.composite(["chelsea", "coffee"], height=200)
    cat, cup = samples.load("chelsea"), samples.load("coffee")
    expected = round(cat.width * 200 / cat.height) + round(cup.width * 200 / cup.height)
    assert image.size == (expected, 200)


def test_two_classes_in_one_photo(lite0):
    """On chelsea | coffee, each class's Grad-CAM peak lies in its own tile."""
    model, preprocess, labels = lite0
    image = samples.composite(["chelsea", "coffee"])
    split = round(samples.load("chelsea").width * 300 / samples.load("chelsea").height)
    ex = Explainer(model, preprocess, labels)
    for label, tile in (("Egyptian cat", slice(0, split)), ("espresso", slice(split, None))):
        heatmap = ex.explain(image, target=labels.index(label)).heatmap
        column = np.unravel_index(heatmap.argmax(), heatmap.shape)[1]
        assert tile.start <= column < (tile.stop or heatmap.shape[1]), label
        assert heatmap[:, tile].mean() > 2 * np.delete(heatmap, np.s_[tile], axis=1).mean()


def test_resolve_target():
    labels = zoo.imagenet_labels()
    assert resolve_target("Egyptian Cat", labels) == 285
    assert resolve_target("espresso", labels) == 967  # an exact name beats a prefix
    assert resolve_target("espresso m", labels) == 550
    assert resolve_target("281", labels) == 281
    assert resolve_target(7, labels) == 7
    with pytest.raises(CamwidgetError, match="ambiguous.*espresso maker \\(550\\), espresso"):
        resolve_target("espres", labels)
    with pytest.raises(CamwidgetError, match="ambiguous.*tiger cat \\(282\\)"):
        resolve_target("Tig", labels)
    with pytest.raises(CamwidgetError, match="unknown class 'zzzz'"):
        resolve_target("zzzz", labels)
    with pytest.raises(CamwidgetError, match="out of range"):
        resolve_target("1000", labels)
