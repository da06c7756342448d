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
