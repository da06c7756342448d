"""camwidget: a live Jupyter panel that shows what a PyTorch CNN looks at."""

from .errors import CamwidgetError
from .explainer import Explainer, Explanation, PreparedImage
from .layers import LayerInfo
from .methods import METHODS
from .render import overlay

__all__ = [
    "METHODS",
    "CamwidgetError",
    "Explainer",
    "Explanation",
    "LayerInfo",
    "PreparedImage",
    "overlay",
]
__version__ = "0.1.0"
