"""Faithfulness of pair explanations: remove the evidence an explanation ranks first.

``flipping``
    pixel/patch flipping of image pairs (:func:`evaluate`, :func:`flipping_curve`).
"""

from .flipping import *  # noqa: F401,F403
from .flipping import __all__ as _flipping_all

__all__ = list(_flipping_all)
