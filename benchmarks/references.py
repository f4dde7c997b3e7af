"""Contrast-CAT's reference set for a benchmark run: correctly classified training examples.

The authors build, for each class, a library of 50 correctly classified training examples of at least
10 tokens (those of the other classes to which the model gives the lowest probability of it). This
module draws the candidates: up to ``per_class`` examples of each class, in a seeded order, that the
model classifies correctly and that have at least ``min_tokens`` tokens; ``ContrastCAT`` then picks, per
explained example, the ``n_references`` of lowest probability of the explained class among them.

Example::

    >>> ids, args = reference_set(load_task("sst2", "train"), model, tokenizer)   # doctest: +SKIP
    >>> ContrastCAT(model, references=ids, reference_args=args)                   # doctest: +SKIP
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from .data import Examples

#: the authors' library: 50 examples per class of at least 10 tokens
PER_CLASS, MIN_TOKENS = 50, 10


def reference_set(examples: Examples, model: Any, tokenizer: Any, per_class: int = PER_CLASS,
                  min_tokens: int = MIN_TOKENS, seed: int = 0, max_length: int | None = None
                  ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Token ids ``(n, seq)`` (right-padded) and their ``(attention_mask[, token_type_ids])`` for up to
    ``per_class`` correctly classified examples of each class of ``examples``; raises if none is found."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    wanted = {label: per_class for label in set(examples.labels)}
    chosen: list[dict[str, Tensor]] = []
    limit = max_length or getattr(tokenizer, "model_max_length", 512)
    for start in range(0, len(order), 64):
        if not any(wanted.values()):
            break
        batch = [i for i in order[start:start + 64] if wanted.get(examples.labels[i], 0) > 0]
        if not batch:
            continue
        pairs = [examples.text_pairs[i] for i in batch] if examples.text_pairs is not None else None
        encoded = tokenizer([examples.texts[i] for i in batch], pairs, padding=True, truncation=True,
                            max_length=min(limit, 512), return_tensors="pt")
        device = next(model.parameters()).device
        with torch.no_grad():
            predicted = model(**{k: v.to(device) for k, v in encoded.items()}).logits.argmax(-1).cpu()
        for row, i in enumerate(batch):
            label, length = examples.labels[i], int(encoded["attention_mask"][row].sum())
            if int(predicted[row]) == label and length >= min_tokens and wanted[label] > 0:
                wanted[label] -= 1
                chosen.append({k: v[row, :length] for k, v in encoded.items()})
    if not chosen:
        raise ValueError(f"no correctly classified example of at least {min_tokens} tokens in {examples.name}: "
                         "no reference set for ContrastCAT")
    width = max(len(c["input_ids"]) for c in chosen)
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((len(chosen), width), pad, dtype=torch.long)
    mask = torch.zeros((len(chosen), width), dtype=torch.long)
    types = torch.zeros((len(chosen), width), dtype=torch.long) if "token_type_ids" in chosen[0] else None
    for row, c in enumerate(chosen):
        n = len(c["input_ids"])
        ids[row, :n], mask[row, :n] = c["input_ids"], 1
        if types is not None:
            types[row, :n] = c["token_type_ids"]
    return ids, (mask,) if types is None else (mask, types)
