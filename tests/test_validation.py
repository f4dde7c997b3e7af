"""Each bad input raises an exception that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_attcat import CAT, AttCAT

from conftest import padded_batch, tiny_bert


@pytest.fixture(scope="module")
def model():
    return tiny_bert()


@pytest.fixture(scope="module")
def batch():
    return padded_batch([6, 4])


@pytest.mark.parametrize("method", [AttCAT, CAT])
@pytest.mark.parametrize(
    "target, message",
    [
        (3, r"`target` 3 is out of range: the model has 3 classes"),
        (-1, r"`target` -1 is out of range"),
        ([0, 5], r"`target` 5 is out of range"),
        (torch.tensor([0, 1, 2]), r"`target` has 3 entries for a batch of 2"),
        (None, r"`target` is required: the model returns 3 scores per example"),
    ],
)
def test_bad_target(model, batch, method, target, message):
    ids, mask = batch
    with pytest.raises(ValueError, match=message):
        method(model).attribute(ids, target=target, additional_forward_args=(mask,))


@pytest.mark.parametrize(
    "make_inputs, message",
    [
        (lambda ids: ids.clone().index_fill_(1, torch.tensor([2]), 100), r"token ids must lie in \[0, 100\).*found 100"),
        (lambda ids: ids - 10, r"token ids must lie in \[0, 100\).*found -"),
        (lambda ids: ids[:, :0], r"empty sequence"),
        (lambda ids: ids[:0], r"empty batch"),
        (lambda ids: torch.randint(1, 99, (1, 41)), r"length 41 is longer than the model allows \(40 positions\)"),
        (lambda ids: ids[0], r"integer token ids of shape \(batch, seq\)"),
        (lambda ids: ids.tolist(), r"must be a tensor"),
    ],
)
def test_bad_token_ids(model, batch, make_inputs, message):
    ids, _ = batch
    with pytest.raises((ValueError, TypeError), match=message):
        AttCAT(model).attribute(make_inputs(ids), target=0)


def test_nan_and_inf_embeddings(model, batch):
    ids, mask = batch
    embeddings = model.get_input_embeddings()(ids).detach()
    for bad in (float("nan"), float("inf")):
        broken = embeddings.clone()
        broken[0, 1, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            AttCAT(model).attribute(broken, target=0, additional_forward_args=(mask,))


def test_mask_shape_mismatch(model, batch):
    ids, mask = batch
    with pytest.raises(ValueError, match=r"attention mask .* has shape \(2, 5\) but the inputs have .* \(2, 6\)"):
        AttCAT(model).attribute(ids, target=0, additional_forward_args=(mask[:, :5],))
    with pytest.raises(ValueError, match=r"`query_mask` has shape \(1, 6\)"):
        AttCAT(model).attribute(ids, target=0, additional_forward_args=(mask,), query_mask=mask[:1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        AttCAT(model).attribute(ids, target=0, additional_forward_args=(mask * 2,))
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
