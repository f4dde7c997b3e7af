"""Targets that explain one position's score: answer spans of question-answering models.

Models that score every token (question answering, token classification, language models) give
scores ``(batch, seq, n)``: :func:`~captum_attcat.logits_of` stacks a question-answering model's
start and end logits as ``(batch, seq, 2)``. A Captum tuple target ``(position, index)`` selects
one of them, as for any multi-dimensional output: ``(s, 0)`` is the start logit at token ``s``,
``(e, 1)`` the end logit at token ``e``; a list of such pairs gives one per example.

:class:`AnswerSpan` explains an answer the way both source papers do: the attribution of the
start logit at the span's first token plus the attribution of the end logit at its last token
(``part="start"`` or ``"end"`` for either alone). Every method of the library accepts it as
``target``; :func:`span_attribution` gives the same sum for any Captum attribution method.

Methods that read one query row (raw attention, rollout, TransAtt, ...) read the row of the
explained position for a position target: the start (end) token for the start (end) logit.

Example::

    >>> from captum_attcat import AttCAT, AnswerSpan
    >>> span = AnswerSpan(start=[14, 9], end=[15, 12])            # one gold span per example
    >>> scores = AttCAT(qa_model).attribute(ids, target=span, additional_forward_args=(mask, types))
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = ["AnswerSpan", "NextTokens", "span_attribution", "target_positions", "accepts_answer_spans"]

_PARTS = ("both", "start", "end")
_SCORES = ("log_prob", "logit")


def _positions(value: Any, name: str) -> Tensor:
    if isinstance(value, bool) or (isinstance(value, Tensor) and (value.is_floating_point() or value.dtype == torch.bool)):
        raise TypeError(f"AnswerSpan `{name}` must be token positions (an int, a list of ints or an integer "
                        f"tensor); got {value!r}"[:200])
    if isinstance(value, int):
        return torch.tensor([value])
    if isinstance(value, Tensor):
        if value.dim() > 1:
            raise ValueError(f"AnswerSpan `{name}` must be 1-D (one position per example); got shape "
                             f"{tuple(value.shape)}")
        return value.detach().to("cpu", torch.long).flatten()
    if isinstance(value, Sequence) and not isinstance(value, str) and value and \
            all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return torch.tensor(list(value))
    raise TypeError(f"AnswerSpan `{name}` must be token positions (an int, a list of ints or an integer tensor); "
                    f"got {type(value).__name__} {value!r}"[:200])


class AnswerSpan:
    r"""The answer span of a question-answering model as an attribution target.

    Args:
        start: the first token of the answer: an int (every example) or one per example.
        end: the last token of the answer (inclusive), same form.
        part: ``"both"`` (default: start plus end attribution, as both papers), ``"start"``
            or ``"end"``.

    Positions index the tokenized input (question and context together), so they must be real
    tokens (not padding) and ``start <= end``; both are checked against the inputs.

    Example::

        >>> span = AnswerSpan(torch.tensor([14, 9]), torch.tensor([15, 12]))
        >>> span.pairs("start")
        [(14, 0), (9, 0)]
    """

    def __init__(self, start: Any, end: Any, part: str = "both") -> None:
        self.start = _positions(start, "start")
        self.end = _positions(end, "end")
        if part not in _PARTS:
            raise ValueError(f"AnswerSpan `part` must be one of {_PARTS}; got {part!r}")
        self.part = part
        if len(self.start) != len(self.end):
            raise ValueError(f"AnswerSpan has {len(self.start)} start but {len(self.end)} end positions")
        bad = (self.start > self.end).nonzero()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"AnswerSpan example {i}: start {int(self.start[i])} is after end {int(self.end[i])}")

    def __repr__(self) -> str:
        return f"AnswerSpan(start={self.start.tolist()}, end={self.end.tolist()}, part={self.part!r})"

    def __len__(self) -> int:
        return len(self.start)

    def for_batch(self, inputs: Tensor, attention_mask: Tensor | None = None) -> "AnswerSpan":
        """This span with one position per example of ``inputs`` (an int given for all is
        repeated), checked to be inside the sequence and on real tokens."""
        batch, seq = inputs.shape[:2]
        start, end = self.start, self.end
        if len(start) == 1 and batch != 1:
            start, end = start.expand(batch), end.expand(batch)
        if len(start) != batch:
            raise ValueError(f"AnswerSpan has {len(start)} spans for a batch of {batch} examples")
        for name, pos in (("start", start), ("end", end)):
            out = ((pos < 0) | (pos >= seq)).nonzero()
            if len(out):
                i = int(out[0])
                raise ValueError(f"AnswerSpan {name} {int(pos[i])} (example {i}) is outside the sequence of "
                                 f"{seq} tokens")
            if attention_mask is not None:
                real = attention_mask.detach().to("cpu")[torch.arange(batch), pos] != 0
                if not bool(real.all()):
                    i = int((~real).nonzero()[0])
                    raise ValueError(f"AnswerSpan {name} {int(pos[i])} (example {i}) is a padding position")
        return AnswerSpan(start.clone(), end.clone(), self.part)

    def pairs(self, part: str) -> list[tuple[int, int]]:
        """Captum tuple targets ``(position, 0)`` for ``"start"``, ``(position, 1)`` for ``"end"``."""
        positions, index = (self.start, 0) if part == "start" else (self.end, 1)
        return [(int(p), index) for p in positions]

    def select(self, scores: Tensor) -> Tensor:
        """``(batch,)``: start logit at ``start`` plus end logit at ``end`` (or one of them) from
        the ``(batch, seq, 2)`` scores of a question-answering model."""
        if scores.dim() != 3 or scores.shape[-1] != 2:
            raise ValueError(f"AnswerSpan explains a question-answering model, whose scores are (batch, seq, 2) "
                             f"(start and end logits); the model's scores are {tuple(scores.shape)}")
        rows = torch.arange(scores.shape[0], device=scores.device)
        start, end = self.start.to(scores.device), self.end.to(scores.device)
        if self.part == "start":
            return scores[rows, start, 0]
        if self.part == "end":
            return scores[rows, end, 1]
        return scores[rows, start, 0] + scores[rows, end, 1]


class NextTokens:
    r"""Several next-token scores of a causal language model as one attribution target.

    Row ``t`` explains token ``token_ids[t]`` predicted at ``positions[t]`` (the logits of a causal
    LM at position ``p`` score the token at ``p + 1``) as if the sequence ended at ``positions[t]``:
    a causal model's scores there depend on no later token, so every row shares one forward
    pass of the whole sequence, and each costs one backward pass. Later tokens are hidden from
    the row's explanation (they score 0 and count neither as query rows nor as real tokens),
    so row ``t`` equals the explanation of the sequence cut after ``positions[t]``.

    Args:
        positions: the explained positions, ``(n,)`` (every example) or ``(batch, n)``.
        token_ids: the explained token at each position, same shape.
        score: ``"log_prob"`` (default): the token's log-softmax probability, what Captum's
            ``LLMGradientAttribution`` explains; ``"logit"``: its pre-softmax logit.

    Methods given this target return ``(batch, n, seq)`` (``(batch, n, blocks, seq)`` with
    ``return_layer_scores=True``).

    Example::

        >>> target = NextTokens(positions=[4, 5, 6], token_ids=ids[0, 5:8])   # tokens 5..7 given 0..4, 0..5, 0..6
        >>> AttCAT(lm).attribute(ids, target=target).shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, positions: Any, token_ids: Any, score: str = "log_prob") -> None:
        self.positions = _index_grid(positions, "positions")
        self.token_ids = _index_grid(token_ids, "token_ids")
        if self.positions.shape != self.token_ids.shape:
            raise ValueError(f"NextTokens `positions` {tuple(self.positions.shape)} and `token_ids` "
                             f"{tuple(self.token_ids.shape)} differ in shape")
        if score not in _SCORES:
            raise ValueError(f"NextTokens `score` must be one of {_SCORES}; got {score!r}")
        self.score = score

    def __repr__(self) -> str:
        return f"NextTokens(positions={self.positions.tolist()}, token_ids={self.token_ids.tolist()}, score={self.score!r})"

    def __len__(self) -> int:
        """The number of explained tokens per example."""
        return self.positions.shape[-1]

    def for_batch(self, inputs: Tensor, attention_mask: Tensor | None = None) -> "NextTokens":
        """This target with one row of positions per example of ``inputs`` (a 1-D one is
        repeated), checked to be inside the sequence and on real tokens."""
        batch, seq = inputs.shape[:2]
        positions, token_ids = self.positions, self.token_ids
        if positions.dim() == 1:
            positions, token_ids = positions.expand(batch, -1), token_ids.expand(batch, -1)
        if positions.shape[0] != batch:
            raise ValueError(f"NextTokens has {positions.shape[0]} rows of positions for a batch of {batch} examples")
        outside = ((positions < 0) | (positions >= seq)).nonzero()
        if len(outside):
            i, t = (int(v) for v in outside[0])
            raise ValueError(f"NextTokens position {int(positions[i, t])} (example {i}) is outside the sequence "
                             f"of {seq} tokens")
        if attention_mask is not None:
            real = attention_mask.detach().to("cpu").gather(1, positions) != 0
            if not bool(real.all()):
                i, t = (int(v) for v in (~real).nonzero()[0])
                raise ValueError(f"NextTokens position {int(positions[i, t])} (example {i}) is a padding position")
        return NextTokens(positions.clone(), token_ids.clone(), self.score)

    def visible(self, attention_mask: Tensor | None, seq: int, device: Any = None) -> Tensor:
        """``(batch * n, seq)`` float, example-major: the real tokens each row sees (those up to
        its position)."""
        batch, n = self.positions.shape
        mask = torch.ones(batch, seq, device=device) if attention_mask is None else \
            attention_mask.to(device, torch.float32)
        upto = torch.arange(seq, device=device) <= self.positions.to(device)[..., None]  # (batch, n, seq)
        return (mask[:, None] * upto).flatten(0, 1)

    def select(self, scores: Tensor) -> Tensor:
        """``(batch, n)``: the explained score of every row, from a causal LM's ``(batch, seq, vocab)``
        logits (log-softmax over the vocabulary first for ``score="log_prob"``)."""
        if scores.dim() != 3:
            raise ValueError(f"NextTokens explains a causal language model, whose scores are (batch, seq, vocab); "
                             f"the model's scores are {tuple(scores.shape)}")
        batch, seq, vocab = scores.shape
        target = self.for_batch(scores[..., 0]) if self.positions.dim() == 1 else self
        if target.positions.shape[0] != batch:
            raise ValueError(f"NextTokens has {target.positions.shape[0]} rows of positions for a batch of {batch}")
        bad = ((target.token_ids < 0) | (target.token_ids >= vocab)).nonzero()
        if len(bad):
            raise ValueError(f"NextTokens token id {int(target.token_ids[tuple(bad[0])])} is out of range: the model "
                             f"has {vocab} scores per token")
        rows = torch.arange(batch, device=scores.device)[:, None]
        logits = scores[rows, target.positions.to(scores.device)]  # (batch, n, vocab)
        if self.score == "log_prob":
            logits = torch.log_softmax(logits, dim=-1)
        return logits.gather(-1, target.token_ids.to(scores.device)[..., None])[..., 0]


