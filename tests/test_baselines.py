"""Attention baselines, GAE and the LRP-based methods: invariants, other architectures
(the authors' vectors: tests/test_reference_vectors.py)."""

from __future__ import annotations

import pytest
import torch

from captum_attcat import (
    GAE,
    METHODS,
    AttentionGradCAM,
    AttentionGradient,
    AttentionRollout,
    GradSAM,
    PartialLRP,
    RawAttention,
    TransAtt,
    TransformerLRP,
)

from conftest import padded_batch, tiny_bert, tiny_model

NEW_METHODS = [RawAttention, AttentionRollout, AttentionGradient, AttentionGradCAM, GradSAM, GAE,
               TransformerLRP, PartialLRP, TransAtt]


def _explain(reference, model, method, **kwargs) -> torch.Tensor:
    ids = torch.tensor(reference["input_ids"])
    mask = torch.tensor(reference["attention_masks"]["full"])
    return method(model).attribute(ids, target=reference["target"], additional_forward_args=(mask,), **kwargs)


@pytest.mark.parametrize("method", [AttentionGradient, AttentionGradCAM, GradSAM])
def test_query_mask_of_the_query_averaging_baselines(method):
    """With [CLS] hidden, the default rows (the attention mask) leave out the only row the
    classifier reads, so these baselines give nothing; every row (query_mask) gives scores."""
    model = tiny_bert()
    ids, mask = padded_batch([9, 6])
    hidden = mask.clone()
    hidden[:, 0] = 0
    explainer = method(model)
    default = explainer.attribute(ids, target=0, additional_forward_args=(hidden,))
    every_row = explainer.attribute(ids, target=0, additional_forward_args=(hidden,), query_mask=mask)
    if method is not GradSAM:  # GradSAM also sums lower blocks, where every row has gradient
        assert torch.all(default == 0)
    assert every_row.abs().sum() > 0 and not torch.equal(every_row, default)
    same = explainer.attribute(ids, target=0, additional_forward_args=(mask,), query_mask=mask)
    torch.testing.assert_close(same, explainer.attribute(ids, target=0, additional_forward_args=(mask,)))
    with pytest.raises(ValueError, match="query mask selects no query row"):
        explainer.attribute(ids, target=0, additional_forward_args=(mask,), query_mask=torch.zeros_like(ids))


def test_cls_values(reference, reference_model):
    """What each method returns at [CLS] (position 0), as the README states."""
    for method in (RawAttention, AttentionRollout, AttentionGradCAM, PartialLRP, TransAtt):
        assert _explain(reference, reference_model, method)[0, 0] == 0, method.__name__
    gae = _explain(reference, reference_model, GAE)[0]
    assert gae[0] >= 1  # R = I + ...: the identity stays on the diagonal
    lrp = _explain(reference, reference_model, TransformerLRP)[0]
    assert lrp[0] > 0.05  # the relevance [CLS] really receives ...
    torch.testing.assert_close(lrp.sum(), torch.tensor(1.0), rtol=0, atol=1e-5)  # ... so the scores sum to 1
    gradient = _explain(reference, reference_model, AttentionGradient)[0]
    assert gradient[0] > 0  # every key is scored alike, [CLS] included


# --- definitions recomputed from transformers' own attentions ----------------------------


def test_definitions_against_transformers_attentions():
    model = tiny_bert(attn_implementation="eager")
    ids, mask = padded_batch([9, 6])
    target = torch.tensor([2, 0])
    out = model(ids, attention_mask=mask, output_attentions=True)
    attentions = out.attentions
    grads = torch.autograd.grad(out.logits.gather(1, target[:, None]).sum(), attentions)
    m = mask.float()
    rows = m / m.sum(1, keepdim=True)
    raw = attentions[-1].mean(1)[:, 0] * m
    raw[:, 0] = 0
    torch.testing.assert_close(RawAttention(model).attribute(ids, additional_forward_args=(mask,)), raw)
    expected_gradient = ((grads[-1].mean(1) * rows[:, :, None]).sum(1)).clamp(min=0) * m
    torch.testing.assert_close(
        AttentionGradient(model).attribute(ids, target=target, additional_forward_args=(mask,)), expected_gradient
    )
    sam = torch.stack([(a * g.clamp(min=0)).mean(1) for a, g in zip(attentions, grads)]).mean(0)
    torch.testing.assert_close(
        GradSAM(model).attribute(ids, target=target, additional_forward_args=(mask,)),
        (sam * rows[:, :, None]).sum(1) * m,
    )
    relevance = torch.eye(9).expand(2, 9, 9)
    for a, g in zip(attentions, grads):
        relevance = relevance + (a * g).clamp(min=0).mean(1) @ relevance
    torch.testing.assert_close(
        GAE(model).attribute(ids, target=target, additional_forward_args=(mask,)), relevance[:, 0] * m
    )


# --- invariants -------------------------------------------------------------------------


def test_a_decoder_is_read_at_its_last_real_token():
    """GPT-2's head reads the last real token: row-reading methods read that query row."""
    model = tiny_model("gpt2")
    model.set_attn_implementation("eager")  # so that the model returns its attentions
    ids, mask = padded_batch([6, 4], pad=0)
    out = model(ids, attention_mask=mask, output_attentions=True)
    last = torch.tensor([5, 3])
    expected = out.attentions[-1].mean(1)[torch.arange(2), last] * mask
    torch.testing.assert_close(RawAttention(model).attribute(ids, additional_forward_args=(mask,)), expected)
    assert expected[:, 1:].abs().sum() > 0  # row 0 of a causal model would only see itself


def test_attention_only_methods_need_no_target():
    model = tiny_bert()  # 3 classes
    ids, mask = padded_batch([6, 4])
    for method in (RawAttention, AttentionRollout):
        scores = method(model).attribute(ids, additional_forward_args=(mask,))
        assert torch.equal(scores, method(model).attribute(ids, target=2, additional_forward_args=(mask,)))
        with pytest.raises(ValueError, match="out of range"):
            method(model).attribute(ids, target=3, additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="`target` is required"):
        GAE(model).attribute(ids, additional_forward_args=(mask,))


@pytest.mark.parametrize("start_layer", [-1, 3, 1.0, True])
def test_bad_start_layer(start_layer):
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"`start_layer` must be an int in \[0, 3\)"):
        TransAtt(model).attribute(torch.tensor([[5, 6, 7]]), target=0, start_layer=start_layer)


def test_start_layer_last_is_the_last_block_alone():
    """TransAtt from the last block: (Ā + I) row-normalised, row 0, where Ā = mean_h (grad A ⊙ R_A)^+."""
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    explainer = TransAtt(model)
    run = explainer.record_relevance(ids, 1, (mask,), blocks=[2], attention_grads=True)
    bar = (run.attention_grads[0] * run.attention_relevance[0]).clamp(min=0).mean(1) + torch.eye(8)
    expected = (bar / bar.sum(-1, keepdim=True))[:, 0] * mask
    expected[:, 0] = 0
    torch.testing.assert_close(explainer.attribute(ids, target=1, additional_forward_args=(mask,), start_layer=2),
                               expected)


def test_registry_lists_every_method():
    for method in NEW_METHODS:
        assert METHODS[method.__name__] is method
    assert {m.floor_budget for m in (TransformerLRP, PartialLRP, TransAtt)} == {2.5}
    assert {m.floor_budget for m in (RawAttention, AttentionRollout, AttentionGradient, AttentionGradCAM,
                                     GradSAM, GAE)} == {1.3}
