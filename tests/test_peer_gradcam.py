"""Grad-CAM agrees with pytorch-grad-cam where the two definitions agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from camwidget import Explainer

# Layers spread over the depth. The peer reads a layer's output after the model has
# finished, so layers whose output a later in-place op rewrites (a conv or batch norm
# followed by ReLU(inplace=True)) are compared separately below.
CASES = [
    ("resnet18", ["layer1", "layer2.1.conv1", "layer3", "layer4"]),
    ("vgg11", ["features.4", "features.12", "features.19"]),
]


@pytest.mark.parametrize(("model_name", "layers"), CASES)
def test_heatmap_equals_pytorch_grad_cam(request, photo_tensor, model_name, layers):
    model = request.getfixturevalue(model_name)
    ex = Explainer(model)
    logits = model(photo_tensor[None])[0].detach()
    targets = [int(logits.argmax()), int(logits.argmin()), 42]
    for layer in layers:
        module = model.get_submodule(layer)
        with GradCAM(model=model, target_layers=[module]) as peer:
            for target in targets:
                theirs = peer(photo_tensor[None], targets=[ClassifierOutputTarget(target)])[0]
                ours = ex.explain(photo_tensor, layer=layer, target=target).heatmap
                assert ours.shape == theirs.shape == (224, 224)
                diff = float(np.abs(ours - theirs).max())
                assert diff <= 1e-3, f"{model_name} {layer} class {target}: max diff {diff}"


def test_in_place_relu_does_not_corrupt_the_map_before_it(vgg11, photo_tensor):
    """vgg11's features.0 (a conv) is followed by ReLU(inplace=True): its map must be
    the conv's own output (with negative values), as in a copy without in-place ops."""
    import copy

    clean = copy.deepcopy(vgg11)
    for module in clean.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    ours = Explainer(vgg11).explain(photo_tensor, layer="features.0", target=7)
    reference = Explainer(clean).explain(photo_tensor, layer="features.0", target=7)
    np.testing.assert_allclose(ours.raw, reference.raw, rtol=1e-5, atol=1e-7)

    # What a hook that keeps the output tensor itself sees: the ReLU'd values.
    kept = {}
    handle = vgg11.features[0].register_forward_hook(lambda m, i, o: kept.update(out=o))
    with torch.no_grad():
        vgg11(photo_tensor[None])
    handle.remove()
    assert (kept["out"] >= 0).all(), "in-place ReLU rewrote the kept output"
    direct = torch.nn.functional.conv2d(
        photo_tensor[None], vgg11.features[0].weight, vgg11.features[0].bias, padding=1
    )
    assert (direct < 0).any()


def test_in_place_ops_stay_harmless_after_the_first_image(resnet18, photo, photo_tensor):
    """The first forward copies nothing and finds the maps that in-place ops rewrote,
    then runs again handing copies of those on; later forwards copy only those. Every
    map must be the module's own output."""
    import copy

    clean = copy.deepcopy(resnet18)
    for module in clean.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    ours, reference = Explainer(resnet18), Explainer(clean)
    ours.explain(photo, layer="layer4")  # first image: learn
    for layer in ("bn1", "layer1.0.bn1", "layer1.0.bn2", "layer3.1.bn2", "layer4"):
        a = ours.explain(photo_tensor, layer=layer, target=11)
        b = reference.explain(photo_tensor, layer=layer, target=11)
        np.testing.assert_allclose(a.raw, b.raw, rtol=1e-5, atol=1e-7, err_msg=layer)
    assert ours.passes["forward"] == 3  # two for the first image, one for the second


def test_containers_share_the_map_of_their_last_module(resnet18, photo_tensor):
    from camwidget import capture

    maps = capture.forward(resnet18, photo_tensor[None]).activations
    assert maps["layer4"] is maps["layer4.1"]  # a Sequential passes its last block's output on
    assert maps["layer1.0"] is not maps["layer1.0.bn2"]  # out += identity rewrote bn2's copy
    assert not torch.equal(maps["layer1.0"], maps["layer1.0.bn2"])


def test_a_model_that_rewrites_a_map_only_sometimes():
    """A model whose in-place op depends on the input: the capture notices a rewritten
    map that was not copied and runs the forward again with a copy."""

    class Moody(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            if x.mean() > 0:
                y.mul_(2.0)
            return self.fc(y.mean(dim=(2, 3)))

    ex = Explainer(Moody())
    calm, bright = -torch.ones(3, 8, 8), torch.ones(3, 8, 8) * torch.linspace(0, 1, 8)
    ex.explain(calm, layer="conv", target=0)  # learns: nothing is rewritten
    explained = ex.explain(bright, layer="conv", target=0, method="gradcam")
    assert ex.passes["forward"] == 3  # calm, bright, bright again with a copy
    model = ex.model
    a = model.conv(bright[None])[0].detach()
    g = 2.0 * model.fc.weight[0].detach() / a[0].numel()
    expected = torch.relu(torch.einsum("k,khw->hw", g, a))
    np.testing.assert_allclose(explained.raw, expected.numpy(), rtol=1e-5, atol=1e-7)
