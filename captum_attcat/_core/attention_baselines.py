"""Attention and attention-gradient baselines of the AttCAT and Mask-LRP papers, and GAE.

``A(l)`` is block ``l``'s attention ``(batch, heads, queries, keys)``, ``grad``
the gradient of the explained logit. Methods that read the [CLS] query row
(row 0) return 0 at [CLS] itself (the AttCAT and Mask-LRP copies of the
reference code do the same; Chefer's writes the row minimum), except
:class:`GAE`, which keeps its own value there (``R[0, 0] >= 1``, the identity it
starts from), as the GAE reference does. Methods that score every key
(:class:`AttentionGradient`, :class:`GradSAM`) return their value at [CLS].
Padding always scores 0.

Example::

    >>> from captum_attcat import AttentionRollout, GAE
    >>> AttentionRollout(model).attribute(input_ids, additional_forward_args=(attention_mask,))
    >>> GAE(model).attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
"""

from __future__ import annotations

from typing import Any

import torch
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor

from ..base import AttentionAttribution, AttentionGradientAttribution, check_query_mask, query_rows
from ..maps import head_mean, positive_head_mean, query_mean, rollout, wide
from ..registry import register_method

_ARGS = r"""
        Args:
            inputs: token ids ``(batch, seq)``, or input embeddings
                ``(batch, seq, hidden)`` when the forward function takes them.
            target: the output index to explain, as Captum's ``TargetType``: a class,
                ``(position, index)`` pairs for per-token outputs (a QA model's
                ``(batch, seq, 2)`` start/end logits), or an ``AnswerSpan``{target_note}.
            additional_forward_args: further arguments of the forward function;
                the first is the attention mask ``(batch, seq)``.{extra}

        Returns:
            ``(batch, seq)`` float32 token scores; padding scores 0.
"""


_QUERY_MASK = """
            query_mask: ``(batch, seq)`` 0/1, the query rows averaged over. Defaults
                to the attention mask; with [CLS]/[SEP] zeroed in the attention mask
                (the AttCAT reference evaluation), pass the real-token mask to keep
                averaging over every row, as :class:`~captum_attcat.AttCAT` does."""


@register_method("RawAttention")
class RawAttention(AttentionAttribution):
    r"""Raw attention (RawAtt): the last block's attention, mean over heads, row 0.

    Example::

        >>> RawAttention(model).attribute(input_ids, additional_forward_args=(attention_mask,))
    """

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        run = self.record(inputs, target, additional_forward_args)
        return self.explained_row(head_mean(run.attentions[-1]), run.token_mask, target)

    attribute.__doc__ = _ARGS.format(target_note=(
        "; a class index is not used (checked\n                when given), a position target picks the row read"), extra="")


@register_method("AttentionRollout")
class AttentionRollout(AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema 2020): ``Â(l) = mean_h A(l) + I``,
    row-normalised; ``Â(L) ··· Â(1)``, row 0.

    Example::

        >>> AttentionRollout(model).attribute(input_ids, additional_forward_args=(attention_mask,))
    """

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        run = self.record(inputs, target, additional_forward_args)
        return self.explained_row(rollout([head_mean(a) for a in run.attentions]), run.token_mask, target)

    attribute.__doc__ = _ARGS.format(target_note=(
        "; a class index is not used (checked\n                when given), a position target picks the row read"), extra="")


@register_method("AttentionGradient")
class AttentionGradient(AttentionGradientAttribution):
    r"""Attention gradient ("Grads"; "CAM" in Mask-LRP): the gradient of the
    last block's attention, mean over heads and over the query rows of real
    tokens, clamped at 0.

    Example::

        >>> AttentionGradient(model).attribute(input_ids, target=1)
    """

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None,
                  query_mask: Tensor | None = None) -> Tensor:
        check_query_mask(query_mask, inputs)
        run = self.record(inputs, target, additional_forward_args)
        rows = query_rows(run, query_mask)
        return query_mean(head_mean(run.attention_grads[-1]), rows).clamp(min=0) * run.token_mask

    attribute.__doc__ = _ARGS.format(target_note="", extra=_QUERY_MASK)


@register_method("AttentionGradCAM")
class AttentionGradCAM(AttentionGradientAttribution):
    r"""Attention Grad-CAM (Att-GradCAM; "GradCAM" in Mask-LRP): head weights
    ``w_h`` = mean of ``grad A(L)_h``; ``mean_h(w_h A(L)_h)`` clamped at 0,
    min-max scaled over the real tokens, row 0.

    Example::

        >>> AttentionGradCAM(model).attribute(input_ids, target=1)
    """

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None,
                  query_mask: Tensor | None = None) -> Tensor:
        check_query_mask(query_mask, inputs)
        run = self.record(inputs, target, additional_forward_args)
        mask, rows = run.token_mask, query_rows(run, query_mask)
        pairs = (rows[:, :, None] * rows[:, None, :])[:, None]  # (batch, 1, q, k): counted x counted
        grads = wide(run.attention_grads[-1]) * pairs
        weights = grads.sum((2, 3), keepdim=True) / pairs.sum((2, 3), keepdim=True)
        cam = (weights * wide(run.attentions[-1])).mean(1).clamp(min=0)
        pairs = pairs[:, 0].bool()
        low = cam.masked_fill(~pairs, float("inf")).amin((1, 2), keepdim=True)
        high = cam.masked_fill(~pairs, float("-inf")).amax((1, 2), keepdim=True)
        spread = high - low
        scaled = torch.where(spread > 0, (cam - low) / spread.clamp(min=torch.finfo(cam.dtype).tiny), 0.0)
        return self.explained_row(scaled, mask, target)

    attribute.__doc__ = _ARGS.format(target_note="", extra=_QUERY_MASK.replace("query rows", "rows and columns"))


@register_method("GradSAM")
class GradSAM(AttentionGradientAttribution):
    r"""Grad-SAM (Barkan et al. 2021; "AttGrads"): mean over blocks and heads of
    ``A ⊙ relu(grad A)``, averaged over the query rows of real tokens.

    Example::

        >>> GradSAM(model).attribute(input_ids, target=1)
    """

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None,
                  query_mask: Tensor | None = None) -> Tensor:
        check_query_mask(query_mask, inputs)
        run = self.record(inputs, target, additional_forward_args)
        maps = [head_mean(wide(a) * wide(g).clamp(min=0)) for a, g in zip(run.attentions, run.attention_grads)]
        return query_mean(torch.stack(maps).mean(0), query_rows(run, query_mask)) * run.token_mask

    attribute.__doc__ = _ARGS.format(target_note="", extra=_QUERY_MASK)


@register_method("GAE")
class GAE(AttentionGradientAttribution):
    r"""Generic Attention-model Explainability (Chefer et al. 2021a):
    ``Ā(l) = mean_h (grad A(l) ⊙ A(l))^+``; ``R = I``, then ``R ← R + Ā(l) R``
    for ``l = 1..L``; row 0, [CLS] included (``R[0, 0] >= 1``).

    Example::

        >>> GAE(model).attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
    """

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        run = self.record(inputs, target, additional_forward_args)
        relevance = None
        for attention, grad in zip(run.attentions, run.attention_grads):
            weighted = positive_head_mean(grad, attention)
            if relevance is None:
                relevance = torch.eye(weighted.shape[-1], dtype=weighted.dtype, device=weighted.device).expand_as(weighted)
            relevance = relevance + weighted @ relevance
        return self.explained_row(relevance, run.token_mask, target, keep_cls=True)

    attribute.__doc__ = _ARGS.format(target_note="", extra="")
