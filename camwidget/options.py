"""The methods' options as an explainer's keywords and attributes, made from the method
descriptors (see :attr:`camwidget.methods.Method.options`)."""

from __future__ import annotations

from collections.abc import Mapping

from . import methods
from .errors import CamwidgetError


class MethodOptions:
    """Each method option is a keyword and an attribute named ``{prefix}_{option}``
    (e.g. ``scorecam_batch_size``); ``settings`` holds those set, the rest read as
    their declared defaults."""

    settings: dict[str, object]

    def __init__(self, options: Mapping[str, object]) -> None:
        known = methods.keywords()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise CamwidgetError(
                f"{type(self).__name__} got unknown keywords {unknown}; the methods' options "
                f"are: {', '.join(known)}"
            )
        self.settings = dict(options)

    def __getattr__(self, name: str) -> object:
        """A method's option by its keyword, e.g. ``ex.scorecam_channels``."""
        found = methods.keywords().get(name)
        if found is None or "settings" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        spec, option = found
        return self.settings.get(name, spec.options[option].default)

    def __setattr__(self, name: str, value: object) -> None:
        if name in methods.keywords():
            self.settings[name] = value
        else:
            super().__setattr__(name, value)

    def options(self, method: str) -> dict[str, object]:
        """``method``'s options in force, by short name (what its function is given)."""
        spec = methods.get(method)
        return {name: getattr(self, spec.keyword(name)) for name in spec.options}
