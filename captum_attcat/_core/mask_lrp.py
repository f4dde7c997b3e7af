"""Mask-LRP (Song et al. 2024): TransAtt whose relevance flows down through the important heads only.

In every block, the relevance that the attention product ``A V`` passes down
(to ``A`` and to ``V``, hence to the blocks below) is kept for the heads of the
head mask and dropped for the others. The rollout itself is TransAtt's, built
from the relevance each block's attention receives before the mask applies.
With the defaults this reproduces the reference code: no renormalisation, and
the rollout reads the *un-halved* relevance of ``A`` (twice what TransAtt
reads). ``renormalize=True`` rescales what the kept heads pass down so that,
per example, the product hands on all the relevance it received, as the
paper describes.

Example::

    >>> from captum_attcat import HeadMask, MaskLRP
    >>> explainer = MaskLRP(model, head_mask=HeadMask.load("mask.json"))
    >>> explainer.attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from .._utils.attention import AttentionRecorder
from ..heads.mask import HeadMask
from ..lrp.engine import Propagation
from ..lrp.rules import LRPRules
from .lrp_methods import LRPAttribution
from ..maps import positive_head_mean, rollout
from ..registry import register_method


class HeadMaskedProduct:
    """The product rule of one block's ``A V``: the usual rule, then the relevance of
    masked heads dropped (optionally the rest rescaled to conserve it); the relevance
    ``A`` received before masking and halving is kept in ``received[block]``."""

    def __init__(self, base: Any, keep: Tensor, block: int, received: list, renormalize: bool) -> None:
        self.base, self.keep, self.block = base, keep, block
        self.received, self.renormalize = received, renormalize

    def relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        heads = self.keep.numel()
        if a.dim() == 4 and b.dim() == 4 and b.shape[1] == 1 and a.shape[1] == heads > 1:
            # values shared by every head (Falcon's multi-query attention): mask each head's share
            # of their relevance before it is summed into the shared values
            ra, rb = self.base.relevance(a, b.expand(b.shape[0], heads, *b.shape[2:]), output, relevance)
            kept_a, kept_b = self._masked(ra, rb)
            return kept_a, kept_b.sum_to_size(b.shape)
        ra, rb = self.base.relevance(a, b, output, relevance)
        if ra.dim() == 3:  # heads folded into the batch, (batch * heads, queries, keys), as BLOOM multiplies
            heads = self.keep.numel()
            kept_a, kept_b = self._masked(ra.view(-1, heads, *ra.shape[1:]), rb.view(-1, heads, *rb.shape[1:]))
            return kept_a.view(ra.shape), kept_b.view(rb.shape)
        return self._masked(ra, rb)

    def _masked(self, ra: Tensor, rb: Tensor) -> tuple[Tensor, Tensor]:
        if ra.shape[1] != self.keep.numel():
            raise ValueError(f"the head mask has {self.keep.numel()} heads per block but block {self.block}'s "
                             f"attention has {ra.shape[1]} (as its probabilities show)")
        self.received[self.block] = ra / self.base.share
        if self.renormalize:
            before = ra.flatten(1).sum(1) + rb.flatten(1).sum(1)
        keep = self.keep.to(ra.device, ra.dtype).view(1, -1, 1, 1)
        kept_a, kept_b = ra.mul_(keep), rb.mul_(keep)
        if self.renormalize:
            after = kept_a.flatten(1).sum(1) + kept_b.flatten(1).sum(1)
            scale = torch.where(after != 0, before / torch.where(after != 0, after, 1), 0).view(-1, 1, 1, 1)
            kept_a, kept_b = kept_a.mul_(scale), kept_b.mul_(scale)
        return kept_a, kept_b


class _MaskedRecorder(AttentionRecorder):
    """Records the attention probabilities and gives each block's ``A V`` its
    :class:`HeadMaskedProduct` rule; ``received`` collects what each ``A`` received."""

    def __init__(self, modules: Sequence[Module], propagation: Propagation, keep: Tensor, base: Any,
                 renormalize: bool) -> None:
        super().__init__(modules, keep_graph=True)
        self.propagation = propagation
        self.received: list[Tensor | None] = [None] * len(modules)
        self.rules = [HeadMaskedProduct(base, keep[b], b, self.received, renormalize) for b in range(len(modules))]

    def on_probabilities(self, block: int, probs: Tensor) -> Tensor:
        probs = super().on_probabilities(block, probs)
        self.propagation.product_rules[id(probs)] = self.rules[block]
        return probs


@register_method("MaskLRP")
class MaskLRP(LRPAttribution):
    r"""Mask-LRP: TransAtt with relevance restricted to the important heads ``M(b)``.

    Args:
        forward_func: a Hugging Face model, or a forward function with ``layers``
            and ``attention_modules``.
        head_mask: a :class:`~captum_attcat.HeadMask` or a ``(blocks, heads)`` 0/1
            array/tensor (1 = relevance flows through the head). ``None`` gives TransAtt.
        renormalize: rescale what the kept heads pass down so each block's
            attention product conserves relevance (the paper's description);
            ``False`` (default) reproduces the reference code.
        rules: the LRP rules (default: the reference rules).

    Example::

        >>> MaskLRP(model, head_mask=mask).attribute(input_ids, target=1)
        >>> MaskLRP(model, head_mask=mask.random(seed=0))    # the random-mask ablation
    """

    required_arguments = {"head_mask": "a HeadMask (HeadMask.load(path), or HeadMask.from_statistics(head_statistics("
                                       "model, tokenizer, sentences))); without one MaskLRP is TransAtt"}

    relevance_may_vanish = True  # masked heads pass no relevance down

    def __init__(
        self,
        forward_func: Module | Callable[..., Any],
        layers: Sequence[Module] | None = None,
        attention_modules: Sequence[Module] | None = None,
        head_mask: HeadMask | Any = None,
        renormalize: bool = False,
        rules: LRPRules | None = None,
    ) -> None:
        super().__init__(forward_func, layers, attention_modules, rules)
        if head_mask is not None and not isinstance(head_mask, HeadMask):
            head_mask = HeadMask.from_tensor(head_mask)
        blocks = len(self.adapter.attention_modules)
        if head_mask is not None and head_mask.shape[0] != blocks:
            raise ValueError(
                f"the head mask has {head_mask.shape[0]} blocks but the model has {blocks} "
                f"(expected shape ({blocks}, heads))"
            )
        # the attention module's own count where it keeps one (ConvBERT gives half of the config's heads
        # to convolutions), else the config's
        first = self.adapter.attention_modules[0] if self.adapter.attention_modules else None
        heads = next((getattr(first, n) for n in ("num_attention_heads", "num_heads", "n_heads")
                      if isinstance(getattr(first, n, None), int)),
                     getattr(self.adapter.config, "num_attention_heads", None))
        if head_mask is not None and isinstance(heads, int) and head_mask.shape[1] != heads:
            raise ValueError(
                f"the head mask has {head_mask.shape[1]} heads per block but the model has {heads} "
                f"(expected shape ({blocks}, {heads}))"
            )
        self.head_mask = head_mask
        self.renormalize = renormalize

    def _attention_recorder(self, propagation: Propagation) -> AttentionRecorder:
        modules = self.adapter.attention_modules
        if self.head_mask is None:
            return super()._attention_recorder(propagation)
        return _MaskedRecorder(modules, propagation, self.head_mask.tensor(), self.rules.product, self.renormalize)

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        r"""
        Args:
            inputs: token ids ``(batch, seq)`` or input embeddings.
            target: the output index to explain, as Captum's ``TargetType``: a class,
                ``(position, index)`` pairs for per-token outputs (a QA model's start/end
                logits), or an ``AnswerSpan``.
            additional_forward_args: the attention mask first, as for Hugging Face models.

        Returns:
            ``(batch, seq)`` float32 token scores; 0 at [CLS] and at padding.
        """
        blocks = len(self.adapter.blocks)
        run = self.record_relevance(inputs, target, additional_forward_args, blocks=range(blocks), attention_grads=True)
        if self.head_mask is not None:
            heads = run.attentions[0].shape[1]
            if self.head_mask.shape[1] != heads:
                raise ValueError(f"the head mask has {self.head_mask.shape[1]} heads per block but the model has {heads}")
            relevance = run.recorder.received  # type: ignore[union-attr]
            missing = [b for b, r in enumerate(relevance) if r is None]
            if missing:  # the mask would silently not apply: TransAtt's result under MaskLRP's name
                raise NotImplementedError(
                    f"the head mask could not be applied in blocks {missing}: the attention probabilities "
                    "recorded there are not what multiplies the values in the model's code (a reshaped copy); "
                    "MaskLRP needs attention through transformers' AttentionInterface or modules whose returned "
                    "probabilities are the left operand of the A V product"
                )
        else:
            relevance = run.attention_relevance
        maps = [positive_head_mean(g, r) for g, r in zip(run.attention_grads, relevance)]
        return self.explained_row(rollout(maps), run.token_mask, target)
