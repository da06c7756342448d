"""Traits bound to controls, both ways, and a switch to set either quietly."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

import ipywidgets as widgets
from traitlets import HasTraits, TraitError

from ..errors import CamwidgetError


class Flag:
    """On inside ``with flag():``, as it was before outside (e.g. the panel's ``quiet``:
    changes of traits and controls re-render nothing; ``from_page``: the changes come
    from the page)."""

    def __init__(self) -> None:
        self.on = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        previous, self.on = self.on, True
        try:
            yield
        finally:
            self.on = previous


def bind(
    owner: HasTraits,
    trait: str,
    control: widgets.Widget,
    attribute: str,
    quiet: Flag,
    on_error: Callable[[str], None],
    from_page: Callable[[], AbstractContextManager],
) -> None:
    """One handler each way: the control sets ``owner``'s trait (inside ``from_page()``;
    an error goes to ``on_error`` and the control shows the trait again), the trait
    shows in the control."""

    def from_control(change: Mapping) -> None:
        if quiet.on or change["new"] is None or change["new"] == getattr(owner, trait):
            return
        try:
            with from_page():
                setattr(owner, trait, change["new"])
        except (TraitError, CamwidgetError) as error:
            on_error(str(error))
            with quiet():
                setattr(control, attribute, getattr(owner, trait))

    def to_control(change: Mapping) -> None:
        with quiet():
            setattr(control, attribute, change["new"])

    with quiet():
        setattr(control, attribute, getattr(owner, trait))
    control.observe(from_control, attribute)
    owner.observe(to_control, trait)
