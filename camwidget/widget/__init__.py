"""The live panel: :class:`CAMWidget` wires controls to views; no math lives here.

Imports run one way: ``panel`` uses ``controls``, ``views`` and ``inspector``, which use
only the engine.
"""

from .panel import CAMWidget

__all__ = ["CAMWidget"]
