"""Class names typed by a person -> class indices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import CamwidgetError


def unnamed(index: int) -> str:
    """The name of class ``index`` where no class names were given: ``"class 281"``."""
    return f"class {index}"


def declared(model: object) -> Sequence[str] | Mapping[int, str] | None:
    """The class names ``model`` carries: a zero-shot model's ``prompts``, or a Hugging
    Face config's ``id2label`` (unless it holds only the ``LABEL_i`` placeholders)."""
    prompts = getattr(model, "prompts", None)
    if isinstance(prompts, tuple) and prompts and all(isinstance(p, str) for p in prompts):
        return prompts
    names = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(names, Mapping) or not names:
        return None
    if all(str(name) == f"LABEL_{index}" for index, name in names.items()):
        return None
    return {int(index): str(name) for index, name in names.items()}


def resolve_target(
    text: str | int, labels: Sequence[str] | None, classes: int | None = None
) -> int:
    """The class index meant by ``text``: an index, a label (any case), or an
    unambiguous prefix of one. An ambiguous prefix lists its matches."""
    if isinstance(text, int) or str(text).strip().isdigit():
        count = classes if classes is not None else (len(labels) if labels else None)
        return int(text) if count is None else check_index(int(text), count)
    query = str(text).strip().lower()
    if not query:
        raise CamwidgetError("type a class name or index")
    if not labels:
        raise CamwidgetError(
            f"no class names are known, so {text!r} cannot be looked up: use a class "
            "index, or give the class names (labels=...)"
        )
    lowered = [label.lower() for label in labels]
    exact = [i for i, label in enumerate(lowered) if label == query]
    matches = exact or [i for i, label in enumerate(lowered) if label.startswith(query)]
    if not matches:
        matches = [i for i, label in enumerate(lowered) if query in label]
        if len(matches) != 1:
            hint = _listing(labels, matches) if matches else "no class name contains it"
            raise CamwidgetError(f"unknown class {text!r}: {hint}")
    if len(matches) > 1:
        raise CamwidgetError(f"{text!r} is ambiguous: {_listing(labels, matches)}")
    return matches[0]


def check_index(index: int, classes: int) -> int:
    """``index`` if it is a valid class index of a model with ``classes`` classes."""
    if not 0 <= index < classes:
        raise CamwidgetError(
            f"target {index} is out of range: this model has {classes} classes, "
            f"indices 0 to {classes - 1}"
        )
    return index


def _listing(labels: Sequence[str], indices: list[int], limit: int = 12) -> str:
    shown = ", ".join(f"{labels[i]} ({i})" for i in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return f"it matches {shown}{more}"
