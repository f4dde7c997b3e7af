"""Extractive question answering data: SQuAD-format files, the article split, windows, EM/F1.

* :func:`load_squad` reads SQuAD JSON (``{"data": [{"title", "paragraphs": [{"context",
  "qas": [...]}]}]}``, v1.1 or v2.0) or JSONL / Hugging Face rows (``id, title, context,
  question, answers: {text, answer_start}``), checking that every answer's offsets match its
  context. The default file is SQuAD v1.1 dev, vendored in ``benchmarks/data/``.
* :func:`split_articles` is the fixed split the default QA model is trained and evaluated on:
  the articles at positions 4, 9, 14, ... of the file (every fifth: 9 of SQuAD v1.1 dev's 48,
  1,975 questions) are held out; the other 39 (8,595 questions) are for fine-tuning.
* :func:`encode_windows` tokenizes (question, context) pairs into windows of at most
  ``max_length`` tokens over the context (``stride`` tokens shared between windows), with the
  answer's token span and the context tokens of each window.
* :func:`squad_scores` is SQuAD's exact match and F1 (the official normalisation).

Example::

    >>> from benchmarks.squad import load_squad, split_articles
    >>> train, held_out = split_articles(load_squad())
    >>> len(train), len(held_out)
    (8595, 1975)
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .data import VENDORED_DIR

__all__ = ["QAExample", "QAWindow", "DEFAULT_SQUAD_FILE", "HELD_OUT_EVERY", "load_squad", "split_articles",
           "encode_windows", "answer_window", "best_spans", "squad_scores", "pad_windows", "window_spans",
           "predict_answers"]

#: SQuAD v1.1 dev, gzip-compressed (the file in ``../shared/data/squad_v1.1``).
DEFAULT_SQUAD_FILE: Path = VENDORED_DIR / "squad_dev_v1.1.json.gz"
#: every this-many-th article (counting from 1) is held out for evaluation
HELD_OUT_EVERY = 5


@dataclass(frozen=True)
class QAExample:
    """One question on one context; ``answers`` are ``(text, character offset)`` pairs (none for
    SQuAD v2's unanswerable questions); ``article`` is the index of its article in the file."""

    id: str
    title: str
    article: int
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def _open_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            return fh.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from None


def _rows_of_squad_json(data: Any, path: Path) -> Iterable[dict[str, Any]]:
    """Flatten SQuAD's article / paragraph / question nesting into rows."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: not a SQuAD file: expected a JSON object with a 'data' list of articles")
    for a, article in enumerate(data["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{path}: article {a} has no 'paragraphs' list")
        for paragraph in article["paragraphs"]:
            if not isinstance(paragraph, dict) or "context" not in paragraph or "qas" not in paragraph:
                raise ValueError(f"{path}: article {a}: a paragraph without 'context' or 'qas'")
            for qa in paragraph["qas"]:
                answers = qa.get("answers") or []
                if not isinstance(answers, list):
                    raise ValueError(f"{path}: question {qa.get('id')!r}: 'answers' must be a list")
                yield {"id": qa.get("id"), "title": article.get("title", ""), "article": a,
                       "context": paragraph["context"], "question": qa.get("question"),
                       "answers": [(x.get("text"), x.get("answer_start")) for x in answers if isinstance(x, dict)],
                       "is_impossible": bool(qa.get("is_impossible", False))}


def _rows_of_jsonl(text: str, path: Path) -> Iterable[dict[str, Any]]:
    """Hugging Face ``squad`` rows, one JSON object a line; articles numbered by title."""
    titles: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {n} is not a JSON object")
        answers = row.get("answers") or {}
        if isinstance(answers, dict):
            texts, starts = answers.get("text") or [], answers.get("answer_start") or []
            if len(texts) != len(starts):
                raise ValueError(f"{path}: line {n}: {len(texts)} answer texts but {len(starts)} answer_start values")
            pairs = list(zip(texts, starts))
        else:
            raise ValueError(f"{path}: line {n}: 'answers' must be {{'text': [...], 'answer_start': [...]}}")
        title = str(row.get("title", ""))
        yield {"id": row.get("id", f"line{n}"), "title": title, "article": titles.setdefault(title, len(titles)),
               "context": row.get("context"), "question": row.get("question"), "answers": pairs,
               "is_impossible": not pairs}


def load_squad(path: str | Path | None = None, *, limit: int | None = None) -> list[QAExample]:
    """Questions of a SQuAD-format file (JSON, JSONL, optionally ``.gz``), every answer checked.

    Unanswerable questions (SQuAD v2) come back with no answers. Raises ``ValueError`` naming
    the file and the question for a question without answers in a v1-style file, an answer
    whose ``answer_start`` does not point at its text in the context, or rows missing fields.

    Example::

        >>> load_squad(limit=1)[0].answers
        (('Denver Broncos', 177), ('Denver Broncos', 177), ('Denver Broncos', 177))
    """
    path = Path(path) if path is not None else DEFAULT_SQUAD_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    text = _open_text(path)
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    rows: Iterable[dict[str, Any]]
    if path.name.lower().removesuffix(".gz").endswith(".jsonl"):
        rows = _rows_of_jsonl(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if not _is_jsonl(text.lstrip()):
                raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
            rows = _rows_of_jsonl(text, path)  # several JSON objects, one a line
        else:
            one_row = isinstance(data, dict) and "question" in data and "data" not in data
            rows = _rows_of_jsonl(text, path) if one_row else _rows_of_squad_json(data, path)
    examples: list[QAExample] = []
    for row in rows:
        examples.append(_example(row, path))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ValueError(f"{path}: no questions found")
    if not any(e.answerable for e in examples):
        raise ValueError(f"{path}: no question has an answer; Precision@K and the QA model need gold answers")
    return examples


def _is_jsonl(text: str) -> bool:
    first = text.split("\n", 1)[0].strip()
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "question" in obj


def _example(row: dict[str, Any], path: Path) -> QAExample:
    qid = str(row["id"])
    where = f"{path}: question {qid!r}"
    for name in ("context", "question"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise ValueError(f"{where} has no {name} text")
    context = row["context"]
    answers = []
    for text, start in row["answers"]:
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f"{where}: an answer needs a 'text' string and an integer 'answer_start'")
        if context[start:start + len(text)] != text:
            raise ValueError(f"{where}: answer {text!r} is not at character {start} of its context "
                             f"(found {context[start:start + len(text)]!r}); the answer offsets do not match")
        answers.append((text, start))
    if not answers and not row.get("is_impossible"):
        raise ValueError(f"{where} has no answers (and is not marked is_impossible)")
    return QAExample(qid, str(row.get("title", "")), int(row["article"]), row["question"], context, tuple(answers))


def split_articles(examples: Sequence[QAExample], every: int = HELD_OUT_EVERY
                   ) -> tuple[list[QAExample], list[QAExample]]:
    """(fine-tuning, held-out) questions: articles ``every-1, 2*every-1, ...`` (0-based, in file
    order) are held out, so no context of the held-out articles is ever trained on.

    Example::

        >>> train, held_out = split_articles(load_squad())
        >>> sorted({e.title for e in held_out})[:2]
        ['American_Broadcasting_Company', 'Apollo_program']
    """
    held = [e for e in examples if e.article % every == every - 1]
    return [e for e in examples if e.article % every != every - 1], held


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class QAWindow:
    """One tokenized window of a question and (part of) its context.

    ``answer`` is the inclusive token span of the first gold answer, ``None`` when it is not
    wholly inside this window; ``context_mask`` marks the context tokens; ``offsets`` are the
    character spans of the tokens in the context (``(0, 0)`` outside it).
    """

    example: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    context_mask: list[int]
    offsets: list[tuple[int, int]]
    answer: tuple[int, int] | None


def encode_windows(examples: Sequence[QAExample], tokenizer: Any, max_length: int = 384, stride: int = 128
                   ) -> list[QAWindow]:
    """Tokenize every (question, context) into windows over the context: the question whole, the
    context cut into pieces of at most ``max_length`` tokens with ``stride`` tokens overlapping
    (Hugging Face's ``return_overflowing_tokens``), the layout BERT's SQuAD models use.

    Needs a fast tokenizer (``sequence_ids`` and offsets). Example::

        >>> windows = encode_windows(load_squad(limit=2), tokenizer, max_length=64, stride=16)  # doctest: +SKIP
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"QA windows need a fast tokenizer (offsets and sequence ids); got {type(tokenizer).__name__}")
    question_first = getattr(tokenizer, "padding_side", "right") == "right"
    if not question_first:
        raise ValueError("QA windows put the question first; use a tokenizer with padding_side='right'")
    questions = [e.question.lstrip() for e in examples]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    for e, ids in zip(examples, tokenizer(questions, add_special_tokens=False)["input_ids"]):
        room = max_length - specials - len(ids)
        if room <= stride:
            raise ValueError(f"question {e.id!r} takes {len(ids)} tokens: a window of {max_length} leaves {room} for "
                             f"the context, not more than the stride of {stride}; use a longer window or a shorter stride")
    enc = tokenizer(questions, [e.context for e in examples],
                    truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    windows = []
    types = enc.get("token_type_ids")
    for w, example in enumerate(enc["overflow_to_sample_mapping"]):
        seq_ids = enc.sequence_ids(w)
        context = [int(s == 1) for s in seq_ids]
        offsets = [tuple(o) if c else (0, 0) for o, c in zip(enc["offset_mapping"][w], context)]
        answer = None
        ex = examples[example]
        if ex.answers:
            text, start = ex.answers[0]
            answer = _token_span(offsets, context, start, start + len(text))
        windows.append(QAWindow(example, enc["input_ids"][w], None if types is None else types[w], context,
                                offsets, answer))  # type: ignore[arg-type]
    return windows


def _token_span(offsets: Sequence[tuple[int, int]], context: Sequence[int], first: int, last: int
                ) -> tuple[int, int] | None:
    """The inclusive token span covering characters ``[first, last)``, if the window holds it."""
    inside = [i for i, c in enumerate(context) if c]
    if not inside or offsets[inside[0]][0] > first or offsets[inside[-1]][1] < last:
        return None
    start = next(i for i in inside if offsets[i][1] > first)
    end = next(i for i in reversed(inside) if offsets[i][0] < last)
    return (start, end) if start <= end else None


def answer_window(windows: Sequence[QAWindow]) -> dict[int, QAWindow]:
    """Per example, the first window that holds its whole gold answer (the context truncated
    around the answer); examples whose answer no window holds are left out."""
    chosen: dict[int, QAWindow] = {}
    for w in windows:
        if w.answer is not None and w.example not in chosen:
            chosen[w.example] = w
    return chosen


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, context_mask: torch.Tensor,
               max_answer_tokens: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the context span ``start <= end < start + max_answer_tokens`` maximising
    ``start_logit + end_logit``: ``(start, end, score)``.

    Example::

        >>> best_spans(torch.tensor([[0., 3, 1]]), torch.tensor([[0., 1, 4]]), torch.tensor([[0, 1, 1]]))
        (tensor([1]), tensor([2]), tensor([7.]))
    """
    n = start_logits.shape[1]
    pos = torch.arange(n, device=start_logits.device)
    band = (pos[None, :] >= pos[:, None]) & (pos[None, :] < pos[:, None] + max_answer_tokens)
    ctx = context_mask.bool()
    allowed = band[None] & ctx[:, :, None] & ctx[:, None, :]
    scores = (start_logits.float()[:, :, None] + end_logits.float()[:, None, :]).masked_fill(~allowed, float("-inf"))
    best = scores.flatten(1).argmax(1)
    return best // n, best % n, scores.flatten(1).gather(1, best[:, None])[:, 0]


# --------------------------------------------------------------------------- EM / F1


def _normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = _normalize(prediction).split(), _normalize(gold).split()
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: Sequence[QAExample]) -> dict[str, float]:
    """Exact match and F1 in % (best over each question's gold answers), over the answerable
    ``examples``; a question without a prediction counts 0.

    Example::

        >>> ex = QAExample("q1", "t", 0, "Who?", "The Denver Broncos won.", (("Denver Broncos", 4),))
        >>> squad_scores({"q1": "the Denver Broncos"}, [ex])
        {'exact_match': 100.0, 'f1': 100.0, 'questions': 1}
    """
    answerable = [e for e in examples if e.answerable]
    em = f1 = 0.0
    for e in answerable:
        pred = predictions.get(e.id, "")
        em += max(float(_normalize(pred) == _normalize(t)) for t, _ in e.answers)
        f1 += max(_f1(pred, t) for t, _ in e.answers)
    n = max(len(answerable), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "questions": len(answerable)}


def pad_windows(windows: Sequence[QAWindow], pad_id: int, device: Any = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(input_ids, attention_mask, token_type_ids or None, context_mask)`` of ``windows``,
    right-padded to the longest."""
    width = max(len(w.input_ids) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    context = torch.zeros((len(windows), width), dtype=torch.long)
    types = None if windows[0].token_type_ids is None else torch.zeros((len(windows), width), dtype=torch.long)
    for r, w in enumerate(windows):
        n = len(w.input_ids)
        ids[r, :n] = torch.tensor(w.input_ids)
        mask[r, :n] = 1
        context[r, :n] = torch.tensor(w.context_mask)
        if types is not None:
            types[r, :n] = torch.tensor(w.token_type_ids)  # type: ignore[arg-type]
    moved = [t.to(device) if (t is not None and device is not None) else t for t in (ids, mask, types, context)]
    return moved[0], moved[1], moved[2], moved[3]  # type: ignore[return-value]


@torch.no_grad()
def window_spans(model: Any, tokenizer: Any, windows: Sequence[QAWindow], batch_size: int = 32,
                 max_answer_tokens: int = 30) -> list[tuple[int, int, float]]:
    """The model's best span ``(start, end, start + end logit)`` in each window (in the order
    given), from batches of windows of similar length.

    Example::

        >>> window_spans(model, tokenizer, encode_windows(questions, tokenizer))[0]  # doctest: +SKIP
        (21, 23, 14.2)
    """
    from captum_attcat import logits_of

    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    spans: list[tuple[int, int, float]] = [(0, 0, 0.0)] * len(windows)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        ids, mask, types, context = pad_windows([windows[i] for i in rows], pad, device)
        kwargs = {} if types is None else {"token_type_ids": types}
        logits = logits_of(model(input_ids=ids, attention_mask=mask, **kwargs))
        first, last, score = best_spans(logits[..., 0], logits[..., 1], context, max_answer_tokens)
        for i, a, b, v in zip(rows, first.tolist(), last.tolist(), score.tolist()):
            spans[i] = (a, b, v)
    return spans


def predict_answers(model: Any, tokenizer: Any, examples: Sequence[QAExample], *, max_length: int = 384,
                    stride: int = 128, batch_size: int = 32, max_answer_tokens: int = 30
                    ) -> dict[str, str]:
    """The model's answer text per question id: the best-scoring span over all windows.

    Example::

        >>> squad_scores(predict_answers(model, tokenizer, held_out), held_out)  # doctest: +SKIP
        {'exact_match': 41.2, 'f1': 53.0, 'questions': 1975}
    """
    windows = encode_windows(examples, tokenizer, max_length, stride)
    best: dict[int, tuple[float, str]] = {}
    for w, (a, b, v) in zip(windows, window_spans(model, tokenizer, windows, batch_size, max_answer_tokens)):
        if w.example not in best or v > best[w.example][0]:
            best[w.example] = (v, examples[w.example].context[w.offsets[a][0]:w.offsets[b][1]])
    return {examples[i].id: text for i, (_, text) in best.items()}
