"""LRP-based methods: relevance at the attention maps and at the encoder input.

One forward pass runs under the LRP engine (:mod:`captum_attcat.lrp`); its
graph is walked back once for gradients (when the method needs them) and once
for relevance, which starts as 1.0 at the explained logit. ``R_A(l)`` is the
relevance at block ``l``'s attention probabilities (what ``A·V`` hands to
``A``), the encoder input is the input of the first block.

At [CLS]: :class:`PartialLRP` and :class:`TransAtt` read the [CLS] query row and
return 0 at [CLS] itself (as the AttCAT and Mask-LRP copies of the reference
code; Chefer's writes the row minimum for TransAtt); :class:`TransformerLRP`
returns the relevance [CLS] really receives (Chefer's code writes 0), so its
scores sum to the relevance that reaches the encoder input. Padding scores 0.

Example::

    >>> from captum_attcat import TransAtt
    >>> TransAtt(model).attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import torch
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from .._utils.attention import AttentionRecorder, use_attention_handler
from .._utils.hooks import BlockStates
from .._utils.state import every_module, explanation_mode
from ..lrp.engine import Propagation, lrp_forward, pass_modules
from ..lrp.rules import LRPRules
from ..targets import NextTokens
from ..base import Recording, TransformerAttribution, check_aligned, explained_scores, per_target, spread
from ..maps import positive_head_mean, rollout, wide
from ..registry import register_method


@contextlib.contextmanager
def eager_experts(modules: Sequence[Module]) -> Iterator[None]:
    """Mixture-of-experts layers among ``modules`` computed by transformers' eager loop over experts
    (linear layers the engine has rules for) rather than a fused kernel such as ``grouped_mm``, then
    switched back."""
    configs = {id(m.config): m.config for m in modules
               if getattr(getattr(m, "config", None), "_experts_implementation", None) not in (None, "eager")}
    saved = [(config, config._experts_implementation) for config in configs.values()]
    try:
        for config, _ in saved:
            config._experts_implementation = "eager"
        yield
    finally:
        for config, value in saved:
            config._experts_implementation = value


class LRPAttribution(TransformerAttribution):
    r"""Base of the LRP-based methods.

    Args:
        forward_func: a Hugging Face model, or a forward function with ``layers``
            and ``attention_modules`` (see :class:`TransformerAttribution`).
        layers: the transformer blocks (explicit form).
        attention_modules: one attention module per block (explicit form).
        rules: the LRP rules (:class:`~captum_attcat.lrp.LRPRules`); the
            default is the reference rule set of Chefer et al. (2021b).
    """

    floor_budget = 2.5
    #: whether relevance may legitimately reach no attention map (MaskLRP with every head masked);
    #: otherwise a block receiving none means the recorded blocks are not connected to the output
    relevance_may_vanish: bool = False
    #: whether the pass runs in gradient x input form (:attr:`Propagation.implicit`), as AttnLRP does
    implicit: bool = False

    def __init__(
        self,
        forward_func: Module | Callable[..., Any],
        layers: Sequence[Module] | None = None,
        attention_modules: Sequence[Module] | None = None,
        rules: LRPRules | None = None,
    ) -> None:
        super().__init__(forward_func, layers, attention_modules)
        if rules is not None and not isinstance(rules, LRPRules):
            raise TypeError(f"`rules` must be an LRPRules object, got {type(rules).__name__}")
        self.rules = rules if rules is not None else LRPRules()

    def _attention_recorder(self, propagation: Propagation) -> AttentionRecorder:
        """Records the attention probabilities (in the graph) during the LRP forward."""
        return AttentionRecorder(self.adapter.attention_modules, keep_graph=True)

    def record_relevance(
        self,
        inputs: Any,
        target: TargetType,
        additional_forward_args: Any,
        blocks: Sequence[int] = (),
        attention_grads: bool = False,
        input_relevance: bool = False,
    ) -> Recording:
        """One forward under the LRP engine; gradients (if asked) and relevance at the attention
        maps of ``blocks`` and (if asked) at the encoder input (``state_relevance[0]``, the first
        block's input, also ``input_relevance``). Relevance is no gradient of the model, so this
        pass takes no gradients through Captum's layer utilities: the engine walks its own graph.

        Example::

            >>> run = TransAtt(model).record_relevance(input_ids, 1, (mask,), blocks=[5], attention_grads=True)
            >>> run.attention_relevance[0].shape                 # (batch, heads, seq, seq), block 5
        """
        inputs, args, attention_mask = self.prepare_inputs(inputs, additional_forward_args)
        if any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda")):
            raise RuntimeError(
                f"{type(self).__name__} cannot run under torch.autocast: the LRP rules work on the model's "
                "own dtype and promise float32 relevance; call `attribute` outside autocast (or cast the "
                "model with .to(torch.bfloat16) to explain it in that dtype)"
            )
        adapter = self.adapter
        # the explained input of the engine: the first block's input, as a fresh leaf
        states = BlockStates(adapter.blocks[:1], inputs=True, fresh=True)
        propagation = Propagation(self.rules, gradients=attention_grads, implicit=self.implicit)
        # attention read by hooks gets its rules after its code ran: follow the copies it multiplied
        propagation.follow_copies = bool(adapter.hooked_attention)
        recorder = self._attention_recorder(propagation)
        handles: list = []
        hooks: list = []
        blocks = list(blocks)
        with adapter.lock():
            try:
                with explanation_mode(adapter.roots, adapter.attention_configs), torch.enable_grad(), \
                        use_attention_handler(recorder):
                    every = every_module(adapter.roots)
                    for module in every:
                        for parameter in module._parameters.values():  # only tensors computed from the
                            if parameter is not None:                  # input carry relevance
                                parameter.requires_grad_(False)
                        # the user's backward hooks would receive relevance as if it were a gradient
                        if module._backward_hooks or module._backward_pre_hooks:
                            hooks.append((module, module._backward_hooks, module._backward_pre_hooks))
                            module._backward_hooks, module._backward_pre_hooks = OrderedDict(), OrderedDict()
                    handles = recorder.hook_outputs(adapter.hooked_attention)
                    whole, routers = pass_modules(every)
                    with states, lrp_forward(propagation, whole, start=adapter.blocks[0], routers=routers), \
                            eager_experts(every):
                        output = adapter.forward(inputs, *args)
                    check_aligned(states.captured(), recorder.captured() if adapter.attention_modules else [],
                                  inputs.shape[0])
                    scores = explained_scores(output, target)
                    attentions = [recorder.captured()[b] for b in blocks]
                    wrt = attentions + (states.captured() if input_relevance else [])
                    received = getattr(recorder, "received", None)  # what MaskLRP's masked products record
                    kept: list[list] = []

                    def explain_one(score: Tensor, retain: bool) -> list[Tensor]:
                        grads = propagation.gradients(score, attentions, retain_graph=True) if attention_grads else []
                        relevance = propagation.relevance(score, wrt, retain_graph=retain) if wrt else []
                        if received is not None:
                            kept.append(list(received))
                        return [*grads, *relevance]

                    results = per_target(explain_one, scores)
                    n_grads = len(attentions) if attention_grads else 0
                    grads, relevance = results[:n_grads], results[n_grads:]
                    if received is not None and scores.dim() == 2:  # per explained token, as the rest
                        received[:] = [None if any(k[b] is None for k in kept)
                                       else torch.stack([k[b] for k in kept], 1).flatten(0, 1)
                                       for b in range(len(received))]
                    cut = [b for b, r in zip(blocks, relevance) if not r.count_nonzero()]
                    if cut and scores.count_nonzero() and not self.relevance_may_vanish:
                        raise RuntimeError(
                            f"no relevance reached the attention of blocks {cut}: the forward pass does not "
                            "connect them to the explained output as the recorded blocks say"
                        )
            finally:
                for handle in handles:
                    handle.remove()
                states.remove()
                for module, backward, backward_pre in hooks:
                    module._backward_hooks, module._backward_pre_hooks = backward, backward_pre
        tokens = states.tensors[0].shape[1]  # type: ignore[union-attr]
        times, visible = 1, None
        if isinstance(target, NextTokens):  # one row per explained token: what it sees
            times, visible = len(target), target.visible(attention_mask, tokens, inputs.device)
        return Recording(
            inputs=inputs,
            attention_mask=attention_mask if visible is None else visible,
            scores=scores.detach().flatten(),
            blocks=blocks,
            attentions=[spread(a.detach(), times) for a in attentions],
            attention_grads=list(grads),
            attention_relevance=relevance[: len(blocks)],
            state_relevance=relevance[len(blocks):],
            tokens=tokens,
            visible=visible,
            recorder=recorder,
        )


_ARGS = r"""
        Args:
            inputs: token ids ``(batch, seq)``, or input embeddings
                ``(batch, seq, hidden)`` when the forward function takes them.
            target: the output index to explain, as Captum's ``TargetType`` (a class,
                ``(position, index)`` pairs for per-token outputs (a QA model's start/end
                logits), or an ``AnswerSpan``);
                relevance starts as 1.0 at this (pre-softmax) logit.
            additional_forward_args: further arguments of the forward function;
                the first is the attention mask ``(batch, seq)``.{extra}

        Returns:
            ``(batch, seq)`` float32 token scores; padding scores 0.
