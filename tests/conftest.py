"""Shared fixtures: the reference case and tiny Hugging Face models built from configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference" / "bert_tiny_case1"


@pytest.fixture(scope="session")
def reference() -> dict:
    """The reference input and the vectors the authors' code produced on it."""
    return json.loads((REFERENCE / "expected.json").read_text())


@pytest.fixture(scope="session")
def reference_model() -> BertForSequenceClassification:
    return BertForSequenceClassification.from_pretrained(REFERENCE, attn_implementation="eager").eval()


def tiny_bert(attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, num_labels=3,
    )
    config = BertConfig(attn_implementation=attn_implementation, **{**settings, **overrides})
    return BertForSequenceClassification(config).eval()


def tiny_model(family: str, seed: int = 0):
    """A tiny random model of one of the architectures the adapters know."""
    torch.manual_seed(seed)
    common = dict(vocab_size=100, num_labels=2)
    if family == "bert":
        return tiny_bert(seed=seed)
    if family == "roberta":
        config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=42, pad_token_id=1, **common)
        return RobertaForSequenceClassification(config).eval()
    if family == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=40, **common)
        return DistilBertForSequenceClassification(config).eval()
    if family == "electra":
        config = ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=40, **common)
        return ElectraForSequenceClassification(config).eval()
    if family == "gpt2":  # a decoder: causal attention, the score read at the last real token
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=40, pad_token_id=0,
                            bos_token_id=0, eos_token_id=0, **common)
        return GPT2ForSequenceClassification(config).eval()
    raise ValueError(family)


def padded_batch(lengths: list[int], vocab: int = 100, pad: int = 0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (right-padded with ``pad``) and the attention mask for examples of ``lengths``."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(5, vocab, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask
