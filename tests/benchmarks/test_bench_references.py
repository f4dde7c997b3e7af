"""Contrast-CAT's reference set for the runner: correctly classified examples, per class, long enough."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.data import Examples
from benchmarks.references import reference_set

TEXTS = ["good fun movie , very good , really good", "awful boring plot", "the acting was not good !",
         "a great film", "dull", "it is really fine , this film .", "bad bad bad", "not very fun , really dull ."]


def test_reference_set_keeps_correct_long_examples_per_class(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        predicted = [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax()) for t in TEXTS]
    labels = [p if i % 3 else 1 - p for i, p in enumerate(predicted)]  # every third example misclassified
    examples = Examples("toy", TEXTS, None, labels, ("neg", "pos"))
    lengths = [len(tokenizer(t)["input_ids"]) for t in TEXTS]

    ids, (mask, types) = reference_set(examples, model, tokenizer, per_class=2, min_tokens=5)  # BERT: segments too
    kept = {tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)}
    expected_pool = [i for i in range(len(TEXTS)) if i % 3 and lengths[i] >= 5]
    pool = {tuple(tokenizer(TEXTS[i])["input_ids"]) for i in expected_pool}
    assert kept <= pool and len(kept) == len(ids)  # correct, long enough, no repeats
    per_class = {c: sum(labels[i] == c for i in expected_pool) for c in (0, 1)}
    assert len(ids) == sum(min(2, n) for n in per_class.values())
    assert ids.shape == mask.shape == types.shape and (ids[mask == 0] == tokenizer.pad_token_id).all()
    again, _ = reference_set(examples, model, tokenizer, per_class=2, min_tokens=5)
    assert torch.equal(ids, again)  # seeded: the same set every run

    with pytest.raises(ValueError, match="no correctly classified example"):
        reference_set(examples, model, tokenizer, min_tokens=100)
