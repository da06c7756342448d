"""CUDA: every path gives what the CPU gives (skipped where no GPU is present)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

from camwidget import METHODS, CAMWidget, Explainer, methods
from camwidget.audit import explain_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LAYERS = ("layer1", "layer2.1.conv1", "layer3", "layer4")


@pytest.fixture(autouse=True)
def full_float32():
    """Convolutions and matrix products in full float32, as on the CPU: PyTorch lets
    cuDNN use TF32 by default on Ampere and later (10-bit mantissa, ~1e-3 relative per
    product), which is the user's choice and not what the 1e-4 agreement is about."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.fixture(scope="module")
def pair(resnet18):
    return Explainer(resnet18), Explainer(copy.deepcopy(resnet18).cuda())


# Methods that use the gradient element by element (not its spatial mean) see the
# float32 summation order of cuDNN's backward against the CPU's: at layer1 of resnet18,
# a few pixels of a 150x128 map differed by up to 3.5e-4 of the map's maximum on an H200.
# Ablation-CAM's weights are differences of nearly equal scores (y_c - y_c^k), likewise.
ELEMENTWISE = {"gradcam++", "hirescam", "layercam", "ablationcam"}
# A pixel-level map is a backward to the input through every ReLU: where a ReLU's input
# lies within rounding of 0, it opens on one device and not on the other, and the pixels
# behind it differ. The maps agree everywhere else.
PIXEL = {name for name, spec in methods.REGISTRY.items() if spec.pixel_level}


def close(cpu: np.ndarray, gpu: np.ndarray, tolerance: float = 1e-4) -> None:
    scale = max(1e-12, float(np.abs(cpu).max()))
    np.testing.assert_allclose(gpu / scale, cpu / scale, atol=tolerance)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "legrad"])  # a ViT's: below
def test_explain_agrees_with_the_cpu(pair, photo, method):
    cpu, gpu = pair
    for ex in pair:
        ex.scorecam_channels = ex.sscam_channels = ex.iscam_channels = 16
    for layer in LAYERS if method not in ("cam", "ablationcam") else ("layer4",):
        a = cpu.explain(photo, layer, 7, method)
        b = gpu.explain(photo, layer, 7, method)
        assert b.raw.dtype == np.float32 and b.heatmap.shape == a.heatmap.shape
        difference = np.abs(b.raw - a.raw) / max(1e-12, float(np.abs(a.raw).max()))
        correlation = np.corrcoef(a.raw.ravel(), b.raw.ravel())[0, 1]
        print(
            f"{method} {layer}: max |gpu - cpu| / max |cpu| = {difference.max():.1e}, "
            f"share within 1e-3: {np.mean(difference <= 1e-3):.5f}, correlation {correlation:.6f}"
        )
        if method in PIXEL:
            assert np.mean(difference <= 1e-3) >= 0.999 and correlation >= 0.999
        else:
            close(a.raw, b.raw, 1e-3 if method in ELEMENTWISE else 1e-4)
        assert abs(a.score - b.score) <= 1e-4 * max(1.0, abs(a.score))
    assert gpu.device.type == "cuda"
    assert gpu.prepare(photo).inputs.is_cuda


def test_legrad_agrees_with_the_cpu(photo):
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=224, patch_size=16, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128
    ).eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    cpu, gpu = Explainer(vit), Explainer(copy.deepcopy(vit).cuda())
    for blocks in (1, None):
        cpu.legrad_blocks = gpu.legrad_blocks = blocks
        close(cpu.explain(photo, None, 7, "legrad").raw, gpu.explain(photo, None, 7, "legrad").raw)


def test_explain_batch_and_predict_agree_with_the_cpu(pair, photo):
    cpu, gpu = pair
    images = [photo, photo.rotate(90), photo.resize((300, 256))]
    for a, b in zip(
        cpu.explain_batch(images, "layer3"), gpu.explain_batch(images, "layer3"), strict=True
    ):
        assert a.target == b.target
        close(a.raw, b.raw)
    assert [i for i, _, _ in cpu.predict(photo)] == [i for i, _, _ in gpu.predict(photo)]


def test_the_panel_on_a_gpu_model(resnet18, photo):
    model = copy.deepcopy(resnet18).cuda()
    panel = CAMWidget(model, photo)
    panel.layer, panel.target, panel.method = "layer3", 5, "gradcam++"
    reference = Explainer(resnet18).explain(photo, "layer3", 5, "gradcam++").heatmap
    np.testing.assert_allclose(panel.heatmap, reference, atol=1e-3)
    assert next(model.parameters()).is_cuda  # never moved
    panel.close()


@pytest.mark.parametrize("method", [n for n, spec in methods.REGISTRY.items() if spec.batched])
def test_batched_methods_agree_with_the_cpu(pair, photo, method):
    """The whole batch in one call on the GPU, a few images per call on the CPU."""
    cpu, gpu = pair
    images = [photo, photo.rotate(90), photo.transpose(0)]
    for layer in ("layer3", "layer4") if method != "cam" else ("layer4",):
        found = zip(
            cpu.explain_batch(images, layer, [7] * 3, method),
            gpu.explain_batch(images, layer, [7] * 3, method),
            strict=True,
        )
        for a, b in found:
            close(a.raw, b.raw, 1e-3 if method in ELEMENTWISE else 1e-4)


def test_audit_rows_agree_with_the_cpu(pair, photo):
    """A batch of the audit from uint8 pixels: normalised, explained and its triage
    numbers computed on the GPU."""
    photos = [photo.resize((224, 224)), photo.rotate(90).resize((224, 224))]
    pixels = torch.stack([pair[0].model_input.pixels(np.asarray(p)) for p in photos])
    a, b = (explain_rows(ex, pixels, [3, -1], [0, 1], "layer4", "gradcam", "true") for ex in pair)
    for name in ("centroid_y", "centroid_x", "border", "entropy", "score"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
