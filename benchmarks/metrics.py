"""Faithfulness metrics for token attributions: AOPC, LOdds, Kendall-tau confidence, Precision@K.

All functions follow Captum's metric style (``captum.metrics.infidelity``): a forward function,
the inputs, the attributions and the target, returning one value per example.

Inputs are token ids ``(batch, seq)`` with an ``attention_mask`` (1 = real token, 0 = padding).
``forward_func(input_ids, attention_mask, *additional_forward_args)`` returns logits
``(batch, classes)`` (or an object with ``.logits``, as Hugging Face models do). Sentence pairs
give ``token_type_ids`` (segment ids): they are perturbed with the ids (a deleted token takes its
segment id along) and passed to ``forward_func`` right after the attention mask.

What is perturbed and how is one :class:`Perturbation`, shared by :func:`perturbation_curve`,
:func:`aopc`, :func:`log_odds` and :func:`kendall_tau_confidence`; its special-token ids are the
explained model's tokenizer's (``Perturbation.for_tokenizer(tokenizer)``), never assumed.
Tokens are ranked by attribution (highest first; ties broken by position); padding and the
special tokens are never ranked nor removed. For a fraction ``k`` the top ``floor(k * n)`` of
the ``n`` rankable tokens are perturbed:

* ``"delete"``: the tokens are dropped, the rest shifted left, padding appended, mask fixed;
* ``"pad"`` / ``"mask"``: the ids are replaced with the pad / mask token's id
  (the attention mask is left as it was, so the model sees the replacement token).

All perturbed copies of a batch are evaluated together, sorted by length, at most ``batch_size``
copies and ``max_tokens`` tokens per forward pass.

Example::

    >>> from benchmarks.metrics import Perturbation, aopc, log_odds
    >>> fwd = lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits
    >>> how = Perturbation.for_tokenizer(tokenizer)                       # doctest: +SKIP
    >>> aopc(fwd, input_ids, scores, attention_mask=mask, perturbation=how)  # (batch,)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Literal, Sequence, Union

import numpy as np
import torch
from scipy import stats

from .data import token_batches

__all__ = [
    "Perturbation",
    "PerturbationKind",
    "ForwardFunc",
    "PAPER_STEPS",
    "REFERENCE_STEPS",
    "BERT_SPECIAL_IDS",
    "PerturbationCurve",
    "ForwardCache",
    "rankable_mask",
    "removal_counts",
    "perturb",
    "perturbation_curve",
    "aopc",
    "log_odds",
    "kendall_tau",
    "kendall_tau_confidence",
    "precision_at_k",
]

PerturbationKind = Literal["delete", "pad", "mask"]
TargetLike = Union[int, Sequence[int], torch.Tensor, None]
ForwardFunc = Callable[..., Any]

#: k = 0 %, 10 %, ..., 100 % (the papers' text).
PAPER_STEPS: tuple[float, ...] = tuple(i / 10 for i in range(11))
#: k = i / 9 for i = 1..9 (both papers' reference evaluation code).
REFERENCE_STEPS: tuple[float, ...] = tuple(i / 9 for i in range(1, 10))
#: [PAD], [CLS], [SEP] in the BERT uncased vocabulary (all-MiniLM-L6-v2 uses it too): for
#: hand-made BERT inputs; nothing defaults to it (``Perturbation.for_tokenizer`` reads a tokenizer's).
BERT_SPECIAL_IDS: tuple[int, ...] = (0, 101, 102)
_EPS = 1e-9
_KINDS = ("delete", "pad", "mask")


@dataclass(frozen=True)
class Perturbation:
    """What the perturbation metrics may remove and how: one value for :func:`perturbation_curve`,
    :func:`aopc`, :func:`log_odds` and :func:`kendall_tau_confidence`.

    ``special_token_ids``: never ranked nor removed (with padding); the explained model's, from
    :meth:`for_tokenizer`, or given (``()`` for none); there is no default. ``pad_token_id``:
    fills deleted positions (masked out) and replaces tokens for ``kind="pad"``;
    ``mask_token_id``: replaces them for ``kind="mask"``. ``steps``: the fractions ``k``.
    ``kind``: ``"delete"``, ``"pad"`` or ``"mask"``; ``None`` leaves it to each metric (deletion
    for :func:`aopc` and :func:`perturbation_curve`, [PAD] for :func:`log_odds`, the papers'
    choices). ``batch_size`` / ``max_tokens``: at most that many perturbed copies and tokens per
    forward pass.

    Example::

        >>> how = Perturbation(special_token_ids=(0, 101, 102), pad_token_id=0, mask_token_id=103, steps=(0.5,))
        >>> how.with_kind("pad").kind, how.special_token_ids
        ('pad', (0, 101, 102))
        >>> Perturbation.for_tokenizer(roberta_tokenizer).special_token_ids  # doctest: +SKIP
        (0, 1, 2, 50264)
    """

    special_token_ids: tuple[int, ...]
    pad_token_id: int
    mask_token_id: int | None = None
    steps: tuple[float, ...] = PAPER_STEPS
    kind: PerturbationKind | None = None
    batch_size: int = 256
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.special_token_ids is None:
            raise ValueError("Perturbation needs special_token_ids, the explained model's special tokens: "
                             "Perturbation.for_tokenizer(tokenizer) reads them (tokenizer.all_special_ids), "
                             "or pass them (() for none)")
        if self.pad_token_id is None:
            raise ValueError("Perturbation needs pad_token_id (it fills deleted positions and replaces tokens for "
                             "kind='pad'): the tokenizer's pad_token_id, or another id the model reads as padding")
        object.__setattr__(self, "special_token_ids", tuple(dict.fromkeys(int(i) for i in self.special_token_ids)))
        object.__setattr__(self, "pad_token_id", int(self.pad_token_id))
        object.__setattr__(self, "steps", tuple(float(k) for k in self.steps))
        if not self.steps:
            raise ValueError("steps is empty")
        for k in self.steps:
            if not 0.0 <= k <= 1.0:
                raise ValueError(f"steps are fractions in [0, 1], got {k}")
        if self.kind is not None and self.kind not in _KINDS:
            raise ValueError(f"perturbation must be 'delete', 'pad' or 'mask', got {self.kind!r}")
        if self.kind == "mask" and self.mask_token_id is None:
            raise ValueError("perturbation kind 'mask' needs mask_token_id")
        if self.batch_size < 1 or self.max_tokens < 1:
            raise ValueError(f"batch_size and max_tokens must be >= 1, got {self.batch_size}, {self.max_tokens}")

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, **options: Any) -> "Perturbation":
        """The perturbation for ``tokenizer``'s model: its special tokens
        (``tokenizer.all_special_ids``: [CLS]/[SEP]/[PAD]/[MASK] for BERT, ``<s>``/``</s>``/
        ``<pad>``/``<mask>`` for RoBERTa) are never ranked, except the unknown token, which
        stands for a word of the text (unless it is also the pad, bos, eos, cls or sep token,
        as GPT-2's ``<|endoftext|>``); its pad and mask tokens replace removed ones.
        ``options``: the other fields (``steps``, ``kind``, ...), or ``pad_token_id`` for a
        tokenizer without a pad token.

        Example::

            >>> Perturbation.for_tokenizer(bert_tokenizer, steps=(0.5,)).special_token_ids  # doctest: +SKIP
            (0, 101, 102, 103)
        """
        structural = {getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "cls", "sep", "bos", "eos")}
        unk = getattr(tokenizer, "unk_token_id", None)
        special = [i for i in tokenizer.all_special_ids if i != unk or i in structural]
        pad = options.pop("pad_token_id", tokenizer.pad_token_id)
        if pad is None:
            raise ValueError(f"{type(tokenizer).__name__} has no pad token: pass pad_token_id= (the id that fills "
                             "deleted positions and replaces tokens for kind='pad'), e.g. its eos_token_id")
        options.setdefault("mask_token_id", getattr(tokenizer, "mask_token_id", None))
        return cls(special_token_ids=tuple(sorted(set(special))), pad_token_id=pad, **options)

    def with_kind(self, kind: PerturbationKind) -> "Perturbation":
        """The same perturbation with another ``kind``."""
        return replace(self, kind=kind)


def _perturbation(given: Perturbation | None, where: str) -> Perturbation:
    if given is None:
        raise TypeError(f"{where}() needs perturbation=Perturbation.for_tokenizer(tokenizer) (or Perturbation("
                        "special_token_ids=..., pad_token_id=...)): the special tokens are the explained "
                        "model's, never assumed")
    if not isinstance(given, Perturbation):
        raise TypeError(f"{where}(): perturbation must be a Perturbation (its kind is Perturbation(...).kind), "
                        f"got {given!r}")
    return given


# --------------------------------------------------------------------------- helpers


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("forward_func must return logits shaped (batch, classes)")
    return logits


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, attributions: torch.Tensor | None
                  ) -> torch.Tensor:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    if attributions is not None and attributions.shape != input_ids.shape:
        raise ValueError(
            f"attributions shape {tuple(attributions.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    return attention_mask


def _target_tensor(target: TargetLike, batch: int, logits: torch.Tensor | None = None) -> torch.Tensor:
    if target is None:
        if logits is None:
            raise ValueError("target is None and there are no logits to take the prediction from")
        return logits.argmax(-1)
    t = torch.as_tensor(target, dtype=torch.long, device=None if logits is None else logits.device).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"target has {t.numel()} entries for a batch of {batch}")
    if logits is not None and ((t < 0) | (t >= logits.shape[-1])).any():
        raise ValueError(f"target {t.tolist()} outside the model's {logits.shape[-1]} classes")
    return t.clone()


def rankable_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    special_token_ids: Iterable[int],
    exclude_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool ``(batch, seq)``: tokens that may be ranked and removed (not padding, not one of
    ``special_token_ids``, not in ``exclude_mask``).

    Example::

        >>> rankable_mask(torch.tensor([[101, 7, 8, 102, 0]]), None, BERT_SPECIAL_IDS).tolist()
        [[False, True, True, False, False]]
    """
    mask = _check_inputs(input_ids, attention_mask, None).bool()
    if special_token_ids is None:
        raise TypeError("rankable_mask needs special_token_ids (the tokenizer's, or () for none)")
    special = list(special_token_ids)
    if special:
        mask = mask & ~torch.isin(input_ids, torch.as_tensor(special, dtype=input_ids.dtype, device=input_ids.device))
    if exclude_mask is not None:
        mask = mask & ~exclude_mask.bool()
    return mask


def removal_counts(n_rankable: torch.Tensor, steps: Sequence[float]) -> torch.Tensor:
    """``floor(k * n)`` tokens removed for each fraction ``k`` in ``steps``: ``(batch, len(steps))``.

    Example::

        >>> removal_counts(torch.tensor([10, 7]), [0.0, 0.5, 1.0]).tolist()
        [[0, 5, 10], [0, 3, 7]]
    """
    for k in steps:
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"steps are fractions in [0, 1], got {k}")
    ks = torch.tensor([float(k) for k in steps], dtype=torch.float64, device=n_rankable.device)
    return torch.floor(n_rankable.double()[:, None] * ks[None, :] + _EPS).long()


