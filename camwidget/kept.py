"""What an explainer keeps between requests, each in a bounded cache."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from torch import Tensor

from .cache import BoundedCache
from .capture import Capture
from .layers import LayerInfo


class Kept:
    """The passes of the latest ``max_images`` images with their layer lists, the
    gradients of the latest (image, target) pairs within ``gradient_bytes`` (the latest
    always kept), the latest maps, and the latest pixel attributions. An image whose
    pass goes takes everything else of it along."""

    def __init__(self, max_images: int, gradient_bytes: int) -> None:
        self.captures: BoundedCache[Capture] = BoundedCache(max_images, evicted=self.forget)
        self.layers: dict[str, list[LayerInfo]] = {}
        self.gradients: BoundedCache[dict[str, Tensor]] = BoundedCache(
            budget=gradient_bytes, size=_nbytes
        )
        self.maps: BoundedCache[np.ndarray] = BoundedCache(1024)
        self.pixels: BoundedCache[Tensor] = BoundedCache(16)

    def forget(self, image_key: str) -> None:
        """Drop what was kept of the image ``image_key``."""
        self.layers.pop(image_key, None)
        for cache in (self.captures, self.gradients, self.maps, self.pixels):
            cache.forget(image_key)

    def gradient(
        self,
        key: tuple,
        capture: Capture,
        layer: str,
        backward: Callable[[list[str]], dict[str, Tensor]],
    ) -> Tensor:
        """d target / dA at ``layer`` for ``key`` = (image, target), back-propagating only
        as deep as needed: the first request for ``key`` runs ``backward`` to ``layer``
        and every layer after it (they lie on the way); the first request for an earlier
        layer completes every layer in one more partial backward; the rest is lookups."""
        grads = self.gradients.get(key)
        if grads is not None and layer in grads:
            return grads[layer]
        names = list(capture.activations)
        wanted = names[names.index(layer) :] if grads is None else names
        found = backward([name for name in wanted if grads is None or name not in grads])
        self.gradients.put(key, {**(grads or {}), **found})
        return found[layer]


def _nbytes(tensors: Mapping[str, Tensor]) -> int:
    """Bytes of the distinct tensors among ``tensors`` (layers may share one)."""
    unique = {id(t): t for t in tensors.values()}
    return sum(t.numel() * t.element_size() for t in unique.values())
