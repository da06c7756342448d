"""Class names typed by a person -> class indices."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import CamwidgetError


def resolve_target(
    text: str | int, labels: Sequence[str] | None, classes: int | None = None
) -> int:
    """The class index meant by ``text``: an index, a label (any case), or an
    unambiguous prefix of one. An ambiguous prefix lists its matches."""
    if isinstance(text, int) or str(text).strip().isdigit():
        index = int(text)
        count = classes if classes is not None else (len(labels) if labels else None)
        if count is not None and not 0 <= index < count:
            raise CamwidgetError(
                f"class {index} is out of range: there are {count} classes, 0 to {count - 1}"
            )
        return index
    query = str(text).strip().lower()
    if not query:
        raise CamwidgetError("type a class name or index")
    if not labels:
        raise CamwidgetError(f"no class names are known, so {text!r} cannot be looked up")
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


def _listing(labels: Sequence[str], indices: list[int], limit: int = 12) -> str:
    shown = ", ".join(f"{labels[i]} ({i})" for i in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return f"it matches {shown}{more}"
