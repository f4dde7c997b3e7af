"""A tiny text classifier with a real tokenizer: random BERT weights from a config, and the
bert-base-uncased WordPiece vocabulary from ``../shared`` (no model hub)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VOCAB = SHARED / "data" / "bert_base_uncased_vocab" / "vocab.txt"
LABELS = {0: "negative", 1: "positive"}


def tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(str(VOCAB))


def classifier(seed: int = 0, blocks: int = 3, heads: int = 4) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=blocks, num_attention_heads=heads,
        intermediate_size=64, max_position_embeddings=64, id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    return BertForSequenceClassification(config).eval()
