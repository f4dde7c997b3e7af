"""AttCAT and CAT: invariants, hand-checkable cases, other architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_attcat import CAT, METHODS, AttCAT

from conftest import padded_batch, tiny_bert


NOTEBOOK_KEY = "CLS+SEP masked (as in notebooks)"  # the authors' vectors: tests/test_reference_vectors.py


def test_default_query_mask_is_the_attention_mask(reference, reference_model):
    ids = torch.tensor(reference["input_ids"])
    mask = torch.tensor(reference["attention_masks"]["attcat"])
    explainer = AttCAT(reference_model)
    default = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    explicit = explainer.attribute(ids, target=1, additional_forward_args=(mask,), query_mask=mask)
    notebook = explainer.attribute(ids, target=1, additional_forward_args=(mask,), query_mask=torch.ones_like(ids))
    assert torch.equal(default, explicit)
    assert (default - notebook)[0, 1:7].abs().min() > 1e-6  # masked rows no longer averaged
    assert default[0, [0, 7]].eq(0).all()  # masked keys receive no attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_scores_follow_the_loaded_attention_implementation(reference, implementation, dtype):
    """The model keeps computing attention as loaded, in its own dtype: CAT equals
    gradient x hidden state computed by the model itself, bit for bit."""
    from transformers import BertForSequenceClassification

    from conftest import REFERENCE

    model = BertForSequenceClassification.from_pretrained(REFERENCE, attn_implementation=implementation)
    model = model.to(dtype).eval()
    ids = torch.tensor(reference["input_ids"])
    mask = torch.tensor(reference["attention_masks"]["attcat"])
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    states = out.hidden_states[:-1]
    grads = torch.autograd.grad(out.logits[:, 1].sum(), states)
    own = sum((g * h).sum(-1) for g, h in zip(grads, states))
    cat = CAT(model).attribute(ids, target=1, additional_forward_args=(mask,))
    assert cat.dtype == dtype and torch.equal(cat, own)
    assert model.config._attn_implementation == implementation


# --- definitions checked by hand and against transformers' own outputs -------------------


class ToyAttention(nn.Module):
    """Returns fixed attention probabilities (batch, 1 head, seq, seq)."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.probs = probs

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.probs.expand(hidden.shape[0], 1, *self.probs.shape)


class ToyBlock(nn.Module):
    """out = (P @ h) * w: attention over tokens, then a per-feature scale."""

    def __init__(self, probs: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.attention = ToyAttention(probs)
        self.w = w

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return (self.attention(hidden)[:, 0] @ hidden) * self.w


class ToyModel(nn.Module):
    """One block; the score of class c is ``sum_{i,d} out_{i,d} * v_c[d]``."""

    def __init__(self, embeddings: torch.Tensor, probs: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.block = ToyBlock(probs, w)
        self.v = v

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.block(self.embeddings[ids]).sum(1)) @ self.v.T


def test_hand_computed_toy_model():
    embeddings = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.0, 1.0, 0.0]])
    w = torch.tensor([2.0, -1.0])
    v = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    model = ToyModel(embeddings, probs, w, v)
    ids = torch.tensor([[0, 1, 2]])
    # score_1 = sum_i sum_j P[i,j] (h_j . (w*v_1)); dscore/dh_j = (sum_i P[i,j]) * (w*v_1) = colsum_j * (2, -3)
    # colsum = (0.75, 1.75, 0.5); h.(2,-3) = (-4, 9, -0.5); CAT_j = colsum_j * h_j.(2,-3)
    cat_expected = torch.tensor([[0.75 * -4, 1.75 * 9, 0.5 * -0.5]])
    # received attention: mean over the 3 query rows = colsum / 3
    attcat_expected = cat_expected * torch.tensor([[0.75, 1.75, 0.5]]) / 3
    layers, attention = [model.block], [model.block.attention]
    cat = CAT(model, layers=layers).attribute(ids, target=1)
    attcat = AttCAT(model, layers=layers, attention_modules=attention).attribute(ids, target=1)
    torch.testing.assert_close(cat, cat_expected)
    torch.testing.assert_close(attcat, attcat_expected)
    # a query mask of rows 0 and 1 only: a = (0.75, 0.75, 0.5) / 2
    masked = AttCAT(model, layers=layers, attention_modules=attention).attribute(
        ids, target=1, query_mask=torch.tensor([[1, 1, 0]])
    )
    torch.testing.assert_close(masked, cat_expected * torch.tensor([[0.75, 0.75, 0.5]]) / 2)


def test_definition_against_hidden_states_and_attentions():
    """Recompute AttCAT from transformers' own hidden states and (eager) attentions."""
    model = tiny_bert(attn_implementation="eager")
    ids, mask = padded_batch([9, 6])
    out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    target = torch.tensor([2, 0])
    score = out.logits.gather(1, target[:, None]).sum()
    for use_inputs in (True, False):
        states = out.hidden_states[:-1] if use_inputs else out.hidden_states[1:]
        grads = torch.autograd.grad(score, states, retain_graph=True)
        cat = torch.stack([(g * h).sum(-1) for g, h in zip(grads, states)], 1)
        weights = mask.float() / mask.sum(1, keepdim=True)
        received = torch.stack([(a.mean(1) * weights[:, :, None]).sum(1) for a in out.attentions], 1)
        got = AttCAT(model).attribute(
            ids, target=target, additional_forward_args=(mask,), attribute_to_layer_input=use_inputs,
            return_layer_scores=True,
        )
        torch.testing.assert_close(got, cat * received, rtol=1e-5, atol=1e-7)
        got_cat = CAT(model).attribute(
            ids, target=target, additional_forward_args=(mask,), attribute_to_layer_input=use_inputs,
            return_layer_scores=True,
        )
        torch.testing.assert_close(got_cat, cat, rtol=1e-5, atol=1e-7)


# --- invariants -------------------------------------------------------------------------


@pytest.mark.parametrize("method", [AttCAT, CAT])
def test_layer_scores_sum_to_total(method):
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    explainer = method(model)
    total = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    layers = explainer.attribute(ids, target=1, additional_forward_args=(mask,), return_layer_scores=True)
    assert layers.shape == (2, 3, 8)
    torch.testing.assert_close(layers.sum(1), total)


def test_embeddings_as_inputs_match_token_ids():
    model = tiny_bert()
    ids, mask = padded_batch([6, 4])
    embeddings = model.get_input_embeddings()(ids).detach()
    from_ids = AttCAT(model).attribute(ids, target=0, additional_forward_args=(mask,))
    from_embeddings = AttCAT(model).attribute(embeddings, target=0, additional_forward_args=(mask,))
    torch.testing.assert_close(from_embeddings, from_ids)
    assert not embeddings.requires_grad


def test_registry_lists_both_methods():
    assert METHODS["AttCAT"] is AttCAT and METHODS["CAT"] is CAT


def test_explicit_form_on_a_hugging_face_model_equals_the_automatic_form():
    model = tiny_bert()
    ids, mask = padded_batch([7, 5])
    blocks = list(model.bert.encoder.layer)
    attention = [block.attention for block in blocks]  # the parent of the self-attention module

    def forward(input_ids, attention_mask):
        return model(input_ids, attention_mask=attention_mask).logits

    explicit = AttCAT(forward, layers=blocks, attention_modules=attention)
    automatic = AttCAT(model)
    torch.testing.assert_close(
        explicit.attribute(ids, target=1, additional_forward_args=(mask,)),
        automatic.attribute(ids, target=1, additional_forward_args=(mask,)),
    )
    assert model.config._attn_implementation == "sdpa"
