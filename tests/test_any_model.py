"""Every image classifier torchvision offers, with random weights, at 224×224: layers of
every layout catalogued (the transformers' blocks too), the default layer on the final
grid and showing something, three more layers explained with Grad-CAM, every map
finite, the model unchanged and hook-free afterwards.

The results are written to test-artifacts/compatibility.md (the table in docs/models.md).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from compat import check, write_table

MODELS = torchvision.models.list_models(module=torchvision.models)
# The heaviest at 224 (by FLOPs): marked slow, run in CI.
HEAVY = {
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "regnet_y_128gf",
    "regnet_y_32gf",
    "regnet_x_32gf",
    "regnet_y_16gf",
    "regnet_x_16gf",
    "efficientnet_v2_l",
    "efficientnet_b7",
    "efficientnet_b6",
    "convnext_large",
    "swin_v2_b",
    "swin_b",
    "wide_resnet101_2",
    "resnext101_64x4d",
    "resnext101_32x8d",
}
ROWS: dict = {}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS]
)
def test_any_torchvision_classifier(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet / inception warn about their init
        model = torchvision.models.get_model(name, weights=None)
    ROWS[name] = check(model)


def test_transformer_blocks_are_catalogued():
    """ViT, Swin and MaxViT: the blocks, not just the patch embedding."""
    for name, layout in (("vit_b_16", "tokens"), ("swin_t", "nhwc")):
        if name in ROWS:
            assert layout in ROWS[name].layouts and ROWS[name].layers > 100, ROWS[name]
    if "vit_b_16" in ROWS:
        assert ROWS["vit_b_16"].default.startswith("encoder.layers.encoder_layer_11.ln_1")


def test_write_compatibility_table():
    """The compatibility table of docs/models.md, from the run above (a report, not a check)."""
    if not ROWS:
        pytest.skip("no model was run")
    write_table("compatibility.md", MODELS, ROWS, {})
