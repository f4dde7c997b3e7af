"""Evaluation protocols: what the papers' text defines, and what their reference code actually ran.

A :class:`Protocol` fixes every choice that changes the numbers: the fractions ``k``, signed or
absolute AOPC, the explained class (predicted or true label), the perturbation of each metric,
example filters, which special tokens are hidden from the model during the explanation pass,
and how Kendall tau is computed.

* ``PAPER``: the definitions in the papers' text. k = 0, 10, ..., 100 %; the predicted class;
  signed AOPC with deletion; LOdds with [PAD] replacement; no filters; nothing hidden during
  the explanation; Kendall tau on token ranks.
* ``ATTCAT``: the AttCAT reference evaluation. k = i/9 (i = 1..9); the true label; AOPC averages
  ``|p - p_k|`` with deletion; LOdds with [PAD]; examples shorter than 10 tokens skipped;
  [CLS] and [SEP] zeroed in the attention mask for the explanation pass (methods that average
  over query rows, given as their ``query_mask`` argument: AttCAT, AttentionGradient,
  AttentionGradCAM, GradSAM, still average over every real token, as the reference notebooks
  do); Kendall tau on the ``argsort`` permutations.
* ``MASKLRP``: the Mask-LRP reference evaluation. k = i/9; the true label; signed AOPC and LOdds,
  both with [PAD]; only [SEP] zeroed for the explanation (query-averaging methods still
  average over every real token, as the repository does); examples shorter than 20 tokens
  skipped; QQP keeps only label 1; examples whose original true-label probability is below
  0.3 (QQP) or 0.34 (MNLI) dropped.

Token counts for the length filters are the real (non-padding) tokens of the model input,
[CLS] and [SEP] included.

Example::

    >>> from benchmarks.protocols import get_protocol
    >>> get_protocol("attcat").aopc_absolute
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

import torch

from .metrics import (
    PAPER_STEPS,
    ForwardCache,
    REFERENCE_STEPS,
    ForwardFunc,
    Perturbation,
    PerturbationKind,
    _perturbation,
    perturbation_curve,
)

__all__ = ["Protocol", "ProtocolScores", "PAPER", "ATTCAT", "MASKLRP", "PROTOCOLS", "get_protocol"]


@dataclass(frozen=True)
class ProtocolScores:
    """Per-example results of :meth:`Protocol.score`.

    ``aopc`` / ``lodds``: ``(batch,)``; ``aopc_curve``: ``(batch, steps)`` probability drops
    (absolute when the protocol says so); ``lodds_curve``: ``(batch, steps)`` ``log(p_k / p)``.
    """

    aopc: torch.Tensor
    lodds: torch.Tensor
    aopc_curve: torch.Tensor
    lodds_curve: torch.Tensor


@dataclass(frozen=True)
class Protocol:
    """Every setting of an AOPC / LOdds / Kendall-tau evaluation.

    Example::

        >>> p = Protocol(name="mine", steps=(0.2, 0.4), label="true")
        >>> p.steps
        (0.2, 0.4)
    """

    name: str = "paper"
    steps: tuple[float, ...] = PAPER_STEPS
    label: Literal["predicted", "true"] = "predicted"
    aopc_absolute: bool = False
    aopc_perturbation: PerturbationKind = "delete"
    lodds_perturbation: PerturbationKind = "pad"
    min_tokens: int = 0
    keep_labels: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    min_probability: Mapping[str, float] = field(default_factory=dict)
    explain_hide: tuple[Literal["cls", "sep"], ...] = ()
    kendall_on: Literal["ranks", "argsort"] = "ranks"
    exclude_special: bool = True
    all_query_rows: bool = False

    def __post_init__(self) -> None:
        if not self.steps or any(not 0.0 <= k <= 1.0 for k in self.steps):
            raise ValueError(f"{self.name}: steps must be fractions in [0, 1], got {self.steps}")
        if self.label not in ("predicted", "true"):
            raise ValueError(f"{self.name}: label must be 'predicted' or 'true', got {self.label!r}")
        for p in (self.aopc_perturbation, self.lodds_perturbation):
            if p not in ("delete", "pad", "mask"):
                raise ValueError(f"{self.name}: perturbation must be 'delete', 'pad' or 'mask', got {p!r}")
        for h in self.explain_hide:
            if h not in ("cls", "sep"):
                raise ValueError(f"{self.name}: explain_hide holds 'cls' / 'sep', got {h!r}")

    # ------------------------------------------------------------------ pieces of the run

    def targets(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The explained class per example: the true label or the model's prediction.

        Example::

            >>> PAPER.targets(torch.tensor([0]), torch.tensor([[0.1, 2.0]])).tolist()
            [1]
        """
        return labels.clone() if self.label == "true" else logits.argmax(-1)

    def keep(
        self,
        task: str,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """Bool ``(batch,)``: examples that pass the length, label and probability filters.

        The probability filter reads the softmax probability of the **true** label on the
        unperturbed input.

        Example::

            >>> MASKLRP.keep("mnli", torch.ones(1, 25), torch.tensor([0]),
            ...              torch.tensor([[0.0, 0.0, 0.0]])).tolist()   # p = 1/3 < 0.34
            [False]
        """
        ok = attention_mask.sum(1) >= self.min_tokens
        allowed = self.keep_labels.get(task)
        if allowed is not None:
            ok &= torch.isin(labels, torch.tensor(allowed, dtype=labels.dtype, device=labels.device))
        thr = self.min_probability.get(task)
        if thr is not None:
            p_true = torch.softmax(logits.float(), -1).gather(1, labels[:, None].long())[:, 0]
            ok &= p_true >= thr
        return ok

    def explanation_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cls_token_id: int | None,
        sep_token_id: int | None,
    ) -> torch.Tensor:
        """The attention mask handed to the explanation method: a copy with the hidden special
        tokens zeroed (the metric passes always use the full mask).

        Example::

            >>> ATTCAT.explanation_mask(torch.tensor([[101, 7, 102]]), torch.ones(1, 3, dtype=torch.long),
            ...                         101, 102).tolist()
            [[0, 1, 0]]
        """
        mask = attention_mask.clone()
        ids = {"cls": cls_token_id, "sep": sep_token_id}
        for name in self.explain_hide:
            tok = ids[name]
            if tok is None:
                raise ValueError(f"{self.name} hides [{name.upper()}] but the tokenizer has no such token")
            mask = mask.masked_fill(input_ids == tok, 0)
        return mask

    def score(
        self,
        forward_func: ForwardFunc,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        attributions: torch.Tensor,
        targets: torch.Tensor,
        *,
        perturbation: Perturbation | None = None,
        cache: ForwardCache | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> ProtocolScores:
        """AOPC and LOdds of ``attributions`` under this protocol (one curve per perturbation kind).

        ``perturbation`` (required) gives the tokenizer's special tokens, pad and mask ids and the
        forward batches (``Perturbation.for_tokenizer(tokenizer)``); the protocol sets the steps
        and each metric's kind (and ranks the special tokens too when ``exclude_special`` is off).

        Example::

            >>> how = Perturbation.for_tokenizer(tokenizer)  # doctest: +SKIP
            >>> s = ATTCAT.score(fwd, ids, mask, scores, labels, perturbation=how)  # doctest: +SKIP
            >>> s.aopc.shape  # doctest: +SKIP
            torch.Size([32])
        """
        how = replace(_perturbation(perturbation, "Protocol.score"), steps=self.steps)
        if not self.exclude_special:
            how = replace(how, special_token_ids=())
        curves = {}
        for kind in dict.fromkeys((self.aopc_perturbation, self.lodds_perturbation)):  # one order in every process
            curves[kind] = perturbation_curve(forward_func, input_ids, attributions, targets,
                                              perturbation=how.with_kind(kind), attention_mask=attention_mask,
                                              cache=cache, token_type_ids=token_type_ids)
        a, lo = curves[self.aopc_perturbation], curves[self.lodds_perturbation]
        drop = a.p0[:, None] - a.pk
        if self.aopc_absolute:
            drop = drop.abs()
        ratio = lo.log_pk - lo.log_p0[:, None]
        return ProtocolScores(drop.mean(1), ratio.mean(1), drop, ratio)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for result files."""
        d = asdict(self)
        d["keep_labels"] = {k: list(v) for k, v in self.keep_labels.items()}
        d["min_probability"] = dict(self.min_probability)
        d["steps"] = list(self.steps)
        d["explain_hide"] = list(self.explain_hide)
        return d


PAPER = Protocol()
ATTCAT = Protocol(
    name="attcat",
    steps=REFERENCE_STEPS,
    label="true",
    aopc_absolute=True,
    aopc_perturbation="delete",
    lodds_perturbation="pad",
    min_tokens=10,
    explain_hide=("cls", "sep"),
    kendall_on="argsort",
    all_query_rows=True,
)
MASKLRP = Protocol(
    name="masklrp",
    steps=REFERENCE_STEPS,
    label="true",
    aopc_absolute=False,
    aopc_perturbation="pad",
    lodds_perturbation="pad",
    min_tokens=20,
    keep_labels={"qqp": (1,)},
    min_probability={"qqp": 0.3, "mnli": 0.34},
    explain_hide=("sep",),
    kendall_on="ranks",
    all_query_rows=True,
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (PAPER, ATTCAT, MASKLRP)}


def get_protocol(name: str) -> Protocol:
    """A preset by name: ``"paper"``, ``"attcat"`` or ``"masklrp"``."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}") from None
