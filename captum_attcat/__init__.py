"""Explain Transformer predictions with AttCAT, CAT and friends, as Captum attributions.

Example::

    >>> from captum_attcat import AttCAT
    >>> scores = AttCAT(model).attribute(input_ids, target=1,
    ...                                  additional_forward_args=(attention_mask,))
"""

from ._core.attcat import CAT, AttCAT
from ._core.attn_lrp import AttnLRP
from ._core.contrast_cat import ContrastCAT
from ._core.attention_baselines import (
    GAE,
    AttentionGradCAM,
    AttentionGradient,
    AttentionRollout,
    GradSAM,
    RawAttention,
)
from ._core.lrp_methods import LRPAttribution, PartialLRP, TransAtt, TransformerLRP
from ._core.mask_lrp import MaskLRP
from .base import AttentionAttribution, AttentionGradientAttribution, Recording, TransformerAttribution
from .registry import METHODS, arguments_by_method, missing_arguments, register_method
from ._utils.attention import ATTN_IMPLEMENTATION
from .heads import HeadMask, HeadStatistics, ParsedSentence, head_statistics, read_conllu
from .models.adapters import TransformerAdapter, logits_of
from .targets import TARGET_KINDS, AnswerSpan, NextTokens, span_attribution, target_kind

__version__ = "0.1.0"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "AnswerSpan",
    "AttentionAttribution",
    "AttentionGradientAttribution",
    "AttCAT",
    "AttentionGradCAM",
    "AttentionGradient",
    "AttentionRollout",
    "AttnLRP",
    "CAT",
    "ContrastCAT",
    "GAE",
    "GradSAM",
    "HeadMask",
    "HeadStatistics",
    "LRPAttribution",
    "METHODS",
    "MaskLRP",
    "NextTokens",
    "ParsedSentence",
    "PartialLRP",
    "RawAttention",
    "Recording",
    "TARGET_KINDS",
    "TransAtt",
    "TransformerAdapter",
    "TransformerAttribution",
    "TransformerLRP",
    "arguments_by_method",
    "head_statistics",
    "logits_of",
    "missing_arguments",
    "read_conllu",
    "register_method",
    "span_attribution",
    "target_kind",
]
