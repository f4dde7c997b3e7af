"""Explain Transformer predictions with AttCAT, CAT and friends, as Captum attributions.

Example::

    >>> from captum_attcat import AttCAT
    >>> scores = AttCAT(model).attribute(input_ids, target=1,
    ...                                  additional_forward_args=(attention_mask,))
"""

from ._core.attcat import CAT, AttCAT
from ._core.base import TransformerAttribution
from ._core.registry import METHODS, register_method
from ._utils.attention import ATTN_IMPLEMENTATION
from .models.adapters import TransformerAdapter

__version__ = "0.1.0"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "AttCAT",
    "CAT",
    "METHODS",
    "TransformerAdapter",
    "TransformerAttribution",
    "register_method",
]
