"""The one exception type camwidget raises for problems the user can fix."""


class CamwidgetError(ValueError):
    """A problem with the model, the image or the arguments, stated in words."""
