"""camwidget: a live Jupyter panel that shows what a PyTorch CNN looks at."""

from . import samples, zoo
from .errors import CamwidgetError
from .explainer import Explainer, Explanation, PreparedImage
from .layers import LayerInfo
from .methods import METHODS
from .render import overlay
from .widget import CAMWidget

__all__ = [
    "METHODS",
    "CAMWidget",
    "CamwidgetError",
    "Explainer",
    "Explanation",
    "LayerInfo",
    "PreparedImage",
    "overlay",
    "samples",
    "zoo",
]
__version__ = "0.1.0"
