"""A small bounded cache, used for every kind of result the engine keeps."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class BoundedCache(Generic[Value]):
    """Least recently used entries go first once there are more than ``entries`` of
    them, or once their ``size`` adds up to more than ``budget`` (the newest entry is
    always kept); ``evicted(key)`` is told of each entry shed. Keys are tuples whose
    first item is the image they belong to, or that image's key itself, so that
    :meth:`forget` drops an image's results."""

    def __init__(
        self,
        entries: int | None = None,
        budget: float | None = None,
        size: Callable[[Value], float] = lambda value: 1,
        evicted: Callable[[Hashable], None] | None = None,
    ) -> None:
        self.entries, self.budget, self.size, self.evicted = entries, budget, size, evicted
        self._items: OrderedDict[Hashable, Value] = OrderedDict()
        self._sizes: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __iter__(self):
        return iter(list(self._items))

    def get(self, key: Hashable) -> Value | None:
        """The value of ``key`` (now the most recently used), or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value: Value) -> Value:
        """Keep ``value`` under ``key`` (its size measured now), then shed the oldest."""
        self._items[key] = value
        self._items.move_to_end(key)
        self._sizes[key] = self.size(value)
        self.shrink()
        return value

    def shrink(self, room: int = 0) -> None:
        """Shed the oldest entries until the bounds hold with ``room`` entries to spare."""
        while len(self._items) > 1 or (room and self._items):
            over_count = self.entries is not None and len(self._items) + room > self.entries
            over_budget = self.budget is not None and sum(self._sizes.values()) > self.budget
            if not (over_count or over_budget):
                return
            oldest = next(iter(self._items))
            self.pop(oldest)
            if self.evicted is not None:
                self.evicted(oldest)

    def pop(self, key: Hashable) -> Value | None:
        """Remove ``key``; its value, or None."""
        self._sizes.pop(key, None)
        return self._items.pop(key, None)

    def forget(self, image_key: str) -> None:
        """Drop every entry of the image ``image_key``."""
        for key in [k for k in self._items if k == image_key or _first(k) == image_key]:
            self.pop(key)

    def clear(self) -> None:
        """Drop everything."""
        self._items.clear()
        self._sizes.clear()


def _first(key: Hashable) -> Hashable:
    return key[0] if isinstance(key, tuple) and key else None
