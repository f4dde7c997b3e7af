"""AttCAT and CAT (Qiang et al., NeurIPS 2022): class activation tokens.

For block ``l`` with input hidden states ``h(l)`` and ``y`` the explained
(pre-softmax) score, the class activation token of position ``i`` is
``CAT(l)_i = sum_d dy/dh(l)_{i,d} * h(l)_{i,d}``. CAT sums it over blocks;
AttCAT weights each block by the attention position ``i`` receives there,
``a(l)_i`` = mean over heads, then mean over the query rows that count
(``query_mask``, by default the attention mask) of ``A(l)[:, :, i]``.

Example::

    >>> from captum_attcat import AttCAT
    >>> explainer = AttCAT(model)
    >>> scores = explainer.attribute(input_ids, target=1,
    ...                              additional_forward_args=(attention_mask,))
    >>> scores.shape                                  # (batch, seq)
"""

from __future__ import annotations

from typing import Any

from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor

from ..base import TransformerAttribution, check_query_mask, query_rows
from ..maps import class_activation_tokens, received_attention
from ..registry import register_method


def _select_layers(layer_scores: Tensor, return_layer_scores: bool) -> Tensor:
    return layer_scores if return_layer_scores else layer_scores.sum(1)


@register_method("CAT")
class CAT(TransformerAttribution):
    r"""Class Activation Tokens: ``sum_l sum_d grad(h(l))_d * h(l)_d`` per token.

    The sum over blocks of gradient x activation of each block's input hidden
    states (``attribute_to_layer_input=True``, as in the reference code) or
    output hidden states. Needs no attention probabilities, so the explicit
    form needs only ``layers``.

    Args:
        forward_func: a Hugging Face model, or a forward function with ``layers``
            and ``attention_modules`` (see :class:`TransformerAttribution`).

    Example::

        >>> cat = CAT(model)                      # or CAT(forward_func, layers=blocks)
        >>> cat.attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
    """

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = True,
        return_layer_scores: bool = False,
    ) -> Tensor:
        r"""
        Args:
            inputs: token ids ``(batch, seq)``, or input embeddings
                ``(batch, seq, hidden)`` when the forward function takes them.
            target: the output index to explain, as Captum's ``TargetType``: a class,
                ``(position, index)`` pairs for per-token outputs (a QA model's start/end
                logits), or an ``AnswerSpan``.
            additional_forward_args: further arguments of the forward function;
                the first is the attention mask ``(batch, seq)``, as for Hugging
                Face models.
            attribute_to_layer_input: use the blocks' input hidden states
                (default, as the reference code) or their outputs.
            return_layer_scores: return ``(batch, blocks, seq)`` instead of the sum
                over blocks.

        Returns:
            ``(batch, seq)`` token scores (float32 for lower-precision models).
        """
        run = self.record_gradients(inputs, target, additional_forward_args, block_inputs=attribute_to_layer_input)
        return _select_layers(class_activation_tokens(run), return_layer_scores)

    needs_attention = False
    linear_in_target = True


@register_method("AttCAT")
class AttCAT(TransformerAttribution):
    r"""Attentive Class Activation Tokens:
    ``sum_l [sum_d grad(h(l))_d * h(l)_d] * a(l)``.

    ``a(l)`` is the attention each token receives in block ``l``: the attention
    probabilities averaged over heads, then over the query rows of
    ``query_mask`` (by default the attention mask, so padding never counts).
    Padding positions receive no attention and score exactly 0.

    Args:
        forward_func: a Hugging Face model, or a forward function with ``layers``
            and ``attention_modules`` (see :class:`TransformerAttribution`).

    Example::

        >>> attcat = AttCAT(model)
        >>> scores = attcat.attribute(input_ids, target=1,
        ...                           additional_forward_args=(attention_mask,))
        >>> per_block = attcat.attribute(input_ids, target=1, return_layer_scores=True)
    """

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = True,
        return_layer_scores: bool = False,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        r"""
        Args:
            inputs: token ids ``(batch, seq)``, or input embeddings
                ``(batch, seq, hidden)`` when the forward function takes them.
            target: the output index to explain, as Captum's ``TargetType``: a class,
                ``(position, index)`` pairs for per-token outputs (a QA model's start/end
                logits), or an ``AnswerSpan``.
            additional_forward_args: further arguments of the forward function;
                the first is the attention mask ``(batch, seq)``.
            attribute_to_layer_input: use the blocks' input hidden states
                (default, as the reference code) or their outputs.
            return_layer_scores: return ``(batch, blocks, seq)`` instead of the sum.
            query_mask: ``(batch, seq)`` 0/1, the query rows averaged in ``a(l)``.
                Defaults to the attention mask (all ones without one). The AttCAT
                notebooks zero [CLS]/[SEP] in the attention mask but average over
                every row: pass ``torch.ones_like(input_ids)`` to reproduce them.

        Returns:
            ``(batch, seq)`` token scores (float32 for lower-precision models).
        """
        check_query_mask(query_mask, inputs)
        run = self.record_gradients(
            inputs, target, additional_forward_args, block_inputs=attribute_to_layer_input, attention=True
        )
        attention = received_attention(run.attentions, query_rows(run, query_mask))
        return _select_layers(class_activation_tokens(run) * attention, return_layer_scores)

    linear_in_target = True
