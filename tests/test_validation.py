"""Each bad input raises an exception that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_attcat import AttCAT

from conftest import padded_batch, tiny_bert


@pytest.fixture(scope="module")
def model():
    return tiny_bert()


@pytest.fixture(scope="module")
def batch():
    return padded_batch([6, 4])


def test_bad_query_mask(model, batch):
    ids, mask = batch
    with pytest.raises(ValueError, match=r"`query_mask` has shape \(1, 6\)"):
        AttCAT(model).attribute(ids, target=0, additional_forward_args=(mask,), query_mask=mask[:1])
    with pytest.raises(ValueError, match="selects no query row for example 1"):
        AttCAT(model).attribute(ids, target=0, query_mask=torch.tensor([[1] * 6, [0] * 6]))


def test_model_without_findable_attention():
    plain = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"cannot find the transformer blocks of Sequential.*layers=\[block, \.\.\.\]"):
        AttCAT(plain)
    with pytest.raises(ValueError, match="AttCAT reads attention probabilities: pass `attention_modules`"):
        AttCAT(plain, layers=[plain[1]])
    with pytest.raises(ValueError, match="one module per layer"):
        AttCAT(plain, layers=[plain[1]], attention_modules=[plain[0], plain[1]])


def test_attention_module_that_returns_no_probabilities():
    plain = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    explainer = AttCAT(lambda ids: plain(ids).sum(1), layers=[plain[1]], attention_modules=[plain[1]])
    with pytest.raises(ValueError, match=r"did not return attention probabilities of shape \(batch, heads, queries, keys\)"):
        explainer.attribute(torch.tensor([[1, 2, 3]]), target=0)
    assert not plain[1]._forward_hooks
