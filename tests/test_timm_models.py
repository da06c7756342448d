"""One small model of every family timm offers (random weights, ``pretrained=False``:
nothing is downloaded), checked like the torchvision matrix: layers of every layout
catalogued, the default layer on the final grid and showing something, three more
layers explained, every map finite, the model left exactly as it was.

The list was made once by instantiating the smallest-named candidates of each of
``timm.list_modules()`` and keeping the one with the fewest parameters; the results are
written to test-artifacts/compatibility-timm.md (the table in docs/models.md).
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from compat import check, write_table

from camwidget import Explainer

#: timm module (family) -> (model, millions of parameters)
FAMILIES = {
    "beit": ("beit_base_patch16_224", 86.5),
    "byoanet": ("halonet26t", 12.5),
    "byobnet": ("mobileone_s0", 5.3),
    "cait": ("cait_xxs24_224", 12.0),
    "coat": ("coat_tiny", 5.5),
    "convit": ("convit_tiny", 5.7),
    "convmixer": ("convmixer_768_32", 21.1),
    "convnext": ("convnext_atto", 3.7),
    "cpubone": ("cpubone_nano", 6.5),
    "crossvit": ("crossvit_tiny_240", 7.0),
    "csatv2": ("csatv2", 11.1),
    "cspnet": ("cs3darknet_s", 3.3),
    "cspnext": ("cspnext_tiny", 2.7),
    "davit": ("davit_tiny", 28.4),
    "deepseek_vit": ("deepseek_vit_412m", 411.8),
    "deit": ("deit_tiny_patch16_224", 5.7),
    "densenet": ("densenet121", 8.0),
    "dla": ("dla34", 15.7),
    "dpn": ("dpn68", 12.6),
    "edgenext": ("edgenext_small", 5.6),
    "efficientformer": ("efficientformer_l1", 12.3),
    "efficientformer_v2": ("efficientformerv2_s0", 3.6),
    "efficientnet": ("mobilenet_edgetpu_v2_xs", 4.5),
    "efficientvim": ("efficientvim_m1", 6.7),
    "efficientvit_mit": ("efficientvit_b0", 3.4),
    "efficientvit_msra": ("efficientvit_m0", 2.3),
    "eva": ("eva02_tiny_patch14_224", 5.5),
    "fasternet": ("fasternet_t0", 3.9),
    "fastvit": ("fastvit_t8", 4.0),
    "focalnet": ("focalnet_tiny_srf", 28.4),
    "gcvit": ("gcvit_xtiny", 20.0),
    "gemma4_vit": ("gemma4_vit_167m", 167.4),
    "ghostnet": ("ghostnet_050", 2.6),
    "hardcorenas": ("hardcorenas_a", 5.3),
    "hgnet": ("hgnet_tiny", 14.7),
    "hiera": ("hiera_tiny_224", 27.9),
    "hieradet_sam2": ("sam2_hiera_tiny", 26.9),
    "hrnet": ("hrnet_w18_small", 13.2),
    "iformer": ("iformer_t", 2.9),
    "inception_next": ("inception_next_atto", 4.2),
    "inception_resnet_v2": ("inception_resnet_v2", 55.8),
    "inception_v3": ("inception_v3", 23.8),
    "inception_v4": ("inception_v4", 42.7),
    "lcnetv2": ("lcnetv2_small", 4.1),
    "levit": ("levit_128s", 7.8),
    "lowformer": ("lowformer_b0", 14.1),
    "mambaout": ("mambaout_femto", 7.3),
    "maxxvit": ("maxvit_pico_rw_256", 7.5),
    "metaformer": ("caformer_s18", 26.3),
    "mlp_mixer": ("gmixer_12_224", 12.7),
    "mobilenetv3": ("lcnet_035", 1.6),
    "mobilenetv5": ("mobilenetv5_base", 82.6),
    "mobilevit": ("mobilevit_xxs", 1.3),
    "mvitv2": ("mvitv2_tiny", 24.2),
    "naflexvit": ("naflexvit_base_patch16_gap", 86.6),
    "nasnet": ("nasnetalarge", 88.8),
    "nest": ("nest_tiny", 17.1),
    "nextvit": ("nextvit_small", 31.8),
    "nfnet": ("nf_regnet_b0", 8.8),
    "pit": ("pit_xs_224", 10.6),
    "pnasnet": ("pnasnet5large", 86.1),
    "pvt_v2": ("pvt_v2_b0", 3.7),
    "qwen3_vit": ("qwen3_vit_88m", 87.4),
    "rdnet": ("rdnet_tiny", 23.9),
    "regnet": ("regnetx_002", 2.7),
    "repghost": ("repghostnet_050", 2.3),
    "repvit": ("repvit_m1_0", 7.3),
    "res2net": ("res2next50", 24.7),
    "resnest": ("resnest14d", 10.6),
    "resnet": ("resnet18", 11.7),
    "resnetv2": ("resnetv2_18", 11.7),
    "rexnet": ("rexnet_100", 4.8),
    "selecsls": ("selecsls42", 30.4),
    "senet": ("legacy_seresnet18", 11.8),
    "sequencer": ("sequencer2d_s", 27.7),
    "shvit": ("shvit_s1", 6.3),
    "sknet": ("skresnet18", 12.0),
    "starnet": ("starnet_s050", 0.5),
    "swiftformer": ("swiftformer_xs", 3.5),
    "swin_transformer": ("swin_tiny_patch4_window7_224", 28.3),
    "swin_transformer_v2": ("swinv2_tiny_window8_256", 28.3),
    "swin_transformer_v2_cr": ("swinv2_cr_tiny_224", 28.3),
    "tiny_vit": ("tiny_vit_5m_224", 12.1),
    "tnt": ("tnt_s_legacy_patch16_224", 23.8),
    "tresnet": ("tresnet_m", 31.4),
    "twins": ("twins_svt_small", 24.1),
    "vgg": ("vgg11", 132.9),
    "visformer": ("visformer_tiny", 10.3),
    "vision_transformer": ("vit_tiny_patch16_224", 5.7),
    "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224", 6.3),
    "vision_transformer_relpos": ("vit_srelpos_small_patch16_224", 22.0),
    "vision_transformer_sam": ("samvit_base_patch16_224", 86.5),
    "vitamin": ("vitamin_small_224", 22.2),
    "volo": ("volo_d1_224", 26.6),
    "vovnet": ("vovnet39a", 22.6),
    "xception": ("legacy_xception", 22.9),
    "xception_aligned": ("xception41p", 26.9),
    "xcit": ("xcit_nano_12_p8_224", 3.0),
}
#: Families whose model does not work with camwidget, with the reason (strict xfail: a
#: fix makes the test fail until the entry goes).
KNOWN: dict[str, str] = {}
ROWS: dict = {}
FAILURES: dict[str, str] = {}


def params(family: str) -> list:
    name, millions = FAMILIES[family]
    marks = [pytest.mark.slow] if millions > 40 else []
    if family in KNOWN:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[family]))
    return pytest.param(family, marks=marks, id=name)


@pytest.mark.parametrize("family", [params(family) for family in FAMILIES])
def test_timm_family(family):
    name = FAMILIES[family][0]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False)
    try:
        ROWS[name] = check(model)
    except Exception as error:
        FAILURES[name] = KNOWN.get(family, f"fails: {type(error).__name__}: {error}")
        raise


def test_write_timm_compatibility_table():
    """The timm table of docs/models.md, from the run above (a report, not a check)."""
    if not ROWS:
        pytest.skip("no model was run")
    names = [name for name, _ in FAMILIES.values()]
    write_table("compatibility-timm.md", names, ROWS, FAILURES)


@pytest.mark.parametrize(
    "name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"]
)
def test_class_token_vits_default_to_the_last_blocks_first_norm(name):
    """Where the field's guides point Grad-CAM; without the rule the default was the
    attention's input projection (``attn.qkv``), the last map before the class token
    alone reaches the logits."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False).eval()
    ex = Explainer(model)
    e = ex.explain(torch.randn(3, *model.default_cfg["input_size"][1:]))
    assert ex.default_layer == f"blocks.{len(model.blocks) - 1}.norm1"
    assert e.layer == ex.default_layer and e.raw.max() > 0
