"""Models named on the command line (``camwidget app --model``): the embedded one,
torchvision's and timm's by name (random weights here: nothing downloads), the user's
own function; every wrong spec told in words naming the accepted forms."""

from __future__ import annotations

import sys

import pytest
import torch

from camwidget import CamwidgetError, Explainer, samples, sources

NAMED = "efficientnet_lite0 \\(embedded\\), torchvision:NAME"


def test_torchvision_and_timm_by_name():
    for spec in ("torchvision:resnet18", "timm:resnet18"):
        sources.check(spec)
        found = sources.load(spec, pretrained=False)
        assert found.name == spec and not found.model.training
        assert len(found.labels) == 1000 and found.labels[285] == "Egyptian cat"
        inputs = found.preprocess(samples.load("chelsea"))
        assert inputs.shape == (3, 224, 224)
        e = Explainer(found.model, preprocess=found.preprocess).explain(samples.load("chelsea"))
        assert e.raw.shape == (7, 7) and e.frame is not None  # both centre-crop the photo


def test_the_users_own_function(tmp_path, monkeypatch):
    (tmp_path / "lesson_models.py").write_text(
        "import torchvision\n"
        "def load():\n"
        "    model = torchvision.models.resnet18(num_classes=3)\n"
        "    return model, None, ['cat', 'dog', 'bird']\n"
        "def bare():\n"
        "    return torchvision.models.resnet18(num_classes=3)\n"
        "def wrong():\n"
        "    return 'a string'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = sources.load("lesson_models:load")
    assert found.labels == ["cat", "dog", "bird"] and not found.model.training
    assert sources.load("lesson_models:bare").labels is None
    with pytest.raises(CamwidgetError, match="returned a str: it must return a model"):
        sources.load("lesson_models:wrong")
    sys.modules.pop("lesson_models", None)


def test_a_model_saved_whole_in_a_file(tmp_path):
    """``torch.save(model, path)``: the model itself; weights alone are told apart."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    torch.save(model.train(), tmp_path / "digits.pt")
    sources.check(str(tmp_path / "digits.pt"))
    found = sources.load(str(tmp_path / "digits.pt"))
    assert found.name == "digits.pt" and not found.model.training and found.labels is None
    saved = model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in found.model.state_dict().items())
    e = Explainer(found.model).explain(samples.load("chelsea"))  # one channel at 28×28
    assert e.raw.shape == (26, 26)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CamwidgetError, match="holds weights only"):
        sources.load(str(tmp_path / "weights.pt"))
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(CamwidgetError, match="cannot read a model from"):
        sources.load(str(tmp_path / "broken.pt"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet", f"unknown model 'resnet': give {NAMED}"),
        ("torchvision:resnet", "torchvision has no model 'resnet'"),
        ("timm:nothing_like_it", "timm has no model 'nothing_like_it'"),
        ("no_such_package.models:load", f"cannot find 'load' in module .*give {NAMED}"),
        ("os.path:no_such_function", "cannot find 'no_such_function' in module 'os.path'"),
    ],
)
def test_a_wrong_spec_is_told_in_words(spec, message):
    with pytest.raises(CamwidgetError, match=message):
        sources.check(spec)
    with pytest.raises(CamwidgetError, match=message):
        sources.load(spec, pretrained=False)


def test_weights_that_cannot_download_are_told_with_what_to_do(monkeypatch):
    import torchvision

    def offline(name, weights):
        if weights is not None:
            raise OSError("<urlopen error [Errno -2] Name or service not known>")
        return torch.nn.Identity()

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(CamwidgetError, match="downloads pretrained weights once .*random"):
        sources.load("torchvision:resnet18")
