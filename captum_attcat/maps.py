"""Token x token maps to token scores: the arithmetic the attention-based methods share.

Maps are per block ``(batch, heads, queries, keys)`` (attention probabilities,
their gradients, their relevance) or head-averaged ``(batch, queries, keys)``;
``token_mask`` is ``(batch, seq)`` with 1 for real tokens and 0 for padding.

Example::

    >>> joint = rollout([head_mean(a) for a in attentions])
    >>> scores = cls_row(joint, token_mask)          # row 0, 0 at [CLS] and padding
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import Recording


def wide(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 (or wider)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def head_mean(maps: Tensor) -> Tensor:
    """``(batch, heads, q, k) -> (batch, q, k)``: mean over heads, in float32 or wider."""
    return wide(maps).mean(1)


def positive_head_mean(first: Tensor, second: Tensor) -> Tensor:
    """``mean_h (first ⊙ second)^+`` (clamped before the mean, as the reference code)."""
    return (wide(first) * wide(second)).clamp(min=0).mean(1)


def query_mean(maps: Tensor, query_mask: Tensor) -> Tensor:
    """``(batch, q, k) -> (batch, k)``: mean over the query rows where ``query_mask`` is 1."""
    weights = query_mask.to(maps.dtype) / query_mask.sum(1, keepdim=True).to(maps.dtype)
    return (maps * weights[:, :, None]).sum(1)


def received_attention(attentions: Sequence[Tensor], query_mask: Tensor) -> Tensor:
    """``(batch, blocks, keys)``: attention each key receives, mean over heads, then
    mean over the query rows where ``query_mask`` is 1."""
    return torch.stack([query_mean(head_mean(a), query_mask) for a in attentions], dim=1)


def rollout(maps: Sequence[Tensor]) -> Tensor:
    """``Â(L) ··· Â(1)`` with ``Â = (M + I)`` row-normalised, for maps ``(batch, n, n)``
    given first block first."""
    eye = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype, device=maps[0].device)
    joint = None
    for matrix in maps:
        matrix = matrix + eye
        matrix = matrix / matrix.sum(-1, keepdim=True)
        joint = matrix if joint is None else matrix @ joint
    return joint  # type: ignore[return-value]


def cls_row(matrix: Tensor, token_mask: Tensor, keep_cls: bool = False, causal: bool = False,
            rows: Tensor | None = None) -> Tensor:
    """Row 0 (the [CLS] query) of ``(batch, n, n)``; padding set to 0 and, unless
    ``keep_cls``, position 0 too (its self-score is no explanation of the others).

    ``causal=True`` (decoders such as GPT-2, whose classification head reads the last real
    token) reads the row of each example's last real token instead and keeps every value:
    that token is a word of the input, not a marker. ``rows`` (one position per example, e.g.
    the token whose start logit is explained) reads those rows, keeping every value.
    """
    mask = token_mask.to(matrix.dtype)
    if rows is not None:
        return matrix[torch.arange(matrix.shape[0], device=matrix.device), rows.to(matrix.device)] * mask
    if causal:
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask > 0, positions, torch.zeros_like(positions)).amax(1)
        return matrix[torch.arange(matrix.shape[0], device=matrix.device), last] * mask
    row = matrix[:, 0] * mask
    if not keep_cls:
        row[:, 0] = 0
    return row


def token_mask_of(attention_mask: Tensor | None, inputs: Tensor, tokens: int | None = None) -> Tensor:
    """The attention mask as float ``(batch, seq)``, all ones when none was given (``tokens`` long:
    the blocks' sequence when the inputs are not tokens, e.g. an image's [CLS] + patches)."""
    if attention_mask is None:
        return torch.ones(inputs.shape[0], tokens or inputs.shape[1], device=inputs.device)
    return attention_mask.to(inputs.device, torch.float32)


def class_activation_tokens(run: "Recording") -> Tensor:
    """``(batch, blocks, seq)``: ``sum_d grad * hidden`` of each recorded block state (CAT's per-block
    scores), in float32 or wider."""
    dtype = torch.promote_types(run.states[0].dtype, torch.float32)
    return torch.stack(
        [(g.to(dtype) * h.to(dtype)).sum(-1) for g, h in zip(run.state_grads, run.states)], dim=1
    )


def min_max(maps: Tensor, real: Tensor) -> Tensor:
    """Maps ``(..., seq)`` scaled to [0, 1] over the tokens where ``real`` is 1 (0 if constant, 0 elsewhere).

    Example::

        >>> min_max(torch.tensor([[2., 4., 3., 9.]]), torch.tensor([[1, 1, 1, 0]])).tolist()
        [[0.0, 1.0, 0.5, 0.0]]
    """
    low = maps.masked_fill(real == 0, float("inf")).amin(-1, keepdim=True)
    span = maps.masked_fill(real == 0, -float("inf")).amax(-1, keepdim=True) - low
    return torch.where((span > 0) & (real > 0), (maps - low) / torch.where(span > 0, span, 1), 0)