def _ints(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and bool(value) and \
        all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _index_grid(value: Any, name: str) -> Tensor:
    """Integer indices as a ``(n,)`` or ``(batch, n)`` int64 CPU tensor."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"NextTokens `{name}` must be integers; got a {value.dtype} tensor")
        value = value.detach().to("cpu", torch.long)
    elif _ints(value) or (isinstance(value, Sequence) and not isinstance(value, str) and all(_ints(v) for v in value)):
        value = torch.tensor([list(v) for v in value] if not _ints(value) else list(value))
    else:
        raise TypeError(f"NextTokens `{name}` must be integers (a list of ints, one list per example, or an integer "
                        f"tensor); got {type(value).__name__} {value!r}"[:200])
    if value.dim() not in (1, 2) or value.shape[-1] == 0:
        raise ValueError(f"NextTokens `{name}` must be (n,) or (batch, n) with n > 0; got shape {tuple(value.shape)}")
    return value


def _as_tuple(additional_forward_args: Any) -> tuple | None:
    if additional_forward_args is None or isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _attention_mask(args: tuple | None) -> Tensor | None:
    """The attention mask, by the Hugging Face convention the first additional forward argument."""
    return args[0] if args and isinstance(args[0], Tensor) else None


def _repeat_batch(value: Any, batch: int, times: int) -> Any:
    """``value`` stacked ``times`` along the batch dimension if it has one, else as it is."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    return value


def span_attribution(
    attribute: Callable[..., Tensor],
    inputs: Tensor,
    span: AnswerSpan,
    additional_forward_args: Any = None,
    **kwargs: Any,
) -> Tensor:
    r"""``attribute(inputs, target=(start, 0)) + attribute(inputs, target=(end, 1))`` per example
    (one of them for ``span.part="start"/"end"``), as one call on the batch stacked twice.

    Works with any Captum attribution method whose forward function returns the
    ``(batch, seq, 2)`` scores of :func:`~captum_attcat.logits_of`. Tensors in
    ``additional_forward_args`` and ``kwargs`` whose first dimension is the batch are stacked
    with the inputs.

    Example::

        >>> ig = IntegratedGradients(lambda e, m: logits_of(qa_model(inputs_embeds=e, attention_mask=m)))
        >>> attr = span_attribution(ig.attribute, embeds, AnswerSpan(14, 15), (mask,))  # doctest: +SKIP
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"span_attribution explains one input tensor (token ids or embeddings); got "
                        f"{type(inputs).__name__}")
    args = _as_tuple(additional_forward_args)
    span = span.for_batch(inputs, _attention_mask(args))
    if span.part != "both":
        return attribute(inputs, target=span.pairs(span.part), additional_forward_args=args, **kwargs)
    batch = inputs.shape[0]
    doubled = _repeat_batch(inputs, batch, 2)
    args2 = None if args is None else tuple(_repeat_batch(a, batch, 2) for a in args)
    kwargs2 = {k: _repeat_batch(v, batch, 2) for k, v in kwargs.items()}
    out = attribute(doubled, target=span.pairs("start") + span.pairs("end"), additional_forward_args=args2, **kwargs2)
    return out[:batch] + out[batch:]


def target_positions(target: Any, batch: int, device: Any = None) -> Tensor | None:
    """The explained token of each example for a position target (a ``(position, index)`` tuple
    or a list of them; a :class:`NextTokens` target's positions, flattened), ``None`` for any
    other target.

    Example::

        >>> target_positions([(14, 0), (9, 0)], 2)
        tensor([14,  9])
    """
    if isinstance(target, NextTokens):
        return target.positions.flatten().to(device)
    if isinstance(target, tuple) and target and isinstance(target[0], int):
        return torch.full((batch,), int(target[0]), dtype=torch.long, device=device)
    if isinstance(target, list) and target and all(isinstance(t, tuple) and t for t in target):
        return torch.tensor([int(t[0]) for t in target], dtype=torch.long, device=device)
    return None


#: the kinds of target a method may accept (see :func:`target_kind`)
TARGET_KINDS = frozenset({"class", "position", "answer_span", "next_tokens"})


def target_kind(target: Any) -> str:
    """What ``target`` explains: ``"next_tokens"`` (:class:`NextTokens`), ``"answer_span"``
    (:class:`AnswerSpan`), ``"position"`` (``(position, index)`` pairs of per-token outputs) or
    ``"class"`` (an index, one per example, or none); methods list theirs in ``accepted_targets``.

    Example::

        >>> target_kind(1), target_kind([(14, 0), (9, 0)]), target_kind(AnswerSpan([3], [5]))
        ('class', 'position', 'answer_span')
    """
    if isinstance(target, NextTokens):
        return "next_tokens"
    if isinstance(target, AnswerSpan):
        return "answer_span"
    return "position" if target_positions(target, 1) is not None else "class"


def accepts_answer_spans(attribute: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorate a method's ``attribute(self, inputs, target, additional_forward_args, **kwargs)``
    so that a :class:`NextTokens` target gives ``(batch, n, ...)`` and an :class:`AnswerSpan`
    target is explained: in one pass when the method is linear in the explained score (class attribute ``linear_in_target``: the sum of two attributions
    is the attribution of the summed scores), else through :func:`span_attribution`."""

    @functools.wraps(attribute)
    def wrapper(self: Any, inputs: Any, target: Any = None, additional_forward_args: Any = None, **kwargs: Any
                ) -> Tensor:
        kind = target_kind(target)
        if kind not in getattr(self, "accepted_targets", TARGET_KINDS):
            raise ValueError(f"{type(self).__name__} explains {' or '.join(sorted(self.accepted_targets))} targets "
                             f"only; got {'an' if kind[0] in 'aeiou' else 'a'} {kind.replace('_', ' ')} target ({target!r})")
        if not isinstance(target, (AnswerSpan, NextTokens)):
            return attribute(self, inputs, target, additional_forward_args, **kwargs)
        from ._utils.validation import check_token_inputs

        inputs = check_token_inputs(inputs)
        if isinstance(target, NextTokens):  # one row per explained token, sharing one forward
            target = target.for_batch(inputs, _attention_mask(_as_tuple(additional_forward_args)))
            scores = attribute(self, inputs, target, additional_forward_args, **kwargs)
            return scores.view(inputs.shape[0], len(target), *scores.shape[1:])
        if target.part == "both" and getattr(self, "linear_in_target", False):
            span = target.for_batch(inputs, _attention_mask(_as_tuple(additional_forward_args)))
            return attribute(self, inputs, span, additional_forward_args, **kwargs)
        return span_attribution(functools.partial(attribute, self), inputs, target, additional_forward_args,
                                **kwargs)

    wrapper.__wrapped_for_spans__ = True  # type: ignore[attr-defined]
    return wrapper