"""


@register_method("TransformerLRP")
class TransformerLRP(LRPAttribution):
    r"""Full LRP ("LRP" in the papers): the relevance at the encoder input (the
    first block's input), summed over hidden units.

    [CLS] keeps the relevance it receives, so with the default rules the scores
    of an example sum to the relevance that reaches the encoder input.

    Example::

        >>> TransformerLRP(model).attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
    """

    needs_attention = False

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        run = self.record_relevance(inputs, target, additional_forward_args, input_relevance=True)
        return wide(run.input_relevance).sum(-1) * run.token_mask  # type: ignore[arg-type]

    attribute.__doc__ = _ARGS.format(extra="")


@register_method("PartialLRP")
class PartialLRP(LRPAttribution):
    r"""Partial LRP (Voita et al. 2019, as in Chefer et al. 2021b): the
    relevance of the last block's attention, clamped at 0, mean over heads, row 0.

    Example::

        >>> PartialLRP(model).attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
    """

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        last = len(self.adapter.blocks) - 1
        run = self.record_relevance(inputs, target, additional_forward_args, blocks=[last])
        cam = wide(run.attention_relevance[0]).clamp(min=0).mean(1)
        return self.explained_row(cam, run.token_mask, target)

    attribute.__doc__ = _ARGS.format(extra="")


@register_method("TransAtt")
class TransAtt(LRPAttribution):
    r"""Transformer attribution (Chefer et al. 2021b):
    ``Ā(l) = mean_h (grad A(l) ⊙ R_A(l))^+``; ``(Ā + I)`` row-normalised;
    product over blocks ``start_layer..L``; row 0.

    Example::

        >>> TransAtt(model).attribute(input_ids, target=1, start_layer=0)
    """

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
        start_layer: int = 0,
    ) -> Tensor:
        n_blocks = len(self.adapter.blocks)
        if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < n_blocks:
            raise ValueError(f"`start_layer` must be an int in [0, {n_blocks}) (the model has {n_blocks} blocks); "
                             f"got {start_layer!r}")
        run = self.record_relevance(
            inputs, target, additional_forward_args, blocks=range(start_layer, n_blocks), attention_grads=True
        )
        maps = [positive_head_mean(g, r) for g, r in zip(run.attention_grads, run.attention_relevance)]
        return self.explained_row(rollout(maps), run.token_mask, target)

    attribute.__doc__ = _ARGS.format(
        extra="\n            start_layer: the first block of the rollout (0: all blocks)."
    )
