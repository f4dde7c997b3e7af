"""Dependency-parsed sentences, read from CoNLL-U with the ``conllu`` package.

Only syntactic words count: multiword-token ranges (``29-30  didn't``) and empty
nodes (``8.1``) are skipped, so word indices and governors stay aligned with
the word lines of the treebank.

Example::

    >>> sentences = read_conllu("en_ewt-ud-dev.conllu")
    >>> sentences[0].words[:3], sentences[0].governors[:3], sentences[0].relations[:3]
    (('From', 'the', 'AP'), (2, 2, 3), ('case', 'det', 'obl'))
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TextIO


@dataclass(frozen=True)
class ParsedSentence:
    """A sentence with its basic dependency tree.

    Attributes:
        words: the syntactic words.
        governors: per word, the 0-based index of its governor, ``-1`` for the root.
        relations: per word, the universal relation (subtypes removed:
            ``nsubj:pass`` -> ``nsubj``).
    """

    words: tuple[str, ...]
    governors: tuple[int, ...]
    relations: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.words)
        if not n or len(self.governors) != n or len(self.relations) != n:
            raise ValueError(
                f"a parsed sentence needs as many governors and relations as words (>0); got "
                f"{n} words, {len(self.governors)} governors, {len(self.relations)} relations"
            )
        bad = [g for g in self.governors if not -1 <= g < n]
        if bad:
            raise ValueError(f"governor index {bad[0]} is outside the sentence of {n} words")

    @classmethod
    def from_heads(cls, words: Sequence[str], heads: Sequence[int], relations: Sequence[str]) -> "ParsedSentence":
        """From CoNLL-U style 1-based heads (0 = root) and full relation labels."""
        return cls(tuple(words), tuple(h - 1 for h in heads), tuple(r.split(":")[0] for r in relations))


def parse_conllu(source: str | TextIO) -> Iterator[ParsedSentence]:
    """Parse CoNLL-U from a string or an open text file."""
    import conllu

    for tokens in conllu.parse_incr(io.StringIO(source) if isinstance(source, str) else source):
        words = [t for t in tokens if isinstance(t["id"], int)]
        if not words:
            continue
        position = {t["id"]: i for i, t in enumerate(words)}
        for t in words:
            if t["head"] is None or (t["head"] != 0 and t["head"] not in position):
                raise ValueError(f"word {t['id']} ({t['form']!r}) has governor {t['head']!r}, not a word of its sentence")
        yield ParsedSentence(
            tuple(t["form"] for t in words),
            tuple(position[t["head"]] if t["head"] else -1 for t in words),
            tuple(str(t["deprel"]).split(":")[0] for t in words),
        )


def read_conllu(*paths: str | Path) -> list[ParsedSentence]:
    """All sentences of one or more CoNLL-U files (gzip-compressed when the name ends in ``.gz``).

    Example::

        >>> len(read_conllu("en_ewt-ud-dev.conllu"))  # doctest: +SKIP
        2001
    """
    sentences: list[ParsedSentence] = []
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            sentences.extend(parse_conllu(handle))
    return sentences

