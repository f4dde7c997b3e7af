"""The base of every explanation method: constructor forms, validation, one gradient pass.

A method is built either from a Hugging Face model, whose blocks and attention
are found automatically, or in Captum's explicit form from any forward function
with its blocks and attention modules. :meth:`TransformerAttribution._gradient_pass`
runs one forward pass that records what the method needs (block hidden states,
attention probabilities) and one backward pass for the explained scores, with
the model in eval mode and restored afterwards.

Example::

    >>> class MyMethod(TransformerAttribution):
    ...     def attribute(self, inputs, target=None, additional_forward_args=None):
    ...         run = self._gradient_pass(inputs, target, additional_forward_args, block_inputs=True)
    ...         return sum((g * h).sum(-1) for g, h in zip(run.state_grads, run.states))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from captum._utils.common import _format_additional_forward_args, _select_targets
from captum._utils.typing import TargetType
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from torch import Tensor
from torch.nn import Module

from .._utils.attention import AttentionRecorder, use_attention_handler
from .._utils.forward import attention_maps
from .._utils.hooks import BlockStates
from .._utils.state import explanation_mode
from .._utils.validation import (
    attention_mask_of,
    check_gradients_possible,
    check_pixel_values,
    check_target,
    check_token_inputs,
    check_token_mask,
)
from ..models.adapters import TransformerAdapter, logits_of
from ..targets import AnswerSpan, NextTokens, accepts_answer_spans, target_positions
from .maps import cls_row


@dataclass
class GradientPass:
    """What one forward + backward pass recorded, per block ``l`` (first to last).

    Attributes:
        inputs: the validated inputs.
        attention_mask: ``(batch, seq)`` float mask, or ``None`` if none was passed.
        scores: explained scores ``(batch,)`` (detached).
        states: block hidden states ``(batch, seq, hidden)`` (detached).
        state_grads: gradients of the summed explained scores w.r.t. ``states``.
        attentions: attention probabilities ``(batch, heads, queries, keys)`` (detached).
        attention_grads: gradients w.r.t. ``attentions``, if asked for.
        tokens: the length of the blocks' sequence (the inputs' for text; [CLS] + patches for images).
        visible: for a :class:`~captum_attcat.NextTokens` target, ``(batch * n, seq)``: what each
            explained token sees (the per-block lists and ``attention_mask`` then hold one row per
            explained token, example-major; ``inputs`` stay ``(batch, ...)``), else ``None``.
    """

    inputs: Tensor
    attention_mask: Tensor | None
    scores: Tensor
    states: list[Tensor] = field(default_factory=list)
    state_grads: list[Tensor] = field(default_factory=list)
    attentions: list[Tensor] = field(default_factory=list)
    attention_grads: list[Tensor] = field(default_factory=list)
    tokens: int = 0
    visible: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = self.inputs.shape[1]


def check_aligned(states: Sequence[Tensor], attentions: Sequence[Tensor], batch: int) -> None:
    """Every block sees the same ``(batch, seq)`` tokens, and its attention is ``(batch, heads, seq,
    seq)`` over them; raises otherwise (Swin's windows and merged patches), since token scores of
    different blocks would not line up."""
    tokens = states[0].shape[1] if states else (attentions[0].shape[-1] if attentions else None)
    for kind, tensors, shape in (("hidden states", states, lambda t: (t.shape[0], t.shape[1])),
                                 ("attention", attentions, lambda t: (t.shape[0], t.shape[-2], t.shape[-1]))):
        for block, tensor in enumerate(tensors):
            expected = (batch, tokens) if kind == "hidden states" else (batch, tokens, tokens)
            if tensor.dim() != (3 if kind == "hidden states" else 4) or shape(tensor) != expected:
                raise ValueError(
                    f"block {block}'s {kind} have shape {tuple(tensor.shape)}, but the blocks' sequence is "
                    f"(batch, seq) = ({batch}, {tokens}): the model attends within windows or changes the "
                    "sequence between blocks (as Swin merges patches), so token scores of different blocks "
                    "do not line up; these methods explain models whose blocks all see the same tokens"
                )


def check_query_mask(query_mask: Tensor | None, inputs: Any) -> None:
    """Reject a ``query_mask`` of the wrong shape or values, or one that selects no row."""
    if query_mask is None:
        return
    query_mask = check_token_mask(query_mask, check_token_inputs(inputs), "query_mask")
    empty = (query_mask.sum(1) == 0).nonzero()
    if len(empty):
        raise ValueError(f"the query mask selects no query row for example {int(empty[0])}")


def query_rows(run: GradientPass, query_mask: Tensor | None = None) -> Tensor:
    """The query rows a method averages over, float ``(batch, seq)``: ``query_mask`` when
    given (checked by :func:`check_query_mask`), else the attention mask of the pass (all
    ones without one).

    Example::

        >>> query_rows(run, torch.ones_like(input_ids))  # every row, even masked [CLS]/[SEP]  # doctest: +SKIP
    """
    if query_mask is None:  # the attention mask was checked, a row without real tokens refused
        query_mask = run.attention_mask
        if query_mask is None:
            query_mask = torch.ones(run.inputs.shape[0], run.tokens, device=run.inputs.device)
    else:
        check_query_mask(query_mask, run.inputs)
        if run.visible is not None:  # one row per explained token, each seeing the tokens up to it
            query_mask = spread(query_mask.to(run.visible), run.visible.shape[0] // query_mask.shape[0]) * run.visible
            if not bool(query_mask.sum(1).all()):
                raise ValueError("the query mask selects no query row up to one of the explained positions")
    return query_mask.to(run.inputs.device, torch.float32)


def spread(tensor: Tensor, times: int) -> Tensor:
    """``(batch, ...) -> (batch * times, ...)``, each example repeated ``times`` times in a row
    (a view for one example)."""
    if times == 1:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(times, *tensor.shape[1:])
    return tensor.repeat_interleave(times, 0)


def per_target(backward: Callable[[Tensor, bool], Sequence[Tensor]], scores: Tensor) -> list[Tensor]:
    """``backward(scores, retain_graph=False)`` for ``(batch,)`` scores. For the ``(batch, n)``
    scores of a :class:`~captum_attcat.NextTokens` target, one backward per explained token on
    the graph of the one forward, the results stacked as ``(batch * n, ...)``, example-major."""
    if scores.dim() == 1:
        return list(backward(scores, False))
    n = scores.shape[1]
    results = [backward(scores[:, t], t < n - 1) for t in range(n)]
    return [torch.stack(parts, 1).flatten(0, 1) for parts in zip(*results)]


def explained_scores(output: Tensor, target: TargetType) -> Tensor:
    """The ``(batch,)`` scores that ``target`` selects from ``output`` (checked first); an
    :class:`~captum_attcat.AnswerSpan` selects the sum of its start and end logits, a
    :class:`~captum_attcat.NextTokens` target ``(batch, n)`` scores."""
    if isinstance(target, (AnswerSpan, NextTokens)):  # (batch,) and (batch, n)
        return target.select(output)
    check_target(target, output)
    scores = _select_targets(output, target)
    if scores.dim() != 1:
        raise ValueError(
            f"the explained scores have shape {tuple(scores.shape)}; expected one score "
            "per example: pass a `target` that selects a single output"
        )
    return scores


class TransformerAttribution(LayerAttribution, GradientAttribution):
    r"""Base class of the transformer explanation methods.

    Args:
        forward_func: a Hugging Face ``PreTrainedModel`` (blocks and attention are
            found automatically), or any callable returning scores (logits)
            ``(batch, classes)``, in which case ``layers`` and
            ``attention_modules`` must be given.
        layers: the transformer blocks, first to last (Captum's explicit form).
        attention_modules: one attention module per block. A Hugging Face
            attention module is switched to a recording attention implementation
            for the call; any other module must return the attention
            probabilities ``(batch, heads, queries, keys)``, or a tuple whose
            last element they are.
    """

    #: whether the method reads attention probabilities (then ``attention_modules`` are required)
    needs_attention: bool = True
    #: time budget in multiples of the gradient floor (one forward + the gradient of
    #: the explained scores w.r.t. the embedding output), checked by ``benchmarks.speed``;
    #: ``None``: no budget (the harness times such a method in fewer runs, as Integrated Gradients)
    floor_budget: float | None = 1.3
    #: whether the attribution is linear in the explained score (the attribution of a sum of
    #: scores is the sum of their attributions): an AnswerSpan is then explained in one pass
    linear_in_target: bool = False
    #: constructor arguments without which the method is another one (MaskLRP without a head mask
    #: is TransAtt): argument -> what to pass; tools that build methods by name supply them or
    #: leave the method out, saying why (see :func:`~captum_attcat.missing_arguments`)
    required_arguments: dict[str, str] = {}
    #: whether the method explains class targets only (no positions, answer spans or next tokens)
    class_targets_only: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        attribute = cls.__dict__.get("attribute")
        if attribute is not None and not getattr(attribute, "__wrapped_for_spans__", False):
            cls.attribute = accepts_answer_spans(attribute)  # type: ignore[method-assign]

    def __init__(
        self,
        forward_func: Module | Callable[..., Any],
        layers: Sequence[Module] | None = None,
        attention_modules: Sequence[Module] | None = None,
    ) -> None:
        if layers is None and attention_modules is None:
            adapter = TransformerAdapter.from_model(forward_func)
        else:
            adapter = TransformerAdapter.explicit(forward_func, layers, attention_modules)
        if self.needs_attention and not adapter.attention_modules:
            raise ValueError(
                f"{type(self).__name__} reads attention probabilities: pass `attention_modules` "
                "(one per block) with `layers`"
            )
        self.adapter = adapter
        LayerAttribution.__init__(self, adapter.forward, adapter.blocks)
        GradientAttribution.__init__(self, adapter.forward)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return False

    def _prepare(self, inputs: Any, additional_forward_args: Any) -> tuple[Tensor, tuple, Tensor | None]:
        check_gradients_possible()
        table = self.adapter.input_embeddings
        if self.adapter.reads_pixels:
            parameter = next(iter(self.adapter.root.parameters()), None)  # type: ignore[union-attr]
            inputs = check_pixel_values(inputs, getattr(self.adapter.config, "num_channels", None),
                                        None if parameter is None else parameter.dtype)
        else:
            inputs = check_token_inputs(inputs, self.adapter.vocab_size, self.adapter.max_length,
                                        hidden_size=None if table is None else table.shape[1],
                                        dtype=None if table is None else table.dtype)
        args = _format_additional_forward_args(additional_forward_args) or ()
        return inputs, args, attention_mask_of(inputs, args)

    def _row(self, matrix: Tensor, token_mask: Tensor, target: TargetType, keep_cls: bool = False) -> Tensor:
        """The row of ``(batch, n, n)`` that explains ``target``: the explained position for a
        position target (question answering), else :func:`~captum_attcat._core.maps.cls_row`'s."""
        return cls_row(matrix, token_mask, keep_cls=keep_cls, causal=self.adapter.causal,
                       rows=target_positions(target, matrix.shape[0], matrix.device))

    def _attention_pass(self, inputs: Any, target: TargetType, additional_forward_args: Any) -> GradientPass:
        """One forward pass reading only the attention probabilities (no gradients,
        ``scores`` empty); ``target`` is optional and only checked when given."""
        inputs, args, attention_mask = self._prepare(inputs, additional_forward_args)
        output, attentions = attention_maps(self.adapter, inputs, *args)
        check_aligned([], attentions, inputs.shape[0])
        if isinstance(target, NextTokens):  # one row per explained token: what it sees
            target.select(logits_of(output))
            visible = target.visible(attention_mask, attentions[0].shape[-1], inputs.device)
            return GradientPass(inputs, visible, scores=inputs.new_empty(0, dtype=torch.float32),
                                attentions=[spread(a, len(target)) for a in attentions],
                                tokens=attentions[0].shape[-1], visible=visible)
        if target is not None:
            check_target(target, logits_of(output))
        return GradientPass(inputs, attention_mask, scores=inputs.new_empty(0, dtype=torch.float32),
                            attentions=attentions, tokens=attentions[0].shape[-1])

    def _gradient_pass(
        self,
        inputs: Any,
        target: TargetType,
        additional_forward_args: Any,
        block_inputs: bool | None = True,
        attention: bool = False,
        attention_grads: bool = False,
    ) -> GradientPass:
        """One forward and one backward pass.

        ``block_inputs``: record block inputs (True), outputs (False) or no
        hidden states (None). ``attention``: record attention probabilities;
        ``attention_grads``: also their gradients. Hugging Face attention always
        runs through the library's eager implementation, so every method sees
        the same numbers whatever implementation the model was loaded with.
        """
        inputs, args, attention_mask = self._prepare(inputs, additional_forward_args)
        adapter = self.adapter
        attention = attention or attention_grads
        recorder = AttentionRecorder(adapter.attention_modules, keep_graph=attention_grads)
        handles: list = []
        # without hidden states to record, the first block's input is still recorded: the
        # gradient starts there even when nothing upstream (a frozen encoder) requires grad
        states = BlockStates(adapter.blocks if block_inputs is not None else adapter.blocks[:1],
                             inputs=block_inputs is not False)
        with adapter.lock():
            try:
                with explanation_mode(adapter.roots, adapter.attention_configs), torch.enable_grad(), \
                        use_attention_handler(recorder):
                    if attention:
                        handles = recorder.hook_outputs(adapter.hooked_attention)
                    with states:
                        output = adapter.forward(inputs, *args)
                    check_aligned(states.captured(), recorder.captured() if attention else [], inputs.shape[0])
                    scores = explained_scores(output, target)
                    wrt = states.captured() if block_inputs is not None else []
                    if attention_grads:
                        wrt += recorder.captured()
                    grads = per_target(lambda s, retain: torch.autograd.grad(s.sum(), wrt, retain_graph=retain),
                                       scores) if wrt else []
            finally:
                for handle in handles:
                    handle.remove()
                states.remove()
        kept = states.tensors if block_inputs is not None else []
        n_states = len(kept)
        tokens = states.tensors[0].shape[1]  # type: ignore[union-attr]
        times, visible = 1, None
        if isinstance(target, NextTokens):  # one row per explained token, sharing the forward's values
            times, visible = len(target), target.visible(attention_mask, tokens, inputs.device)
        return GradientPass(
            inputs=inputs,
            attention_mask=attention_mask if visible is None else visible,
            scores=scores.detach().flatten(),
            states=[spread(s.detach(), times) for s in kept],  # type: ignore[union-attr]
            state_grads=grads[:n_states],
            attentions=[spread(a.detach(), times) for a in recorder.captured()] if attention else [],
            attention_grads=grads[n_states:],
            tokens=tokens,
            visible=visible,
        )

