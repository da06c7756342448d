"""A Hugging Face matrix: image models of ``transformers`` from tiny random configs
(nothing is downloaded), each catalogued, its layers true grids, its default layer on
the final grid, Grad-CAM there equal to a reference built from a plain forward hook,
and the model left untouched. CLIP and SigLIP are in tests/test_zero_shot.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ModelState

from camwidget import Explainer, samples
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


def reference_gradcam(model, module, layout, inputs, score) -> np.ndarray:
    """Grad-CAM from a plain forward hook on ``module``: its output and the gradient of
    ``score(model output)``, read as (C, h, w)."""
    kept = {}

    def hook(_, __, output):
        kept["output"] = output

    handle = module.register_forward_hook(hook)
    try:
        inputs = inputs.clone().requires_grad_(True)  # autograd through the frozen model
        output = model(pixel_values=inputs)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(score(output), kept["output"])  # no parameter's .grad
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
    expected = reference_gradcam(
        model, module, default, inputs, lambda out: out.logits[0, target].sum()
    )
    np.testing.assert_allclose(e.raw, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    before.assert_same(model)


def plain_forward(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode, its convolutions at He's scale, after one plain forward."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    with torch.no_grad():
        model.eval()(pixel_values=torch.zeros(1, 3, 64, 64))
    return model


@pytest.fixture(scope="module")
def detr():
    torch.manual_seed(0)
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
    model = transformers.DetrForObjectDetection(config)
    torch.nn.init.normal_(model.model.query_position_embeddings.weight)  # distinct queries
    return plain_forward(model)


def test_detr_detections_are_its_own_post_processings(detr):
    """Each query a detection (its best class but "no object", that probability, its
    box), as DetrImageProcessor's post-processing reads them; the default target its
    best one; Grad-CAM equal to a hook's, the target written by hand (pytorch-grad-cam's
    box score: the class probability plus the IoU with the box)."""
    import torchvision

    before = ModelState.of(detr)
    ex, photo = Explainer(detr), samples.load("chelsea")
    found = ex.detections(photo)
    inputs = ex.prepare(photo).inputs
    with torch.no_grad():
        out = detr(pixel_values=inputs)
    processor = transformers.DetrImageProcessor()
    expected = processor.post_process_object_detection(out, 0.0, target_sizes=[(300, 451)])[0]
    order = expected["scores"].argsort(descending=True)
    np.testing.assert_allclose([d.score for d in found], expected["scores"][order], rtol=1e-6)
    assert [d.label for d in found] == expected["labels"][order].tolist()
    np.testing.assert_allclose([d.box for d in found], expected["boxes"][order], rtol=1e-5)
    assert len({d.box for d in found}) == 5  # five distinct queries
    e = ex.explain(photo)
    assert ex.output_kind == "detections" and e.box == found[0].box
    query = int(out.logits.softmax(-1)[0, :, :-1].max(-1).values.argmax())
    label, box = e.target.label, torch.tensor([e.target.box])  # the box in input pixels

    def score(output):
        probability = output.logits.softmax(-1)[0, query, label]
        x, y, w, h = output.pred_boxes[0, query]
        height, width = inputs.shape[-2:]
        corners = torch.stack([(x - w / 2) * width, (y - h / 2) * height,
                               (x + w / 2) * width, (y + h / 2) * height])  # fmt: skip
        return probability + torchvision.ops.box_iou(box, corners[None])[0, 0]

    info = {i.name: i for i in ex.layers}[e.layer]
    reference = reference_gradcam(detr, detr.get_submodule(e.layer), info, inputs, score)
    np.testing.assert_allclose(e.raw, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    assert np.abs(reference).max() > 0
    before.assert_same(detr)


def test_mask2former_queries_are_dense_class_scores():
    """Mask2Former's class and mask queries read as its semantic post-processing reads
    them (softmax without "no object" times the masks' sigmoid, summed over queries):
    dense scores explained with Region targets, equal to a hook's Grad-CAM."""
    torch.manual_seed(0)
    backbone = transformers.SwinConfig(
        image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False,
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
        num_queries=6, num_labels=4,
    )  # fmt: skip
    model = plain_forward(transformers.Mask2FormerForUniversalSegmentation(config))
    before = ModelState.of(model)
    ex, photo = Explainer(model), samples.load("chelsea")
    whole = Region(1, np.ones((300, 451), bool))
    e = ex.explain(photo, target=whole)
    assert ex.output_kind == "dense" and ex.num_classes == 4

    def score(output):
        classes = output.class_queries_logits.softmax(-1)[0, :, :-1]
        return torch.einsum(
            "q,qhw->hw", classes[:, 1], output.masks_queries_logits[0].sigmoid()
        ).sum()

    inputs = ex.prepare(photo).inputs
    info = {i.name: i for i in ex.layers}[e.layer]
    reference = reference_gradcam(model, model.get_submodule(e.layer), info, inputs, score)
    np.testing.assert_allclose(e.raw, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    assert np.abs(reference).max() > 0
    with torch.no_grad():
        out = model(pixel_values=inputs)
    processor = transformers.Mask2FormerImageProcessor()
    labels = processor.post_process_semantic_segmentation(out, target_sizes=[(75, 113)])[0]
    top = ex.explain(photo)  # the class with the most predicted pixels
    assert top.target.index == int(torch.bincount(labels.flatten()).argmax())
    before.assert_same(model)
