"""Encoders: what one side of a kernel is (images, texts), behind one contract.

:class:`~skbilrp.DeepKernel` runs over an :class:`ImageEncoder`,
:class:`~skbilrp.TextKernel` over a :class:`TextEncoder`, and
:class:`~skbilrp.CrossModalKernel` over one of each.
"""

from .base import Encoder, modality
from .images import ImageEncoder
from .texts import TextEncoder

__all__ = ["Encoder", "ImageEncoder", "TextEncoder", "modality"]