def perturb(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    remove: torch.Tensor,
    kind: PerturbationKind,
    pad_token_id: int,
    mask_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturb the positions where ``remove`` is True; new tensors, the inputs are not changed.

    ``"delete"`` drops those tokens and re-packs each row (real tokens first, in order, then
    ``pad_token_id`` with mask 0); ``"pad"`` / ``"mask"`` replace the ids and keep the mask.

    Example::

        >>> ids, m = perturb(torch.tensor([[101, 5, 6, 102]]), torch.ones(1, 4, dtype=torch.long),
        ...                  torch.tensor([[False, True, False, False]]), "delete", pad_token_id=0)
        >>> ids.tolist(), m.tolist()
        ([[101, 6, 102, 0]], [[1, 1, 1, 0]])
    """
    remove = remove.bool()
    if kind == "delete":
        keep = attention_mask.bool() & ~remove
        return _repack(input_ids, keep, pad_token_id), _repack(keep, keep, False).to(attention_mask.dtype)
    if kind == "pad":
        value = pad_token_id
    elif kind == "mask":
        if mask_token_id is None:
            raise ValueError("perturbation kind 'mask' needs mask_token_id")
        value = mask_token_id
    else:
        raise ValueError(f"perturbation must be 'delete', 'pad' or 'mask', got {kind!r}")
    ids = torch.where(remove, torch.full_like(input_ids, value), input_ids)
    return ids, attention_mask.clone()


def _repack(values: torch.Tensor, keep: torch.Tensor, fill: Any) -> torch.Tensor:
    """Each row's kept positions first, in their order, then ``fill``."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # stable: kept ones in order
    packed = torch.gather(values, 1, order)
    return torch.where(torch.gather(keep, 1, order), packed, torch.full_like(packed, fill))


@dataclass(frozen=True)
class PerturbationCurve:
    """Log-probabilities of the explained class before and after each perturbation step.

    ``log_p0``: ``(batch,)``; ``log_pk``: ``(batch, steps)``; ``counts``: tokens removed per step;
    ``target``: the explained classes; ``steps``: the fractions.
    """

    log_p0: torch.Tensor
    log_pk: torch.Tensor
    counts: torch.Tensor
    target: torch.Tensor
    steps: tuple[float, ...]

    @property
    def p0(self) -> torch.Tensor:
        return self.log_p0.exp()

    @property
    def pk(self) -> torch.Tensor:
        return self.log_pk.exp()


class ForwardCache:
    """Memo of log-probabilities keyed by the exact model input.

    The key is a row's token ids and attention mask up to its last attended position, so two
    perturbations that give the same input (for example two methods that remove the same
    tokens) cost one forward pass. Only valid for one model: make a new cache per model.

    Example::

        >>> cache = ForwardCache()
        >>> aopc(fwd, ids, scores_a, attention_mask=mask, cache=cache)  # doctest: +SKIP
        >>> aopc(fwd, ids, scores_b, attention_mask=mask, cache=cache)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.store)


def _row_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position + 1 (0 for an all-padding row)."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.zeros_like(pos)).max(1).values


@torch.no_grad()
def _log_probs(forward_func: ForwardFunc, ids: torch.Tensor, mask: torch.Tensor, extra: tuple[Any, ...],
               batch_size: int, cache: ForwardCache | None = None, max_tokens: int = 2048,
               types: torch.Tensor | None = None) -> torch.Tensor:
    """Log-softmax of the model output for every row (``types``: token type ids, passed after the mask).

    Rows are sorted by length and each forward batch is cut to its longest row (columns past
    every row's last attended position are padding), which makes deleted copies cheap; a batch
    holds at most ``batch_size`` rows and ``max_tokens`` tokens.
    """
    n = ids.shape[0]
    lengths = _row_lengths(mask)
    per_row = [isinstance(a, torch.Tensor) and a.shape[:1] == (n,) for a in extra]
    use_cache = cache is not None and not extra
    keys: list[bytes] = []
    out: list[torch.Tensor | None] = [None] * n
    todo = list(range(n))
    if use_cache:
        assert cache is not None
        arrays = [t.cpu().numpy() for t in (ids, mask, types) if t is not None]
        keys = [b"|".join(a[i, : int(lengths[i])].tobytes() for a in arrays) for i in range(n)]
        todo = []
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            hit = cache.store.get(k)
            if hit is not None:
                out[i] = hit
                cache.hits += 1
            elif k in first:
                cache.hits += 1
            else:
                first[k] = i
                todo.append(i)
                cache.misses += 1
    todo.sort(key=lambda i: int(lengths[i]))
    for chunk in token_batches([int(lengths[i]) for i in todo], batch_size, max_tokens):
        rows = torch.tensor(todo[chunk], dtype=torch.long, device=ids.device)
        width = max(1, int(lengths[rows].max()))
        extra_b = tuple(a[rows] if pr else a for a, pr in zip(extra, per_row))
        typed = () if types is None else (types[rows, :width],)
        lp = _logits(forward_func(ids[rows, :width], mask[rows, :width], *typed, *extra_b))
        lp = torch.log_softmax(lp.float(), -1)
        for j, i in enumerate(rows.tolist()):
            out[i] = lp[j]
            if use_cache:
                cache.store[keys[i]] = lp[j]  # type: ignore[union-attr]
    if use_cache:
        for i in range(n):
            if out[i] is None:
                out[i] = cache.store[keys[i]]  # type: ignore[union-attr]
    return torch.stack(out, 0)  # type: ignore[arg-type]


@torch.no_grad()
def perturbation_curve(
    forward_func: ForwardFunc,
    input_ids: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    perturbation: Perturbation | None = None,
    attention_mask: torch.Tensor | None = None,
    exclude_mask: torch.Tensor | None = None,
    additional_forward_args: tuple[Any, ...] | None = None,
    token_type_ids: torch.Tensor | None = None,
    cache: ForwardCache | None = None,
) -> PerturbationCurve:
    """Probability of the explained class after removing the top ``k`` of the tokens, for each ``k``.

    ``perturbation`` (required, a :class:`Perturbation`): the special tokens never ranked, the
    steps ``k``, the kind (deletion when ``None``) and the forward batches. ``target=None``
    explains the predicted class. ``exclude_mask``: positions also kept out of the ranking.
    Steps that remove nothing reuse the unperturbed probability; all other copies go through
    ``forward_func`` at most ``batch_size`` (and ``max_tokens`` tokens) at a time (sorted by
    length, each batch cut to its longest row). With a :class:`ForwardCache`, inputs already
    evaluated (by an earlier call on the same model) are not evaluated again.

    Example::

        >>> how = Perturbation.for_tokenizer(tokenizer, steps=[0.5])  # doctest: +SKIP
        >>> curve = perturbation_curve(fwd, ids, scores, attention_mask=mask, perturbation=how)  # doctest: +SKIP
        >>> curve.pk.shape  # doctest: +SKIP
        torch.Size([2, 1])
    """
    how = _perturbation(perturbation, "perturbation_curve")
    mask = _check_inputs(input_ids, attention_mask, attributions)
    extra = tuple(additional_forward_args or ())
    steps, kind = how.steps, how.kind or "delete"
    batch_size, max_tokens = how.batch_size, how.max_tokens
    B, S = input_ids.shape
    if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
        raise ValueError(f"token_type_ids shape {tuple(token_type_ids.shape)} != input_ids shape "
                         f"{tuple(input_ids.shape)}")
    log_p = _log_probs(forward_func, input_ids, mask, extra, batch_size, cache, max_tokens, token_type_ids)
    tgt = _target_tensor(target, B, log_p)
    log_p0 = log_p.gather(1, tgt[:, None])[:, 0]

    rankable = rankable_mask(input_ids, mask, how.special_token_ids, exclude_mask)
    counts = removal_counts(rankable.sum(1), steps)                      # (B, K)
    scores = attributions.detach().float().masked_fill(~rankable, float("-inf"))
    scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(S, device=order.device).expand(B, S).contiguous())  # rank of each position
    rank = rank.masked_fill(~rankable, S + 1)

    log_pk = log_p0[:, None].repeat(1, len(steps))
    # one perturbed copy per distinct (example, count); steps removing the same number of
    # tokens share it, and count 0 is the unperturbed input
    pairs = torch.unique(torch.stack([torch.arange(B, device=counts.device)[:, None].expand_as(counts), counts],
                                     -1).reshape(-1, 2),
                         dim=0)
    pairs = pairs[pairs[:, 1] > 0]
    if pairs.numel():
        ex, cnt = pairs[:, 0], pairs[:, 1]
        remove = rank[ex] < cnt[:, None]
        ids_p, mask_p = perturb(input_ids[ex], mask[ex], remove, kind, how.pad_token_id, how.mask_token_id)
        types_p = None
        if token_type_ids is not None:  # deleted positions leave with their segment ids
            types_p = token_type_ids[ex]
            if kind == "delete":
                types_p = _repack(types_p, mask[ex].bool() & ~remove, 0)
        extra_p = tuple(a[ex] if isinstance(a, torch.Tensor) and a.shape[:1] == (B,) else a for a in extra)
        lp = _log_probs(forward_func, ids_p, mask_p, extra_p, batch_size, cache, max_tokens, types_p)
        lp = lp.gather(1, tgt[ex][:, None])[:, 0]
        table = torch.full((B, int(counts.max()) + 1), float("nan"), device=lp.device)
        table[ex, cnt] = lp
        nz = counts > 0
        log_pk[nz] = table.gather(1, counts)[nz]
    return PerturbationCurve(log_p0, log_pk, counts, tgt, steps)


def aopc(
    forward_func: ForwardFunc,
    input_ids: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    perturbation: Perturbation | None = None,
    absolute: bool = False,
    attention_mask: torch.Tensor | None = None,
    exclude_mask: torch.Tensor | None = None,
    additional_forward_args: tuple[Any, ...] | None = None,
    token_type_ids: torch.Tensor | None = None,
    cache: ForwardCache | None = None,
) -> torch.Tensor:
    """Area over the perturbation curve, per example: mean over ``k`` of ``p(x) - p(x~k)`` (higher = better).

    ``absolute=True`` averages ``|p(x) - p(x~k)|`` (AttCAT reference code). The mean runs over
    all the steps (``k = 0`` contributes 0). ``perturbation.kind=None`` deletes. Other
    arguments: see :func:`perturbation_curve`.

    Example::

        >>> aopc(fwd, ids, scores, target=labels, attention_mask=mask,
        ...      perturbation=Perturbation.for_tokenizer(tokenizer))  # doctest: +SKIP
        tensor([0.4120, 0.2210])
    """
    how = _perturbation(perturbation, "aopc")
    curve = perturbation_curve(
        forward_func, input_ids, attributions, target, perturbation=how, attention_mask=attention_mask,
        exclude_mask=exclude_mask, additional_forward_args=additional_forward_args, token_type_ids=token_type_ids,
        cache=cache,
    )
    return aopc_from_curve(curve, absolute)


def aopc_from_curve(curve: PerturbationCurve, absolute: bool = False) -> torch.Tensor:
    """AOPC from a computed :class:`PerturbationCurve` (see :func:`aopc`)."""
    drop = curve.p0[:, None] - curve.pk
    return (drop.abs() if absolute else drop).mean(1)


def log_odds(
    forward_func: ForwardFunc,
    input_ids: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    perturbation: Perturbation | None = None,
    attention_mask: torch.Tensor | None = None,
    exclude_mask: torch.Tensor | None = None,
    additional_forward_args: tuple[Any, ...] | None = None,
    token_type_ids: torch.Tensor | None = None,
    cache: ForwardCache | None = None,
) -> torch.Tensor:
    """Log-odds, per example: mean over ``k`` of ``log(p(x~k) / p(x))`` (lower = better).

    Computed from log-softmax outputs, so tiny probabilities do not overflow.
    ``perturbation.kind=None`` replaces with the pad token. Other arguments: see
    :func:`perturbation_curve`.

    Example::

        >>> how = Perturbation.for_tokenizer(tokenizer)  # doctest: +SKIP
        >>> log_odds(fwd, ids, scores, attention_mask=mask, perturbation=how)  # doctest: +SKIP
        tensor([-1.9031, -0.4466])
    """
    how = _perturbation(perturbation, "log_odds")
    curve = perturbation_curve(
        forward_func, input_ids, attributions, target, perturbation=how if how.kind else how.with_kind("pad"),
        attention_mask=attention_mask, exclude_mask=exclude_mask, additional_forward_args=additional_forward_args,
        token_type_ids=token_type_ids, cache=cache,
    )
    return log_odds_from_curve(curve)


def log_odds_from_curve(curve: PerturbationCurve) -> torch.Tensor:
    """LOdds from a computed :class:`PerturbationCurve` (see :func:`log_odds`)."""
    return (curve.log_pk - curve.log_p0[:, None]).mean(1)


# --------------------------------------------------------------------------- Kendall tau


def kendall_tau(a: Sequence[float] | np.ndarray | torch.Tensor, b: Sequence[float] | np.ndarray | torch.Tensor,
                on: Literal["ranks", "argsort"] = "ranks") -> float:
    """Kendall's tau (tau-b, scipy) between two score vectors over the same tokens.

    ``on="ranks"`` compares the token rankings the scores induce; ``on="argsort"`` compares
    the permutations ``argsort(a)`` and ``argsort(b)`` (what the AttCAT reference code does;
    a different number in general). NaN for fewer than two tokens.

    Example::

        >>> kendall_tau([3., 2., 1.], [1., 2., 3.])
        -1.0
    """
    x = np.asarray(torch.as_tensor(a, dtype=torch.float64).cpu())
    y = np.asarray(torch.as_tensor(b, dtype=torch.float64).cpu())
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-d score vectors of equal length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return float("nan")
    if on == "argsort":
        x, y = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    elif on != "ranks":
        raise ValueError(f"on must be 'ranks' or 'argsort', got {on!r}")
    return float(stats.kendalltau(x, y).statistic)


def kendall_tau_confidence(
    explanation_func: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    target: TargetLike,
    num_classes: int,
    *,
    perturbation: Perturbation | None = None,
    attention_mask: torch.Tensor | None = None,
    on: Literal["ranks", "argsort"] = "ranks",
    exclude_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-specificity of an explanation: Kendall tau between the token ranking for ``target``
    and the ranking for each other class, averaged over the other classes (per example; lower =
    more class-specific).

    ``explanation_func(input_ids, target, attention_mask)`` returns ``(batch, seq)`` scores for
    a ``(batch,)`` tensor of classes. Only rankable tokens count: not padding, not ``exclude_mask``,
    not the special tokens of ``perturbation`` (required; only its ``special_token_ids`` are read,
    so that the ranking is over the tokens AOPC and LOdds remove).

    Example::

        >>> explain = lambda ids, t, m: AttCAT(model).attribute(ids, target=t, additional_forward_args=(m,))
        >>> kendall_tau_confidence(explain, ids, labels, 2, attention_mask=mask,
        ...                        perturbation=Perturbation.for_tokenizer(tokenizer))  # doctest: +SKIP
        tensor([-0.3333, 0.1000])
    """
    how = _perturbation(perturbation, "kendall_tau_confidence")
    mask = _check_inputs(input_ids, attention_mask, None)
    B = input_ids.shape[0]
    tgt = _target_tensor(target, B)
    if ((tgt < 0) | (tgt >= num_classes)).any():
        raise ValueError(f"target {tgt.tolist()} outside [0, {num_classes})")
    if num_classes < 2:
        raise ValueError("Kendall-tau confidence needs at least two classes")
    rankable = rankable_mask(input_ids, mask, how.special_token_ids, exclude_mask)
    base = explanation_func(input_ids, tgt, mask).detach()
    taus = torch.zeros(B, dtype=torch.float64)
    for shift in range(1, num_classes):
        other = (tgt + shift) % num_classes
        alt = explanation_func(input_ids, other, mask).detach()
        for i in range(B):
            r = rankable[i]
            taus[i] += kendall_tau(base[i][r], alt[i][r], on)
    return taus / (num_classes - 1)


# --------------------------------------------------------------------------- Precision@K


def precision_at_k(
    start_attributions: torch.Tensor,
    end_attributions: torch.Tensor | None,
    answer_start: Sequence[int] | torch.Tensor,
    answer_end: Sequence[int] | torch.Tensor,
    k: int = 20,
    *,
    attention_mask: torch.Tensor | None = None,
    exclude_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """QA Precision@K: gold-answer tokens among the top ``k`` tokens of ``start + end`` attributions.

    ``answer_start`` / ``answer_end`` are inclusive token positions. Returns per example the
    count (AttCAT paper, ``k = 20``) and the count as a percentage of the answer length
    (Mask-LRP paper). Padding and ``exclude_mask`` positions are never in the top ``k``.
    ``end_attributions=None``: ``start_attributions`` already hold the sum (as an
    :class:`~captum_attcat.AnswerSpan` target gives it).

    Example::

        >>> s = torch.tensor([[0., 5., 1., 0.]]); e = torch.tensor([[0., 0., 4., 2.]])
        >>> precision_at_k(s, e, [1], [2], k=2)
        (tensor([2]), tensor([100.]))
    """
    if end_attributions is None:
        end_attributions = torch.zeros_like(start_attributions)
    if start_attributions.shape != end_attributions.shape or start_attributions.dim() != 2:
        raise ValueError("start and end attributions must both be (batch, seq)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    B, S = start_attributions.shape
    device = start_attributions.device
    mask = torch.ones(B, S, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    if exclude_mask is not None:
        mask = mask & ~exclude_mask.bool()
    s0 = torch.as_tensor(answer_start, dtype=torch.long, device=device).flatten()
    s1 = torch.as_tensor(answer_end, dtype=torch.long, device=device).flatten()
    if s0.numel() != B or s1.numel() != B or (s1 < s0).any() or (s0 < 0).any() or (s1 >= S).any():
        raise ValueError("answer_start/answer_end must give one valid inclusive span per example")
    scores = (start_attributions.detach() + end_attributions.detach()).float().masked_fill(~mask, float("-inf"))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    kk = min(k, S)
    top = torch.zeros(B, S, dtype=torch.bool, device=device)
    top.scatter_(1, order[:, :kk], True)
    top &= mask
    pos = torch.arange(S, device=device)[None, :]
    gold = (pos >= s0[:, None]) & (pos <= s1[:, None])
    count = (top & gold).sum(1)
    percent = 100.0 * count.double() / (s1 - s0 + 1).double()
    return count, percent.float()


def nanmean(x: torch.Tensor) -> float:
    """Mean ignoring NaN (``nan`` if everything is NaN)."""
    v = x[~torch.isnan(x)]
    return float(v.mean()) if v.numel() else math.nan
