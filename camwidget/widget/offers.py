"""What the panel's controls offer: the layers of the image's catalogue, the methods
that apply at the layer, and the controls each kind of model and method needs."""

from __future__ import annotations

from .. import methods
from . import choices
from . import controls as controls_
from .views import View


class Offers:
    """Keeps the controls' choices in step with the image, layer and methods (a part of
    :class:`CAMWidget`)."""

    def _offer_layers(self) -> None:
        """The layer lists, for the current image's catalogue."""
        layers = [(info.label, info.name) for info in self.explainer.layers]
        with self._quiet():
            for name, value in (("layer", self.layer), ("compare_layer", self.compare_layer)):
                control = self._controls[name]
                with control.hold_sync():
                    if list(control.options) != layers:
                        control.options = layers
                    control.value = value

    def _offer_methods(self) -> None:
        """The methods that apply at the main view's layer, group by group; the tooltip
        says what the chosen one computes and why others are left out (those made for
        another kind of model go unmentioned)."""
        control = self._controls["method"]
        specs, reasons = [], []
        model = self.explainer.model
        for name, spec in methods.REGISTRY.items():
            if not spec.suits(model):
                continue
            reason = self.explainer.why_not(name, self.layer)
            if reason is None:
                specs.append(spec)
            else:
                reasons.append(reason)
        offered = choices.method_list(specs)
        with self._quiet(), control.hold_sync():
            if list(control.options) != offered:
                control.options = offered
            control.value = self.method
            control.tooltip = choices.method_tooltip(methods.get(self.method), reasons)
        self._show_layer_use()

    def _show_layer_use(self) -> None:
        """A layer control is off for a method that reads no layer, and says why; the
        positive-only toggle shows where a view has a pixel-level method, a method's
        option lists where a view has that method."""
        shown = {"layer": self.method, "compare_layer": self.compare_method or self.method}
        for name, method in shown.items():
            spec, control = methods.get(method), self._controls[name]
            control.disabled = not spec.needs_layer
            control.tooltip = (
                "the layer whose feature maps are explained"
                if spec.needs_layer
                else f"{spec.title} reads no layer of your choosing: {spec.summary}"
            )
        specs = [methods.get(method) for method in shown.values()]
        signed = any(spec.signed for spec in specs)
        self._controls["positive_only"].layout.display = "flex" if signed else "none"
        keywords = {spec.keyword(option) for spec in specs for option in spec.options}
        for keyword in controls_.chosen_options():
            self._controls[keyword].layout.display = "flex" if keyword in keywords else "none"

    def _follow_layer(self) -> tuple[tuple[View, ...], str | None]:
        """After the main layer changed: offer the methods that apply there, and switch
        to the method's fallback where it does not. Returns the views to re-explain."""
        resolved = self.explainer.resolve(self.method, self.layer, fallback=True)
        if resolved.method != self.method:
            with self._quiet():
                self.method = resolved.method
        self._offer_methods()
        return (self.views if resolved.note else ()), resolved.note

    def _show_mode(self) -> None:
        """Show the controls this kind of model needs, under a title that names them:
        the region toggle for a segmentation model; the reference instead of the class
        list for a similarity."""
        kind = self.explainer.output_kind
        self._controls["heading"].value = choices.heading(kind, self._reference is not None)
        shown = {
            "region": kind == "dense" and self._reference is None,
            "classes": self._reference is None,
            "compare_classes": self._reference is None,
            "reference": self._reference is not None,
            "reference_image": self._reference is not None,
        }
        for name, visible in shown.items():
            self._controls[name].layout.display = None if visible else "none"
