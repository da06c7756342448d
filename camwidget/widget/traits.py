"""The panel's traits checked as they are set: a bad value raises ``TraitError`` in
words (the panel says it and its control shows the trait again), and which control
shows each trait."""

from __future__ import annotations

from collections.abc import Mapping

from traitlets import HasTraits, TraitError, validate

from .. import methods, render
from ..errors import CamwidgetError
from . import choices

#: trait -> (control name, the control's attribute that shows it)
BINDINGS = {
    "layer": ("layer", "value"),
    "compare_layer": ("compare_layer", "value"),
    "compare_method": ("compare_method", "value"),
    "method": ("method", "value"),
    "colormap": ("colormap", "value"),
    "alpha": ("opacity", "value"),
    "threshold": ("threshold", "value"),
    "compare": ("compare", "value"),
    "target": ("classes", "target"),
    "compare_target": ("compare_classes", "target"),
    "region": ("region", "value"),
    "positive_only": ("positive_only", "value"),
}


def _in_words(error: CamwidgetError) -> TraitError:
    return TraitError(str(error))


class Checked(HasTraits):
    """Validators of the panel's traits, asking its ``explainer`` where they must."""

    @validate("layer", "compare_layer")
    def _valid_layer(self, proposal: Mapping) -> str:
        try:
            return self.explainer.layer(proposal["value"]).name
        except CamwidgetError as error:
            raise _in_words(error) from None

    @validate("method")
    def _valid_method(self, proposal: Mapping) -> str:
        try:
            return self.explainer.resolve(proposal["value"], self.layer).method
        except CamwidgetError as error:
            raise _in_words(error) from None

    @validate("compare_method")
    def _valid_compare_method(self, proposal: Mapping) -> str:
        if proposal["value"] == "":  # the main view's method
            return ""
        try:
            return methods.get(proposal["value"]).name
        except CamwidgetError as error:
            raise _in_words(error) from None

    @validate("target", "compare_target")
    def _valid_target(self, proposal: Mapping) -> object:
        try:
            return self.explainer.check_target(proposal["value"])
        except CamwidgetError as error:
            raise _in_words(error) from None

    @validate("region")
    def _valid_region(self, proposal: Mapping) -> str:
        regions = [value for _, value in choices.REGIONS]
        if proposal["value"] not in regions:
            raise TraitError(f"region must be one of {regions}; got {proposal['value']!r}")
        return proposal["value"]

    @validate("colormap")
    def _valid_colormap(self, proposal: Mapping) -> str:
        try:
            render.colormap_lut(proposal["value"])
        except CamwidgetError as error:
            raise _in_words(error) from None
        return proposal["value"]

    @validate("alpha", "threshold")
    def _valid_fraction(self, proposal: Mapping) -> float:
        if not 0.0 <= proposal["value"] <= 1.0:
            raise TraitError(
                f"{proposal['trait'].name} must lie in [0, 1]; got {proposal['value']}"
            )
        return proposal["value"]
