"""Hugging Face models as people load them, from tiny random configs (nothing is
downloaded: ``HF_HUB_OFFLINE=1``): the model's own image processor as the preprocess,
and the default layer of a class-token ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ModelState

from camwidget import CamwidgetError, Explainer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=64, patch_size=16, num_labels=5,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config).eval()


@pytest.fixture(scope="module")
def processor():
    return transformers.ViTImageProcessor(size={"height": 64, "width": 64})


def test_the_models_processor_is_its_preprocess(vit, processor, photo):
    """The processor's ``BatchFeature`` (a list of arrays without ``return_tensors``)
    gives the map its tensors give."""
    before = ModelState.of(vit)

    def tensors(image):
        return processor(image, return_tensors="pt")["pixel_values"]

    ex = Explainer(vit, preprocess=processor)
    e = ex.explain(photo, target=2)
    expected = Explainer(vit, preprocess=tensors).explain(photo, target=2)
    np.testing.assert_array_equal(e.raw, expected.raw)
    assert e.raw.shape == (4, 4) and e.heatmap.shape == photo.size[::-1]  # the photo's own
    before.assert_same(vit)


def test_a_class_token_vit_defaults_to_its_last_layers_first_norm(vit, processor, photo):
    ex = Explainer(vit, preprocess=processor)
    e = ex.explain(photo)
    assert ex.default_layer.endswith(".1.layernorm_before") and e.raw.max() > 0


def test_a_tokenizer_is_no_preprocess(vit, photo):
    def tokenizer(image):
        return {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3)}

    with pytest.raises(CamwidgetError, match="without 'pixel_values'"):
        Explainer(vit, preprocess=tokenizer).explain(photo)


def test_layouts_are_proven_at_two_sizes(photo):
    """What one input size cannot tell, a second one does: HF ConvNeXt's GELU output
    (N, 56, 56, 64) at 224 px is channels-last (it read as 56 channels on a 56×64 grid),
    its channels-first downsampling norm (N, 32, 28, 28) is not channels-last, and HF
    Swin's pooled (N, C, 1) is no grid (it was the default layer)."""
    torch.manual_seed(0)
    convnext = transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    ).eval()
    before = ModelState.of(convnext)
    ex = Explainer(convnext)
    square = photo.resize((224, 224))
    ex.explain(square)
    found = {info.name: info for info in ex.layers}
    gelu = found["convnext.encoder.stages.0.layers.0.act"]
    assert (gelu.layout, gelu.shape) == ("nhwc", (64, 56, 56))
    norm = found["convnext.encoder.stages.2.downsampling_layer.0"]
    assert (norm.layout, norm.shape) == ("nchw", (32, 28, 28))
    assert ex.passes["probe"] == 1  # one shape pass at a second size, once per model
    ex.explain(photo)
    assert ex.passes["probe"] == 1
    before.assert_same(convnext)

    swin = transformers.SwinForImageClassification(
        transformers.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
    ).eval()
    ex = Explainer(swin)
    ex.explain(photo.resize((451, 300)))
    assert "swin.pooler" not in {info.name for info in ex.layers}
    assert ex.default_layer == "swin.layernorm"
    with pytest.raises(CamwidgetError, match="its grid does not follow the input"):
        ex.explain(photo, layer="swin.pooler")


def test_class_names_from_the_config(vit, photo):
    """A Hugging Face config's id2label names the classes, unless it holds only the
    LABEL_i placeholders; labels given to the explainer come first."""
    assert Explainer(vit).labels is None  # LABEL_0 … LABEL_4
    names = {0: "tabby", 1: "espresso", 2: "rocket", 3: "tench", 4: "goldfish"}
    named = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=64, patch_size=16, id2label=names, label2id={v: k for k, v in names.items()},
        )
    ).eval()  # fmt: skip
    ex = Explainer(named)
    e = ex.explain(photo, target="espresso")
    assert e.target == 1 and e.label == "espresso"
    assert Explainer(named, labels=list("abcde")).explain(photo, target="c").label == "c"
