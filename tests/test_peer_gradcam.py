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
