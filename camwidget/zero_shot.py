"""Zero-shot classifiers: an image-text model (CLIP, SigLIP; Hugging Face or open_clip)
as a classifier over text prompts, so that every method explains "why this prompt".

The prompts' text embeddings are computed once per prompt set; a forward then runs the
image tower only and scores the image against each prompt as the model does: CLIP's
``exp(logit_scale) · cos(image, text)``, plus SigLIP's ``logit_bias``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import CamwidgetError

#: Normalisations of the two families when no processor says otherwise.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class ZeroShot(nn.Module):
    """``model`` (an image-text model) as a classifier over ``prompts``: its output is
    (N, len(prompts)) logits, and the prompts are its class names (``prompts``).
    See :func:`zero_shot`."""

    def __init__(
        self,
        model: nn.Module,
        prompts: Sequence[str],
        tokenizer: Callable | None = None,
        processor: object | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.hugging_face = _kind(model)
        self.tokenizer = _tokenizer_of(tokenizer, processor)
        self.pretrained_cfg = _input_of(model, processor, self.hugging_face)
        self.prompts: tuple[str, ...] = ()
        self.register_buffer("text", torch.empty(0), persistent=False)
        self.set_prompts(prompts)

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Score against ``prompts`` from now on (their embeddings, computed once)."""
        prompts = tuple(
            str(p).strip() for p in ([prompts] if isinstance(prompts, str) else prompts)
        )
        if not prompts or not all(prompts):
            raise CamwidgetError("give at least one prompt, each a non-empty text")
        if len(set(prompts)) < len(prompts):
            raise CamwidgetError(f"the prompts repeat one another: {list(prompts)}")
        tokens = _tokens(self.tokenizer, list(prompts), _padding(self.model))
        device = next(self.model.parameters()).device
        tokens = {name: value.to(device) for name, value in tokens.items()}
        try:
            with torch.no_grad():
                if self.hugging_face:
                    text = _embedding(self.model.get_text_features(**tokens))
                else:
                    text = self.model.encode_text(tokens["input_ids"])
        except Exception as error:
            raise CamwidgetError(
                f"the model's text tower failed on the tokens: {type(error).__name__}: "
                f"{error}. Is the tokenizer this model's own?"
            ) from error
        self.text = nn.functional.normalize(text.float(), dim=-1)
        self.prompts = prompts

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, P) logits, one per prompt."""
        if self.hugging_face:
            image = _embedding(self.model.get_image_features(pixel_values=pixel_values))
        else:
            image = self.model.encode_image(pixel_values)
        image = nn.functional.normalize(image, dim=-1)
        logits = image @ self.text.to(image.dtype).T * self.model.logit_scale.exp()
        bias = getattr(self.model, "logit_bias", None)
        return logits if bias is None else logits + bias


def zero_shot(
    model: nn.Module,
    prompts: Sequence[str],
    tokenizer: Callable | None = None,
    processor: object | None = None,
) -> ZeroShot:
    """``model`` as a classifier over the text ``prompts``, to explain like any other:
    ``Explainer(zero_shot(clip, ["a cat", "a dog"], tokenizer))`` then
    ``explain(photo, target="a cat")``.

    ``model``: a Hugging Face CLIP or SigLIP model (``get_image_features`` and
    ``get_text_features``), or an open_clip-style one (``encode_image``,
    ``encode_text``); either with ``logit_scale`` (and SigLIP's ``logit_bias``).
    ``tokenizer``: a Hugging Face tokenizer, or any callable taking the list of prompts
    and returning token ids (a tensor, or a mapping with ``input_ids`` and maybe
    ``attention_mask``); by default the ``processor``'s. ``processor``: the model's
    Hugging Face processor; its image statistics and size become the default
    preprocess (else CLIP's or SigLIP's at the model's image size).
    """
    return ZeroShot(model, prompts, tokenizer, processor)


def _kind(model: nn.Module) -> bool:
    """True for a Hugging Face image-text model, False for an open_clip-style one."""
    if not hasattr(model, "logit_scale"):
        raise CamwidgetError(
            f"{type(model).__name__} is not an image-text model with a logit_scale: "
            "zero_shot takes Hugging Face CLIP/SigLIP or an open_clip model"
        )
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return True
    if hasattr(model, "encode_image") and hasattr(model, "encode_text"):
        return False
    raise CamwidgetError(
        f"{type(model).__name__} has neither get_image_features/get_text_features "
        "(Hugging Face) nor encode_image/encode_text (open_clip)"
    )


def _tokenizer_of(tokenizer: Callable | None, processor: object | None) -> Callable:
    tokenizer = tokenizer or getattr(processor, "tokenizer", None)
    if not callable(tokenizer):
        raise CamwidgetError(
            "zero_shot needs the model's tokenizer (e.g. AutoTokenizer.from_pretrained(...), "
            "or a callable returning input_ids), or its processor"
        )
    return tokenizer


def _siglip(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face SigLIP (or SigLIP 2)."""
    return "siglip" in str(getattr(getattr(model, "config", None), "model_type", ""))


def _padding(model: nn.Module) -> bool | str:
    """SigLIP was trained on texts padded to the full length; CLIP pads to the longest."""
    return "max_length" if _siglip(model) else True


def _tokens(tokenizer: Callable, prompts: list[str], padding: bool | str) -> dict[str, Tensor]:
    """The prompts' token ids (and attention mask) from ``tokenizer``."""
    try:
        if hasattr(tokenizer, "model_input_names"):  # a Hugging Face tokenizer
            found = tokenizer(prompts, padding=padding, truncation=True, return_tensors="pt")
        else:
            found = tokenizer(prompts)
    except Exception as error:
        raise CamwidgetError(
            f"the tokenizer failed on the prompts: {type(error).__name__}: {error}. Pass "
            "the model's own (AutoTokenizer.from_pretrained of its checkpoint, or its "
            "processor), or a callable taking a list of texts and returning input_ids"
        ) from error
    if isinstance(found, Tensor):
        found = {"input_ids": found}
    if not isinstance(found, Mapping) or not isinstance(found.get("input_ids"), Tensor):
        raise CamwidgetError(
            "the tokenizer must return a tensor of token ids or a mapping with input_ids "
            f"(a tensor), not {type(found).__name__}"
        )
    if found["input_ids"].shape[0] != len(prompts):
        raise CamwidgetError(
            f"the tokenizer gave {found['input_ids'].shape[0]} rows for {len(prompts)} prompts"
        )
    names = ("input_ids", "attention_mask")
    return {name: found[name] for name in names if isinstance(found.get(name), Tensor)}


def _embedding(output: object) -> Tensor:
    """The projected embedding: the tensor itself (transformers 4) or the output's
    ``pooler_output`` (transformers 5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


def _input_of(model: nn.Module, processor: object | None, hugging_face: bool) -> dict:
    """What the image tower takes, as timm's ``pretrained_cfg`` says it (read by
    :func:`camwidget.inputs.model_input`): one fixed size, and the processor's
    statistics, or the family's."""
    images = getattr(processor, "image_processor", processor)
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if _siglip(model) else (CLIP_MEAN, CLIP_STD)
    mean, std = (
        getattr(images, "image_mean", None) or mean,
        getattr(images, "image_std", None) or std,
    )
    if hugging_face:
        size = int(getattr(model.config, "vision_config", model.config).image_size)
    else:  # open_clip: the tower's own preprocess_cfg, unless a processor is given
        visual = getattr(model, "visual", None)
        size = getattr(visual, "image_size", 224)
        size = size[0] if isinstance(size, tuple | list) else int(size)
        config = {} if images is not None else getattr(visual, "preprocess_cfg", None) or {}
        mean, std = config.get("mean") or mean, config.get("std") or std
    return {
        "input_size": (3, size, size),
        "fixed_input_size": True,
        "mean": tuple(mean),
        "std": tuple(std),
        "interpolation": "bicubic",
    }
