"""Scores as Captum's text records: scaled to [-1, 1], subwords merged into words.

Example::

    >>> from captum.attr import visualization
    >>> visualization.visualize_text(visualization_records(scores, tokens, word_ids=word_ids))
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from captum.attr import visualization as captum_visualization
from torch import Tensor

_REDUCTIONS = ("sum", "mean", "max")


# --- scores ---------------------------------------------------------------------------------


def scale_scores(scores: Tensor | Sequence[float]) -> Tensor:
    r"""Scale scores to [-1, 1] by their largest magnitude, keeping signs and zeros.

    Each row of a ``(batch, seq)`` tensor (or the whole of a 1-D one) is divided by
    its own largest absolute value; an all-zero row stays zero.

    Args:
        scores: ``(seq,)`` or ``(batch, seq)`` scores (tensor or list of floats).

    Returns:
        A new float tensor of the same shape, values in [-1, 1].

    Example::

        >>> scale_scores(torch.tensor([2.0, -4.0, 1.0]))
        tensor([ 0.5000, -1.0000,  0.2500])
    """
    scores = torch.as_tensor(scores).detach().to(torch.float32)
    if scores.dim() not in (1, 2):
        raise ValueError(f"expected scores of shape (seq,) or (batch, seq); got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("the scores contain NaN or inf values")
    peak = scores.abs().amax(dim=-1, keepdim=True)
    return torch.where(peak > 0, scores / peak.clamp_min(torch.finfo(torch.float32).tiny), scores)


def _continues_word(token: str) -> bool:
    """Whether a subword piece continues the previous word (WordPiece ``##`` pieces)."""
    return token.startswith("##") and len(token) > 2


def merge_subwords(
    tokens: Sequence[str],
    scores: Tensor | Sequence[float],
    word_ids: Sequence[int | None] | None = None,
    reduce: str = "sum",
) -> tuple[list[str], Tensor]:
    r"""Merge subword tokens into words and their scores into one score per word.

    Pieces belong to the same word when the fast tokenizer's ``word_ids()`` say so
    (``None`` marks special tokens, which stay on their own); without
    ``word_ids``, WordPiece continuation pieces (``##ing``) join the token before.

    Args:
        tokens: the tokens, one per score.
        scores: ``(seq,)`` scores.
        word_ids: ``encoding.word_ids(i)`` of a fast tokenizer, one per token.
        reduce: how the pieces' scores combine: ``"sum"`` (default, keeps the total),
            ``"mean"`` or ``"max"`` (the piece of largest magnitude, with its sign).

    Returns:
        ``(words, word_scores)``: the merged words (``##`` removed) and a new
        ``(words,)`` float tensor.

    Example::

        >>> merge_subwords(["[CLS]", "charm", "##ing", "film"], [0.0, 0.2, 0.3, -0.1])
        (['[CLS]', 'charming', 'film'], tensor([ 0.0000,  0.5000, -0.1000]))
    """
    values = torch.as_tensor(scores).detach().to(torch.float32)
    if values.dim() != 1 or len(values) != len(tokens):
        raise ValueError(f"expected one score per token: {len(tokens)} tokens, scores of shape {tuple(values.shape)}")
    if reduce not in _REDUCTIONS:
        raise ValueError(f"`reduce` must be one of {_REDUCTIONS}; got {reduce!r}")
    if word_ids is not None and len(word_ids) != len(tokens):
        raise ValueError(f"`word_ids` has {len(word_ids)} entries for {len(tokens)} tokens")

    groups: list[list[int]] = []
    for i, token in enumerate(tokens):
        if word_ids is not None:
            joins = i > 0 and word_ids[i] is not None and word_ids[i] == word_ids[i - 1]
        else:
            joins = i > 0 and _continues_word(token)
        if joins:
            groups[-1].append(i)
        else:
            groups.append([i])

    words, merged = [], []
    for group in groups:
        pieces = [tokens[i] for i in group]
        words.append(pieces[0] + "".join(p[2:] if _continues_word(p) else p for p in pieces[1:]))
        part = values[group]
        if reduce == "sum":
            merged.append(part.sum())
        elif reduce == "mean":
            merged.append(part.mean())
        else:
            merged.append(part[part.abs().argmax()])
    return words, torch.stack(merged) if merged else values.new_zeros(0)


def _as_list(value: Any, batch: int, name: str) -> list:
    if value is None:
        return [None] * batch
    if isinstance(value, Tensor):
        value = value.flatten().tolist()
    elif isinstance(value, (int, float, str)):
        value = [value]
    value = list(value)
    if len(value) == 1:
        value = value * batch
    if len(value) != batch:
        raise ValueError(f"`{name}` has {len(value)} entries for a batch of {batch} examples")
    return value


def visualization_records(
    scores: Tensor,
    input_ids: Tensor,
    tokenizer: Any,
    target: int | Sequence[int] | Tensor,
    probabilities: Tensor | None = None,
    true_labels: int | Sequence[int] | Tensor | None = None,
    attention_mask: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    word_ids: Sequence[Sequence[int | None]] | None = None,
    merge: bool = False,
    convergence_delta: Tensor | Sequence[float] | None = None,
) -> list[captum_visualization.VisualizationDataRecord]:
    r"""Captum ``VisualizationDataRecord`` objects for a batch of token scores.

    Scores are scaled to [-1, 1] per example (:func:`scale_scores`), padding
    (``attention_mask == 0``) is dropped, and with ``merge=True`` subwords are
    merged into words (:func:`merge_subwords`, summing their scores).

    Args:
        scores: ``(batch, seq)`` attributions, e.g. from ``AttCAT.attribute``.
        input_ids: ``(batch, seq)`` the token ids that were explained.
        tokenizer: the Hugging Face tokenizer (``convert_ids_to_tokens``).
        target: the explained class, one for all or one per example.
        probabilities: ``(batch, classes)`` predicted probabilities (softmax of the
            logits); the predicted class and its probability are read from them.
            Without them the records show the target with probability ``nan``.
        true_labels: the true classes, if known (else the target is shown).
        attention_mask: ``(batch, seq)``; positions where it is 0 are dropped.
        class_names: names shown instead of class indices.
        word_ids: per example, ``encoding.word_ids(i)`` of a fast tokenizer, used
            for ``merge`` (otherwise ``##`` pieces are merged).
        merge: merge subwords into words.
        convergence_delta: per example, shown as Captum's convergence score.

    Returns:
        One record per example; ``attr_score`` is the sum of the raw scores.

    Example::

        >>> from captum.attr import visualization
        >>> scores = AttCAT(model).attribute(ids, target=1, additional_forward_args=(mask,))
        >>> probs = model(ids, attention_mask=mask).logits.softmax(-1)
        >>> visualization.visualize_text(visualization_records(scores, ids, tokenizer, 1, probs,
        ...                                                    attention_mask=mask, merge=True))
    """
    scores = torch.as_tensor(scores).detach()
    if scores.dim() == 1:
        scores = scores[None]
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if scores.shape != input_ids.shape:
        raise ValueError(f"`scores` {tuple(scores.shape)} and `input_ids` {tuple(input_ids.shape)} differ in shape")
    batch = scores.shape[0]
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"`attention_mask` {tuple(attention_mask.shape)} does not match `input_ids` {tuple(input_ids.shape)}"
        )
    if word_ids is not None and len(word_ids) != batch:
        raise ValueError(f"`word_ids` has {len(word_ids)} entries for a batch of {batch} examples")
    targets = _as_list(target, batch, "target")
    truths = _as_list(true_labels, batch, "true_labels")
    deltas = _as_list(convergence_delta, batch, "convergence_delta")
    if probabilities is not None:
        probabilities = torch.as_tensor(probabilities).detach().to(torch.float32)
        if probabilities.dim() != 2 or probabilities.shape[0] != batch:
            raise ValueError(f"`probabilities` must be (batch, classes); got {tuple(probabilities.shape)}")

    def name(index: Any) -> Any:
        return class_names[int(index)] if class_names is not None and index is not None else index

    records = []
    for i in range(batch):
        keep = torch.ones(scores.shape[1], dtype=torch.bool)
        if attention_mask is not None:
            keep = attention_mask[i].bool().cpu()
        tokens = tokenizer.convert_ids_to_tokens(input_ids[i][keep].tolist())
        raw = scores[i][keep.to(scores.device)].to(torch.float32).cpu()
        if merge:
            ids_i = None if word_ids is None else [w for w, k in zip(word_ids[i], keep.tolist()) if k]
            tokens, raw = merge_subwords(tokens, raw, ids_i)
        if probabilities is not None:
            pred = int(probabilities[i].argmax())
            prob = float(probabilities[i, pred])
        else:
            pred, prob = targets[i], float("nan")
        truth = truths[i] if truths[i] is not None else targets[i]
        records.append(
            captum_visualization.VisualizationDataRecord(
                word_attributions=scale_scores(raw),
                pred_prob=prob,
                pred_class=name(pred),
                true_class=name(truth),
                attr_class=name(targets[i]),
                attr_score=float(raw.sum()),
                raw_input_ids=list(tokens),
                convergence_score=deltas[i],
            )
        )
    return records
