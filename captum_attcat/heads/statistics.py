"""What each attention head does, measured over a parsed corpus (Mask-LRP, Song et al. 2024).

For every block and head, each query word piece points at its argmax key. Two
statistics follow:

- **relative offsets**: how often the argmax key lies ``o`` positions from the
  query (``key - query``), over every real word piece ([CLS], [SEP] and padding
  are not queries);
- **syntactic relations**: for each dependent word with relation ``k`` (its first
  word piece is the query), whether the argmax lands on a word piece of its
  governor: the hit rate ``alpha_k(block, head)``; and, as a positional
  baseline, ``lambda_k``, the hit rate of the best fixed nonzero offset from the
  dependent for relation ``k``.

Words are aligned to word pieces with the fast tokenizer's ``word_ids()``.

Causal models (decoders, where a query sees only itself and earlier keys) are measured on what
they can see: the first token of a sentence, which sees only itself, is no query (offsets are
then 0 or negative, e.g. -1 for a previous-token head); and a dependency is looked up from the
later of its two words: the dependent's first word piece looks for its governor when the
governor comes first, the governor's first word piece looks for its dependent otherwise (as an
encoder's dependent would find a later governor). ``lambda_k`` is measured on the same pairs.
Positional and syntactic heads are then defined by the same thresholds as for encoders.

Example::

    >>> stats = head_statistics(model, tokenizer, read_conllu("en_ewt-ud-dev.conllu"))
    >>> stats.positional_share().shape          # (blocks, heads)
    >>> stats.alpha("nsubj"), stats.baseline("nsubj")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn import Module

from .._utils.forward import attention_maps
from ..models.adapters import TransformerAdapter
from .corpus import ParsedSentence

#: the relations of the Mask-LRP paper
RELATIONS: tuple[str, ...] = ("nsubj", "obj", "amod", "advmod")


@dataclass
class HeadStatistics:
    """Counts gathered by :func:`head_statistics`.

    Attributes:
        offset_counts: ``(blocks, heads, 2 * max_offset + 1)``; entry ``o + max_offset``
            counts queries whose argmax key is ``o`` positions away.
        queries: number of query word pieces counted (the same for every head).
        relation_hits: per relation, ``(blocks, heads)`` dependents whose argmax
            lands on their governor (for a causal model: the later word of the pair whose
            argmax lands on the earlier one).
        relation_counts: per relation, the number of dependents counted.
        offset_hits: per relation, ``(2 * max_offset + 1,)`` dependents whose
            governor lies at each fixed offset from them.
        max_offset: the largest offset kept (longer ones are clipped to it).
    """

    offset_counts: np.ndarray
    queries: int
    relation_hits: dict[str, np.ndarray]
    relation_counts: dict[str, int]
    offset_hits: dict[str, np.ndarray]
    max_offset: int
    relations: tuple[str, ...] = field(default=RELATIONS)
    #: whether the model's attention is causal (see the module notes for what is counted then)
    causal: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.offset_counts.shape[0], self.offset_counts.shape[1]

    def offsets(self) -> np.ndarray:
        """The offsets that the last axis of :attr:`offset_counts` stands for."""
        return np.arange(-self.max_offset, self.max_offset + 1)

    def positional_share(self) -> np.ndarray:
        """``(blocks, heads)``: share of queries taken by the most frequent nonzero offset."""
        counts = self.offset_counts.copy()
        counts[..., self.max_offset] = 0  # offset 0 (the query itself) is not positional
        return counts.max(-1) / max(self.queries, 1)

    def alpha(self, relation: str) -> np.ndarray:
        """``(blocks, heads)``: hit rate of dependent -> governor for ``relation``."""
        return self.relation_hits[relation] / max(self.relation_counts[relation], 1)

    def baseline(self, relation: str) -> float:
        """``lambda_k``: hit rate of the best fixed nonzero offset for ``relation``."""
        hits = self.offset_hits[relation].copy()
        hits[self.max_offset] = 0
        return float(hits.max() / max(self.relation_counts[relation], 1))

    def best_offset(self, relation: str) -> int:
        """The fixed offset that achieves :meth:`baseline`."""
        hits = self.offset_hits[relation].copy()
        hits[self.max_offset] = -1
        return int(hits.argmax()) - self.max_offset

    def positional_heads(self, threshold: float = 0.8) -> np.ndarray:
        """Heads whose most frequent nonzero offset wins more than ``threshold`` of the time."""
        return self.positional_share() > threshold

    def syntactic_heads(self, margin: float = 0.1) -> np.ndarray:
        """Heads with ``alpha_k > lambda_k + margin`` for at least one relation ``k``."""
        found = np.zeros(self.shape, dtype=bool)
        for relation in self.relations:
            if self.relation_counts[relation]:
                found |= self.alpha(relation) > self.baseline(relation) + margin
        return found


def _word_spans(word_ids: Sequence[int | None], n_words: int) -> np.ndarray:
    """``(n_words, 2)`` first and one-past-last word piece of each word; ``-1`` if truncated."""
    spans = np.full((n_words, 2), -1, dtype=np.int64)
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        if spans[word, 0] < 0:
            spans[word, 0] = position
        spans[word, 1] = position + 1
    return spans


def head_statistics(
    model: Module | Callable[..., Any],
    tokenizer: Any,
    sentences: Sequence[ParsedSentence],
    batch_size: int = 32,
    max_length: int = 128,
    relations: Sequence[str] = RELATIONS,
    layers: Sequence[Module] | None = None,
    attention_modules: Sequence[Module] | None = None,
    progress: bool = True,
) -> HeadStatistics:
    r"""Gather offset and relation statistics of every head over ``sentences``.

    Args:
        model: a Hugging Face model, or a forward function ``(input_ids, attention_mask)``
            with ``layers`` and ``attention_modules`` (Captum's explicit form).
        tokenizer: a fast tokenizer (``word_ids()`` aligns words to word pieces).
        sentences: parsed sentences (:func:`read_conllu`, or built by hand).
        batch_size: sentences per forward pass.
        max_length: word pieces kept per sentence, at most what the model allows
            (longer ones are truncated; a dependent or governor cut off is not counted).
        relations: the relations ``K``.
        progress: show a progress bar.

    Returns:
        :class:`HeadStatistics`.

    Example::

        >>> stats = head_statistics(model, tokenizer, read_conllu("dev.conllu"), batch_size=64)
        >>> stats.positional_heads(0.8).sum(), stats.syntactic_heads(0.1).sum()
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("head statistics need a fast tokenizer (its `word_ids()` aligns words to word pieces)")
    if not sentences:
        raise ValueError("no sentences to gather head statistics from")
    if layers is None and attention_modules is None:
        adapter = TransformerAdapter.from_model(model)
    else:
        adapter = TransformerAdapter.explicit(model, layers, attention_modules)
    if adapter.max_length is not None:
        max_length = min(max_length, adapter.max_length)
    relation_index = {r: i for i, r in enumerate(relations)}
    max_offset = max_length
    n_bins = 2 * max_offset + 1
    blocks = len(adapter.attention_modules)
    offset_counts: np.ndarray | None = None
    queries = 0
    relation_hits: np.ndarray | None = None
    relation_counts = np.zeros(len(relations), dtype=np.int64)
    offset_hits = np.zeros((len(relations), n_bins), dtype=np.int64)

    # batches of similar length waste little on padding; the counts do not depend on order
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i].words))
    batches = range(0, len(sentences), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="head statistics", unit="batch")
    causal = adapter.causal
    for start in batches:
        batch = [sentences[i] for i in order[start : start + batch_size]]
        encoded = tokenizer(
            [list(s.words) for s in batch], is_split_into_words=True, truncation=True,
            max_length=max_length, padding=True, padding_side="right", return_tensors="pt",
        )
        _, maps = attention_maps(adapter, encoded["input_ids"], encoded["attention_mask"])
        argmax = torch.stack([m.argmax(-1) for m in maps]).cpu()  # (blocks, batch, heads, queries), counted on the CPU
        heads, width = argmax.shape[2], argmax.shape[3]
        if offset_counts is None:
            offset_counts = np.zeros((blocks, heads, n_bins), dtype=np.int64)
            relation_hits = np.zeros((len(relations), blocks, heads), dtype=np.int64)

        # relative offsets of the argmax key, over real word pieces
        word_ids = [encoded.word_ids(i) for i in range(len(batch))]
        is_word = torch.tensor([[w is not None for w in ids] for ids in word_ids])  # (batch, queries)
        if causal:  # the first token sees only itself: no query
            is_word[:, 0] = False
        offsets = (argmax - torch.arange(width)).clamp(-max_offset, max_offset) + max_offset
        cell = torch.arange(blocks * heads).view(blocks, 1, heads, 1) * n_bins
        picked = (cell + offsets)[is_word[None, :, None, :].expand_as(offsets)]
        offset_counts += torch.bincount(picked, minlength=blocks * heads * n_bins).view(
            blocks, heads, n_bins
        ).numpy()
        queries += int(is_word.sum())

        # dependents of the relations K: their first word piece and the governor's span
        rows, query, low, high, kind = [], [], [], [], []
        for row, (sentence, ids) in enumerate(zip(batch, word_ids)):
            spans = _word_spans(ids, len(sentence.words))
            for word, (governor, relation) in enumerate(zip(sentence.governors, sentence.relations)):
                if relation not in relation_index or governor < 0:
                    continue
                if spans[word, 0] < 0 or spans[governor, 0] < 0:
                    continue  # truncated away
                # the query is the dependent, or for a causal model the later word of the pair
                asking, found = (governor, word) if causal and spans[governor, 0] > spans[word, 0] else (word, governor)
                rows.append(row)
                query.append(spans[asking, 0])
                low.append(spans[found, 0])
                high.append(spans[found, 1])
                kind.append(relation_index[relation])
        if not rows:
            continue
        rows_t, query_t = torch.tensor(rows), torch.tensor(query)
        low_t, high_t, kind_t = torch.tensor(low), torch.tensor(high), torch.tensor(kind)
        landed = argmax[:, rows_t, :, query_t]  # (dependents, blocks, heads)
        hit = (landed >= low_t[:, None, None]) & (landed < high_t[:, None, None])
        fixed = query_t[:, None] + torch.arange(-max_offset, max_offset + 1)  # (dependents, bins)
        fixed_hit = (fixed >= low_t[:, None]) & (fixed < high_t[:, None])
        for index in range(len(relations)):
            chosen = kind_t == index
            relation_counts[index] += int(chosen.sum())
            relation_hits[index] += hit[chosen].sum(0).numpy()
            offset_hits[index] += fixed_hit[chosen].sum(0).numpy()

    assert offset_counts is not None and relation_hits is not None
    return HeadStatistics(
        offset_counts=offset_counts,
        queries=queries,
        relation_hits={r: relation_hits[i] for i, r in enumerate(relations)},
        relation_counts={r: int(relation_counts[i]) for i, r in enumerate(relations)},
        offset_hits={r: offset_hits[i] for i, r in enumerate(relations)},
        max_offset=max_offset,
        relations=tuple(relations),
        causal=causal,
    )
