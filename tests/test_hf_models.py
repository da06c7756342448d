"""A Hugging Face matrix: image models of ``transformers`` from tiny random configs
(nothing is downloaded), each catalogued, its layers true grids, its default layer on
the final grid, Grad-CAM there equal to a reference built from a plain forward hook,
and the model left untouched. CLIP and SigLIP are in tests/test_zero_shot.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ModelState

from camwidget import CamwidgetError, Explainer, samples
from camwidget.targets import Region

transformers = pytest.importorskip("transformers")

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
STAGES = dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
SWIN = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
MODELS = {
    "ViT": ("ViTForImageClassification", "ViTConfig", dict(image_size=64, patch_size=16, **VIT)),
    "DeiT": ("DeiTForImageClassification", "DeiTConfig", dict(image_size=64, patch_size=16, **VIT)),
    "BEiT": ("BeitForImageClassification", "BeitConfig", dict(image_size=64, patch_size=16, **VIT)),
    "DINOv2 with registers": (
        "Dinov2WithRegistersForImageClassification",
        "Dinov2WithRegistersConfig",
        dict(image_size=64, patch_size=16, num_register_tokens=4, **VIT),
    ),
    "Swin": ("SwinForImageClassification", "SwinConfig", SWIN),
    "SwinV2": ("Swinv2ForImageClassification", "Swinv2Config", SWIN),
    "ConvNeXt": ("ConvNextForImageClassification", "ConvNextConfig", STAGES),
    "ConvNeXtV2": ("ConvNextV2ForImageClassification", "ConvNextV2Config", STAGES),
    "ResNet": ("ResNetForImageClassification", "ResNetConfig", dict(embedding_size=16, **STAGES)),
    "RegNet": (
        "RegNetForImageClassification",
        "RegNetConfig",
        dict(embedding_size=16, groups_width=8, **STAGES),
    ),
    "EfficientNet": (
        "EfficientNetForImageClassification",
        "EfficientNetConfig",
        dict(width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, image_size=64),
    ),
    "MobileViT": (
        "MobileViTForImageClassification",
        "MobileViTConfig",
        dict(
            image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48]
        ),
    ),
    "PVT": (
        "PvtForImageClassification",
        "PvtConfig",
        dict(image_size=64, num_attention_heads=[1, 1, 2, 2], **STAGES),
    ),
    "SegFormer": (
        "SegformerForSemanticSegmentation",
        "SegformerConfig",
        dict(num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32, **STAGES),
    ),
}


def build(name: str) -> torch.nn.Module:
    """The model from its tiny config, its convolutions drawn at He's scale (the
    configs' 0.02 makes the deep CNNs' activations vanish: every class would tie), after
    one plain forward (transformers installs hooks of its own on the first one)."""
    model, config, settings = MODELS[name]
    torch.manual_seed(0)
    built = getattr(transformers, model)(getattr(transformers, config)(num_labels=5, **settings))
    for module in built.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    size = getattr(built.config, "image_size", 224)
    with torch.no_grad():
        built.eval()(pixel_values=torch.zeros(1, 3, size, size))
    return built


def strides(size: tuple[int, int], info) -> tuple[float, float]:
    return size[0] / info.shape[1], size[1] / info.shape[2]


def reference_gradcam(model, module, layout, inputs, target, dense: bool) -> np.ndarray:
    """Grad-CAM from a plain forward hook on ``module``: its output and the gradient of
    the target's logit (summed over the pixels for a segmentation), read as (C, h, w)."""
    kept = {}

    def hook(_, __, output):
        kept["output"] = output

    handle = module.register_forward_hook(hook)
    try:
        inputs = inputs.clone().requires_grad_(True)  # autograd through the frozen model
        logits = model(pixel_values=inputs).logits
    finally:
        handle.remove()
    score = logits[0, target].sum() if dense else logits[0, target]
    (gradient,) = torch.autograd.grad(score, kept["output"])  # no parameter's .grad
    activation, gradient = kept["output"][0].detach(), gradient[0]
    channels, height, width = layout.shape
    if layout.layout == "nhwc":
        activation, gradient = (t.permute(2, 0, 1) for t in (activation, gradient))
    elif layout.layout == "tokens":
        activation, gradient = (
            t[t.shape[0] - height * width :].T.reshape(channels, height, width)
            for t in (activation, gradient)
        )
    weights = gradient.mean(dim=(1, 2))
    return torch.relu((weights[:, None, None] * activation).sum(0)).numpy()


@pytest.mark.parametrize("name", list(MODELS))
def test_hugging_face_model(name):
    model = build(name)
    before = ModelState.of(model)
    ex = Explainer(model)
    photo = samples.load("chelsea")  # 451×300
    e = ex.explain(photo)
    wide = {info.name: info for info in ex.layers}
    size = ex.prepare(photo).inputs.shape[-2:]
    default = wide[ex.default_layer]
    if ex.output_kind == "dense":  # a segmentation: not its class scores (5 classes)
        assert default.shape[0] != 5 and not default.name.startswith("decode_head.classifier")
    # on the final grid: the grid of the last layer larger than one cell
    final = [info for info in ex.layers if info.shape[1] * info.shape[2] > 1][-1]
    assert default.shape[1:] == final.shape[1:], (default, final)
    # every offered layer a true grid: one stride along both sides, and (where the model
    # takes any size) the same stride and channels on a portrait photo too
    for info in wide.values():
        rows, cols = strides(size, info)
        assert abs(rows - cols) <= 0.15 * max(rows, cols) + 1, info
    if ex.model_input.size is None:
        portrait = photo.resize((200, 320))
        ex.explain(portrait)
        tall = {info.name: info for info in ex.layers}
        other = ex.prepare(portrait).inputs.shape[-2:]
        assert set(tall) == set(wide)
        for layer, info in tall.items():
            assert info.shape[0] == wide[layer].shape[0], info
            for a, b in zip(strides(size, wide[layer]), strides(other, info), strict=True):
                assert abs(a - b) <= 0.15 * max(a, b) + 1, (info, wide[layer])
    # not empty: Grad-CAM at the default shows something for one of the top classes
    found = [ex.explain(photo, target=c).raw for c, _, _ in ex.predict(photo, k=5)]
    assert any(np.abs(raw).max() > 0 for raw in found)
    # equal to a plain hook's Grad-CAM, on the same input (a segmentation: one class
    # over the whole image)
    dense = ex.output_kind == "dense"
    target = 1 if dense else e.target
    if dense:
        e = ex.explain(photo, target=Region(1, np.ones(ex.prepare(photo).size, bool)))
    module = model.get_submodule(default.name)
    inputs = ex.prepare(photo).inputs
    expected = reference_gradcam(model, module, default, inputs, target, dense)
    np.testing.assert_allclose(e.raw, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    before.assert_same(model)


def test_detr_is_told_in_words():
    """DETR's (N, queries, classes + 1) logits and pred_boxes: not yet mapped onto the
    box targets; the message says what camwidget explains and how to pick it."""
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(
            embedding_size=16, out_features=["stage4"], **STAGES
        ),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, num_queries=5,
        num_labels=5,
    )  # fmt: skip
    model = transformers.DetrForObjectDetection(config).eval()
    with pytest.raises(CamwidgetError, match="give Explainer\\(model, output=fn\\)"):
        Explainer(model).explain(samples.load("chelsea"))
