"""The base of every explanation method: constructor forms, validation, one gradient pass.

A method is built either from a Hugging Face model, whose blocks and attention
are found automatically, or in Captum's explicit form from any forward function
with its blocks and attention modules. :meth:`TransformerAttribution.record_gradients`
runs one forward pass that records what the method needs (block hidden states,
attention probabilities) and one backward pass for the explained scores, with
the model in eval mode and restored afterwards, and returns a :class:`Recording`;
:meth:`~TransformerAttribution.record_forward` records without gradients, and
:meth:`LRPAttribution.record_relevance <captum_attcat.LRPAttribution.record_relevance>`
records LRP relevance. :class:`AttentionAttribution` and
:class:`AttentionGradientAttribution` are the bases of methods reading attention
only, and attention with its gradients.

Example::

    >>> @register_method("MyCAT")
    ... class MyCAT(TransformerAttribution):
    ...     needs_attention = False
    ...     def attribute(self, inputs, target=None, additional_forward_args=None):
    ...         run = self.record_gradients(inputs, target, additional_forward_args)
    ...         return sum((g * h).sum(-1) for g, h in zip(run.state_grads, run.states))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from captum._utils.common import _format_additional_forward_args, _select_targets
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from torch import Tensor
from torch.nn import Module

from ._utils.attention import AttentionRecorder, use_attention_handler
from ._utils.forward import attention_maps
from ._utils.hooks import BlockStates, Tap
from ._utils.state import explanation_mode
from ._utils.validation import (
    attention_mask_of,
    check_gradients_possible,
    check_pixel_values,
    check_target,
    check_token_inputs,
    check_token_mask,
)
from .models.adapters import TransformerAdapter, logits_of
from .targets import TARGET_KINDS, AnswerSpan, NextTokens, accepts_answer_spans, target_positions
from .maps import cls_row, token_mask_of


@dataclass
class Recording:
    """What one pass recorded, per block ``l`` (first to last); the one record every method reads.

    Attributes:
        inputs: the validated inputs.
        attention_mask: ``(batch, seq)`` float mask, or ``None`` if none was passed.
        scores: explained scores ``(batch,)`` (detached; empty for a pass without a target).
        states: block hidden states ``(batch, seq, hidden)`` (detached).
        state_grads: gradients of the summed explained scores w.r.t. ``states``.
        state_relevance: LRP relevance at ``states`` (the relevance pass records the first block's input).
        attentions: attention probabilities ``(batch, heads, queries, keys)`` of ``blocks`` (detached).
        attention_grads: gradients w.r.t. ``attentions``, if asked for.
        attention_relevance: LRP relevance at ``attentions`` (what ``A V`` hands to ``A``).
        blocks: the blocks the attention lists refer to (``None``: every block).
        output: the model's scores (logits), for a pass without gradients.
        tokens: the length of the blocks' sequence (the inputs' for text; [CLS] + patches for images).
        visible: for a :class:`~captum_attcat.NextTokens` target, ``(batch * n, seq)``: what each
            explained token sees (the per-block lists and ``attention_mask`` then hold one row per
            explained token, example-major; ``inputs`` stay ``(batch, ...)``), else ``None``.
        recorder: the attention handler of the pass (what it kept, e.g. MaskLRP's masked relevance).

    Example::

        >>> run = AttCAT(model).record_gradients(input_ids, target=1, attention=True)
        >>> run.states[0].shape, run.attentions[0].shape, run.token_mask.shape
    """

    inputs: Tensor
    attention_mask: Tensor | None
    scores: Tensor
    states: list[Tensor] = field(default_factory=list)
    state_grads: list[Tensor] = field(default_factory=list)
    state_relevance: list[Tensor] = field(default_factory=list)
    attentions: list[Tensor] = field(default_factory=list)
    attention_grads: list[Tensor] = field(default_factory=list)
    attention_relevance: list[Tensor] = field(default_factory=list)
    blocks: list[int] | None = None
    output: Tensor | None = None
    tokens: int = 0
    visible: Tensor | None = None
    recorder: Any = None

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = self.inputs.shape[1]

    @property
    def token_mask(self) -> Tensor:
        """Float ``(batch, seq)``: 1 where a token is real (or, for next tokens, visible), else 0."""
        return token_mask_of(self.attention_mask, self.inputs, self.tokens)

    @property
    def input_relevance(self) -> Tensor | None:
        """The relevance at the first block's input ``(batch, seq, hidden)``, if recorded."""
        return self.state_relevance[0] if self.state_relevance else None


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


def query_rows(run: Recording, query_mask: Tensor | None = None) -> Tensor:
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
    #: the kinds of target the method explains (:func:`~captum_attcat.target_kind`); another is refused by name
    accepted_targets: frozenset[str] = TARGET_KINDS

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

    def prepare_inputs(self, inputs: Any, additional_forward_args: Any = None) -> tuple[Tensor, tuple, Tensor | None]:
        """``(inputs, additional_forward_args, attention_mask)`` checked against the model (token ids in its
        vocabulary, pixel values with its channels, ...); raises naming what is wrong."""
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

    def explained_row(self, matrix: Tensor, token_mask: Tensor, target: TargetType, keep_cls: bool = False) -> Tensor:
        """The row of ``(batch, n, n)`` that explains ``target``: the explained position for a
        position target (question answering), else :func:`~captum_attcat._core.maps.cls_row`'s."""
        return cls_row(matrix, token_mask, keep_cls=keep_cls, causal=self.adapter.causal,
                       rows=target_positions(target, matrix.shape[0], matrix.device))

    def record_forward(self, inputs: Any, target: TargetType = None, additional_forward_args: Any = None,
                       states: bool = False, attention: bool = True) -> Recording:
        """One forward pass without gradients, the model in eval mode and restored afterwards: every
        block's attention probabilities (unless ``attention=False``), its input hidden states if
        ``states``, and the model's scores (``output``). ``target`` is optional and only checked (a
        :class:`~captum_attcat.NextTokens` target gives one row per explained token).

        Example::

            >>> run = explainer.record_forward(input_ids, additional_forward_args=(mask,), states=True)
            >>> run.output.softmax(-1), run.states[0], run.attentions[-1]
        """
        inputs, args, attention_mask = self.prepare_inputs(inputs, additional_forward_args)
        recorded = BlockStates(self.adapter.blocks if states else [])
        output, attentions = attention_maps(self.adapter, inputs, *args, states=recorded,
                                            attention=attention and bool(self.adapter.attention_modules))
        output = logits_of(output)
        kept = [s.detach() for s in recorded.captured()]
        check_aligned(kept, attentions, inputs.shape[0])
        tokens = attentions[0].shape[-1] if attentions else kept[0].shape[1] if kept else inputs.shape[1]
        if isinstance(target, NextTokens):  # one row per explained token: what it sees
            target.select(output)
            visible = target.visible(attention_mask, tokens, inputs.device)
            return Recording(inputs, visible, scores=inputs.new_empty(0, dtype=torch.float32),
                             states=[spread(s, len(target)) for s in kept],
                             attentions=[spread(a, len(target)) for a in attentions],
                             output=output, tokens=tokens, visible=visible)
        if target is not None:
            check_target(target, output)
        return Recording(inputs, attention_mask, scores=inputs.new_empty(0, dtype=torch.float32), states=kept,
                         attentions=attentions, output=output, tokens=tokens)

    def record_gradients(
        self,
        inputs: Any,
        target: TargetType = None,
        additional_forward_args: Any = None,
        block_inputs: bool | None = True,
        attention: bool = False,
        attention_grads: bool = False,
    ) -> Recording:
        """One forward and one backward pass of the explained scores.

        ``block_inputs``: record block inputs (True), outputs (False) or no hidden states (None)
        with their gradients. ``attention``: record attention probabilities; ``attention_grads``:
        also their gradients. Hugging Face attention always runs through the library's eager
        implementation, so every method sees the same numbers whatever implementation the model
        was loaded with.

        The gradients of block states come from Captum's ``compute_layer_gradients_and_eval`` on
        :class:`Tap` modules the states pass through (a block's hidden states arrive among ``None``
        masks, caches and keywords, which Captum's layer hooks do not accept). Two passes take their
        own backward instead: for a :class:`~captum_attcat.NextTokens` target, as Captum's utility
        takes one backward of one score per example and such a target needs one per explained token
        (on the graph of the one forward); and with attention gradients, as the utility keeps a
        concatenated copy of every recorded tensor and of its gradient, which for attention
        probabilities (batch x heads x seq x seq per block) adds about 1 GB at 8 x 512 tokens on
        MiniLM (the attention-gradient methods' peak memory 2.6x -> 4.0x the floor's).

        Example::

            >>> run = explainer.record_gradients(input_ids, target=1, additional_forward_args=(mask,))
            >>> sum((g * h).sum(-1) for g, h in zip(run.state_grads, run.states))  # CAT
        """
        inputs, args, attention_mask = self.prepare_inputs(inputs, additional_forward_args)
        adapter = self.adapter
        attention = attention or attention_grads
        per_token = isinstance(target, NextTokens)
        # without hidden states to record, the first block's input still passes a tap: the gradient
        # starts there even when nothing upstream (a frozen encoder) requires grad
        recorded = adapter.blocks if block_inputs is not None else adapter.blocks[:1]
        own = per_token or attention_grads or block_inputs is None  # a backward of its own (see above)
        state_taps = [Tap(clone=own) for _ in recorded]  # Captum's hook hands the block a clone otherwise
        recorder = AttentionRecorder(adapter.attention_modules, keep_graph=attention_grads)
        states = BlockStates(recorded, inputs=block_inputs is not False, taps=state_taps)
        wanted = state_taps if block_inputs is not None else []
        handles: list = []
        explained: list[Tensor] = []

        def scores_of(*call: Any) -> Tensor:
            output = adapter.forward(*call)
            check_aligned(states.captured(), recorder.captured() if attention else [], inputs.shape[0])
            explained.append(explained_scores(output, target))
            return explained[-1]

        with adapter.lock():
            try:
                with explanation_mode(adapter.roots, adapter.attention_configs), torch.enable_grad(), \
                        use_attention_handler(recorder):
                    if attention:
                        handles = recorder.hook_outputs(adapter.hooked_attention)
                    with states:
                        if own:
                            scores = scores_of(inputs, *args)
                            taken = [tap.value for tap in wanted] + (recorder.captured() if attention_grads else [])
                            grads = per_target(lambda s, retain: torch.autograd.grad(s.sum(), taken, retain_graph=retain),
                                               scores) if taken else []
                        else:  # Captum's utility, on one device: the adapter runs a DataParallel's module
                            grads = [g for (g,) in compute_layer_gradients_and_eval(
                                scores_of, wanted, inputs, None, args, attribute_to_layer_input=False)[0]]
                            scores = explained[-1]
            finally:
                for handle in handles:
                    handle.remove()
                states.remove()
        n_states = len(wanted)
        tokens = states.tensors[0].shape[1]  # type: ignore[union-attr]
        times, visible = 1, None
        if per_token:  # one row per explained token, sharing the forward's values
            times, visible = len(target), target.visible(attention_mask, tokens, inputs.device)
        return Recording(
            inputs=inputs,
            attention_mask=attention_mask if visible is None else visible,
            scores=scores.detach().flatten(),
            states=[spread(s.detach(), times) for s in states.tensors] if block_inputs is not None else [],  # type: ignore[union-attr]
            state_grads=grads[:n_states],
            attentions=[spread(a.detach(), times) for a in recorder.captured()] if attention else [],
            attention_grads=grads[n_states:],
            tokens=tokens,
            visible=visible,
        )


class AttentionAttribution(TransformerAttribution):
    """Base of methods that read attention probabilities only (one forward pass, no gradient):
    :meth:`record` gives a :class:`Recording` of every block's attention.

    Example::

        >>> class LastRow(AttentionAttribution):
        ...     def attribute(self, inputs, target=None, additional_forward_args=None):
        ...         run = self.record(inputs, target, additional_forward_args)
        ...         return self.explained_row(head_mean(run.attentions[-1]), run.token_mask, target)
    """

    def record(self, inputs: Any, target: TargetType = None, additional_forward_args: Any = None) -> Recording:
        """Every block's attention probabilities; ``target`` is only checked."""
        return self.record_forward(inputs, target, additional_forward_args)


class AttentionGradientAttribution(TransformerAttribution):
    """Base of methods that read attention probabilities and their gradients (one forward, one
    backward): :meth:`record` gives a :class:`Recording` with ``attentions`` and ``attention_grads``.

    Example::

        >>> class LastGradient(AttentionGradientAttribution):
        ...     def attribute(self, inputs, target=None, additional_forward_args=None):
        ...         run = self.record(inputs, target, additional_forward_args)
        ...         return head_mean(run.attention_grads[-1]).mean(1) * run.token_mask
    """

    def record(self, inputs: Any, target: TargetType = None, additional_forward_args: Any = None) -> Recording:
        """Every block's attention probabilities and their gradients."""
        return self.record_gradients(inputs, target, additional_forward_args, block_inputs=None, attention_grads=True)
