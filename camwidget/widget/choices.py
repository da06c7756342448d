"""What the class picker offers for each kind of model, and what a pick explains."""

from __future__ import annotations

import numpy as np

from ..explainer import Explainer, PreparedImage
from ..methods import GROUPS, Method
from ..targets import Region

#: The most quick picks shown (a multi-label model may have many classes above 0.5).
MAX_PICKS = 20
#: The region toggle of a segmentation model: the class's predicted pixels, or all.
REGIONS = (("predicted pixels", "predicted"), ("whole image", "image"))


def offer(explainer: Explainer, image: PreparedImage, k: int) -> list[tuple[str, object]]:
    """(caption, pick) for the picker: the top classes with their probability, the
    classes present with their share of pixels, or the detections with their box (told
    apart where several have one class) and score."""
    kind = explainer.output_kind
    if kind == "detections":
        return [
            (f"{d.target.describe(explainer.label)} · {d.score:.2f}", d.target)
            for d in explainer.detections(image)[:k]
        ]
    suffix = " of pixels" if kind == "dense" else ""
    return [
        (f"{label} · {value:.1%}{suffix}", index)
        for index, label, value in explainer.predict(image, k)[:MAX_PICKS]
    ]


def heading(kind: str, similarity: bool) -> str:
    """The title over the picks (HTML) for a model whose output is of ``kind`` (see
    :attr:`Explainer.output_kind`), or for a similarity to a reference image."""
    if similarity:
        return "<b>reference image</b> (the map shows what makes this one look like it)"
    found = {"detections": "detections", "dense": "classes present"}.get(kind, "top predictions")
    return f"<b>{found}</b> (click to explain)"


def explained(pick: object, kind: str, region: str, size: tuple[int, int]) -> object:
    """The target a view explains for ``pick``: for a segmentation model with the whole
    image chosen, the class over every pixel; else the pick itself."""
    if kind == "dense" and region == "image" and isinstance(pick, int):
        return Region(pick, np.ones(size, bool))
    return pick


def method_label(spec: Method) -> str:
    """A method as the method list offers it: pixel-level ones say whether they read
    the layer, slow ones say so."""
    label = spec.title
    if spec.pixel_level:
        label += " (pixels × layer)" if spec.needs_layer else " (pixels)"
    return f"{label} · slow" if spec.perturbing else label


def method_list(specs: list[Method]) -> list[tuple[str, str]]:
    """(label, name) of ``specs`` for a method list, group by group (see
    :data:`camwidget.methods.GROUPS`), each group in registry order."""
    ordered = sorted(specs, key=lambda spec: GROUPS.index(spec.group))
    return [(method_label(spec), spec.name) for spec in ordered]


def method_tooltip(spec: Method, left_out: list[str]) -> str:
    """What the chosen method computes, and why the list leaves others out."""
    found = f"{spec.group}: {spec.summary}"
    return f"{found} Not offered here: {'; '.join(left_out)}" if left_out else found
