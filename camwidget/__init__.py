"""camwidget: a live Jupyter panel that shows what a PyTorch image model looks at."""

from . import metrics, samples, targets, zoo
from .audit import Audit, explain_dataset
from .audit_ray import RayEngine
from .errors import CamwidgetError
from .explainer import Explainer
from .explanation import Explanation, PreparedImage
from .layers import LayerInfo
from .methods import METHODS
from .render import overlay
from .widget import CAMWidget
from .zero_shot import ZeroShot, zero_shot

__all__ = [
    "METHODS",
    "Audit",
    "CAMWidget",
    "CamwidgetError",
    "Explainer",
    "Explanation",
    "Gallery",
    "LayerInfo",
    "PreparedImage",
    "RayEngine",
    "ZeroShot",
    "explain_dataset",
    "metrics",
    "overlay",
    "samples",
    "targets",
    "zero_shot",
    "zoo",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``Gallery`` is imported when first used (it needs pandas)."""
    if name == "Gallery":
        from .widget.gallery import Gallery

        return Gallery
    raise AttributeError(f"module 'camwidget' has no attribute {name!r}")
