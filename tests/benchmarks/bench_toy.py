"""Test helpers: a tiny real model whose probabilities can be worked out by hand
(the tiny saved BERT classifier is the ``tiny_model_dir`` fixture of ``tests/conftest.py``).

The hand-computable model:

``logit_1 = sum over real tokens of pos_weight(t) * w[id_t]``, ``logit_0 = 0`` (so
``p(1) = sigmoid(logit_1)``). Position 1 (the first token after [CLS]) can weigh twice, which
makes a deletion that forgets to re-pack the sequence give a different number.
"""

from __future__ import annotations

import math

import torch

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
VOCAB = 110


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class BagModel(torch.nn.Module):
    """Sum of per-token weights; counts its forward calls, rows and (row x column) cells."""

    def __init__(self, weights: dict[int, float], first_token_weight: float = 1.0,
                 pad_weight: float = 0.25, mask_weight: float = -0.5) -> None:
        super().__init__()
        w = torch.zeros(VOCAB)
        for tok, val in weights.items():
            w[tok] = val
        w[PAD] = pad_weight
        w[MASK] = mask_weight
        self.w = torch.nn.Parameter(w, requires_grad=False)
        self.first_token_weight = first_token_weight
        self.calls = 0
        self.rows = 0
        self.cells = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += input_ids.shape[0]
        self.cells += input_ids.numel()
        pos = torch.ones(input_ids.shape[1])
        if input_ids.shape[1] > 1:
            pos[1] = self.first_token_weight
        logit1 = (self.w[input_ids] * attention_mask.float() * pos).sum(1)
        return torch.stack([torch.zeros_like(logit1), logit1], 1)
