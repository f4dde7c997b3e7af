"""Mask-LRP: TransAtt without a mask, conservation with renormalisation."""

from __future__ import annotations

import pytest
import torch

from captum_attcat import METHODS, HeadMask, MaskLRP, TransAtt

from conftest import padded_batch, tiny_bert

def test_no_mask_is_transatt_and_all_ones_is_not():
    model = tiny_bert()
    ids, mask = padded_batch([9, 6])
    plain = TransAtt(model).attribute(ids, target=1, additional_forward_args=(mask,))
    assert torch.equal(MaskLRP(model).attribute(ids, target=1, additional_forward_args=(mask,)), plain)
    ones = MaskLRP(model, head_mask=torch.ones(3, 4)).attribute(ids, target=1, additional_forward_args=(mask,))
    assert not torch.allclose(ones, plain, rtol=1e-3, atol=0)  # the rollout reads the un-halved relevance of A


@pytest.mark.parametrize("renormalize", [False, True])
def test_relevance_reaching_the_encoder_input(renormalize):
    """Relevance starts as 1.0 at the logit; every rule but the masked product conserves it.
    With renormalisation the masked blocks conserve it too; without, masked heads lose theirs."""
    model = tiny_bert()
    ids, mask = padded_batch([9, 6])
    keep = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    explainer = MaskLRP(model, head_mask=keep, renormalize=renormalize)
    run = explainer.record_relevance(ids, 1, (mask,), blocks=range(3), input_relevance=True)
    total = run.input_relevance.sum((1, 2))
    if renormalize:
        torch.testing.assert_close(total, torch.ones(2), rtol=1e-4, atol=1e-5)
    else:
        assert (total < 0.999).all() and (total > 0).all()
    full = MaskLRP(model, head_mask=torch.ones(3, 4), renormalize=renormalize)
    total_full = full.record_relevance(ids, 1, (mask,), blocks=range(3), input_relevance=True).input_relevance
    torch.testing.assert_close(total_full.sum((1, 2)), torch.ones(2), rtol=1e-4, atol=1e-5)


def test_ablation_variants_run():
    model = tiny_bert()
    ids, mask = padded_batch([7, 5])
    positional = torch.zeros(3, 4, dtype=torch.bool)
    syntactic = torch.zeros(3, 4, dtype=torch.bool)
    positional[0, 1] = syntactic[1, 2] = syntactic[2, 3] = True
    found = HeadMask(positional, syntactic)
    results = {
        kind: MaskLRP(model, head_mask=variant).attribute(ids, target=1, additional_forward_args=(mask,))
        for kind, variant in [("union", found), ("positional", found.only_positional()),
                              ("syntactic", found.only_syntactic()), ("random", found.random(seed=0))]
    }
    assert all(torch.isfinite(r).all() for r in results.values())
    assert not torch.allclose(results["union"], results["positional"], rtol=1e-3, atol=0)
    assert METHODS["MaskLRP"] is MaskLRP


def test_bad_head_masks_are_rejected():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"the head mask has 2 blocks but the model has 3 \(expected shape \(3, heads\)\)"):
        MaskLRP(model, head_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"the head mask has 5 heads per block but the model has 4 \(expected shape \(3, 4\)\)"):
        MaskLRP(model, head_mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"must be a \(blocks, heads\) array"):
        MaskLRP(model, head_mask=torch.ones(12))
    with pytest.raises(ValueError, match="booleans or 0/1"):
        MaskLRP(model, head_mask=torch.full((3, 4), 0.5))


