"""Zero-shot classifiers: CLIP and SigLIP from tiny random configs of ``transformers``
(nothing downloaded) and an open_clip-style model, scored over text prompts, checked
against the models' own forward and explained like any classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ModelState
from torch import nn

from camwidget import CamwidgetError, Explainer, explain_dataset, metrics, zero_shot

transformers = pytest.importorskip("transformers")

PROMPTS = ["a photo of a cat", "a photo of a dog", "a cup of coffee"]
WORDS = sorted(
    {word for prompt in [*PROMPTS, "a rocket", "a tabby cat"] for word in prompt.split()}
)


def tokenizer(prompts: list[str]) -> dict[str, torch.Tensor]:
    """A tokenizer as a callable: word ids (3, 4, ...) between a start (1) and an end
    token (2), padded with 0 to the longest prompt, and the attention mask."""
    rows = [[1, *(3 + WORDS.index(word) for word in prompt.split()), 2] for prompt in prompts]
    length = max(map(len, rows))
    ids = torch.tensor([row + [0] * (length - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
    return {"input_ids": ids, "attention_mask": mask}


def tiny(family: str):
    torch.manual_seed(0)
    text = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=37, image_size=64, patch_size=16)  # fmt: skip
    if family == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        return transformers.CLIPModel(config).eval()
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    return transformers.SiglipModel(config).eval()


@pytest.fixture(scope="module", params=["clip", "siglip"])
def model(request):
    return tiny(request.param)


def test_the_logits_are_the_models_own(model, photo):
    """The wrapper's logits equal the model's ``logits_per_image`` for the same images
    and prompts (SigLIP's bias included); the text tower runs once per prompt set."""
    texts = []
    handle = model.text_model.register_forward_hook(lambda *_: texts.append(1))
    try:
        classifier = zero_shot(model, PROMPTS, tokenizer)
        images = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            ours = classifier(images)
            classifier(images[:1])
            assert texts == [1]
            theirs = model(pixel_values=images, **tokenizer(PROMPTS)).logits_per_image
    finally:
        handle.remove()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert classifier.prompts == tuple(PROMPTS)


class Whole(nn.Module):
    """The same classifier the long way: the whole model (both towers) at every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.tokens = model, tokenizer(PROMPTS)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, **self.tokens).logits_per_image


def test_explained_as_the_whole_model_is(model, photo):
    """Grad-CAM of a prompt through the wrapper equals Grad-CAM through the whole model
    run with both towers; prompts are the class names; the model is left untouched."""
    before = ModelState.of(model)
    classifier = zero_shot(model, PROMPTS, tokenizer)
    ex = Explainer(classifier)
    assert ex.labels == tuple(PROMPTS) and ex.num_classes == 3
    layer = "model.vision_model.encoder.layers.1.layer_norm1"
    assert layer in [info.name for info in ex.layers]
    defaults = {"clip": layer, "siglip": "model.vision_model.post_layernorm"}  # a class token;
    assert ex.default_layer == defaults[model.config.model_type]  # SigLIP pools every token
    e = ex.explain(photo, layer=layer, target="coffee")  # a prompt, by part of its text
    assert e.target == 2 and e.label == "a cup of coffee"
    reference = Whole(model)
    reference.pretrained_cfg = classifier.pretrained_cfg  # the same input: 64×64, CLIP's
    whole = Explainer(reference, labels=PROMPTS)
    reference = whole.explain(photo, layer=layer, target=2)
    np.testing.assert_allclose(e.raw, reference.raw, rtol=1e-4, atol=1e-6 * np.abs(e.raw).max())
    assert e.raw.shape == (4, 4) and np.abs(e.raw).max() > 0
    before.assert_same(model)


def test_everywhere_a_classifier_goes(photo):
    """A batch, the metrics and the audit take a zero-shot classifier as any other."""
    classifier = zero_shot(tiny("clip"), PROMPTS, tokenizer)
    ex = Explainer(classifier)
    one = ex.explain(photo, target="dog")
    batch = ex.explain_batch([photo, photo], targets=["dog", "dog"])
    np.testing.assert_allclose(batch[0].raw, one.raw, rtol=1e-5, atol=1e-6)
    deleted, inserted = metrics.deletion_insertion(ex, photo, one.heatmap, one.target, steps=4)
    assert 0 <= deleted.auc <= 1 and 0 <= inserted.auc <= 1
    data = [(photo, 1), (photo, 0)]

    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, index: int) -> tuple:
            return data[index]

    audit = explain_dataset(ex, Pairs(), batch_size=2, progress=False)
    table = audit.to_pandas()
    assert list(table["label"]) == [1, 0] and table["predicted"].between(0, 2).all()


def test_new_prompts_new_classes(photo):
    classifier = zero_shot(tiny("clip"), PROMPTS, tokenizer)
    classifier.set_prompts(["a rocket", "a tabby cat"])
    ex = Explainer(classifier)
    assert ex.num_classes == 2 and ex.explain(photo, target="rocket").label == "a rocket"


class OpenClipLike(nn.Module):
    """An open_clip-shaped model: encode_image, encode_text, logit_scale, a tower with
    its preprocess_cfg."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, 6),
        )  # fmt: skip
        self.visual.image_size = (48, 48)
        self.visual.preprocess_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
        self.words = nn.Embedding(len(WORDS) + 99, 6)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.words(tokens).sum(dim=1)


def test_an_open_clip_style_model(photo):
    torch.manual_seed(0)
    model = OpenClipLike().eval()
    classifier = zero_shot(model, PROMPTS, lambda prompts: tokenizer(prompts)["input_ids"])
    images = torch.randn(2, 3, 48, 48)
    image = nn.functional.normalize(model.encode_image(images), dim=-1)
    text = nn.functional.normalize(model.encode_text(tokenizer(PROMPTS)["input_ids"]), dim=-1)
    expected = image @ text.T * np.exp(2.0)
    torch.testing.assert_close(classifier(images), expected)
    ex = Explainer(classifier)
    assert ex.model_input.mean == (0.1, 0.2, 0.3)
    assert ex.model_input.size == (48, 48)
    assert ex.explain(photo, target=1).raw.shape == (48, 48)


def test_what_is_refused_is_said(photo):
    with pytest.raises(CamwidgetError, match="not an image-text model"):
        zero_shot(nn.Linear(2, 2), PROMPTS, tokenizer)
    clip = tiny("clip")
    with pytest.raises(CamwidgetError, match="needs the model's tokenizer"):
        zero_shot(clip, PROMPTS)
    with pytest.raises(CamwidgetError, match="at least one prompt"):
        zero_shot(clip, [], tokenizer)
    with pytest.raises(CamwidgetError, match="repeat"):
        zero_shot(clip, ["a cat", "a cat"], tokenizer)
    with pytest.raises(CamwidgetError, match="token ids"):
        zero_shot(clip, PROMPTS, lambda prompts: [1, 2, 3])

    def broken(prompts):
        raise KeyError("no vocabulary")

    with pytest.raises(CamwidgetError, match="the tokenizer failed on the prompts: KeyError"):
        zero_shot(clip, PROMPTS, broken)
    with pytest.raises(CamwidgetError, match="text tower failed.*this model's own"):
        zero_shot(clip, PROMPTS, lambda prompts: {"input_ids": torch.full((3, 4), 10_000)})


def test_the_panel_edits_the_prompts(photo):
    """A zero-shot panel shows its prompts in a box; new ones typed there are its new
    classes, the photo explained again for the best; two prompts side by side."""
    from camwidget import CAMWidget

    panel = CAMWidget(zero_shot(tiny("clip"), PROMPTS, tokenizer), photo)
    box, use = panel.controls["prompts"], panel.controls["use_prompts"]
    assert box.layout.display is None and box.value.splitlines() == PROMPTS
    assert panel.explanation.label in PROMPTS
    box.value = "a rocket\n\n  a tabby cat \n"
    use.click()
    panel.wait()
    assert panel.explainer.labels == ("a rocket", "a tabby cat")
    assert panel.explainer.num_classes == 2
    assert panel.explanation.label in ("a rocket", "a tabby cat")
    shown = [caption for caption, _ in panel.controls["classes"].quick.options]
    assert len(shown) == 2 and all("a rocket" in c or "a tabby cat" in c for c in shown)
    assert panel.controls["classes"].search.options == ("a rocket", "a tabby cat")
    panel.compare, panel.target, panel.compare_target = True, 0, 1
    assert [v.explanation.label for v in panel.views] == ["a rocket", "a tabby cat"]
    box.value = "a rocket\na rocket"
    use.click()  # refused in words; the prompts stay
    panel.wait()
    assert "repeat" in panel.controls["messages"].value
    assert panel.explainer.labels == ("a rocket", "a tabby cat")
    panel.close()


def test_prompts_belong_to_a_zero_shot_model(photo):
    from camwidget import CAMWidget

    panel = CAMWidget(OpenClipLike().visual.eval(), photo)  # a plain classifier
    assert panel.controls["prompts"].layout.display == "none"
    with pytest.raises(CamwidgetError, match="only a zero-shot model"):
        panel.set_prompts(["a cat"])
    panel.close()
