"""The speed harness measures what it claims: the floor's gradient and the budget check."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from benchmarks.speed import explainer_for, failures, gradient_floor, table
from captum_attcat import MaskLRP, TransAtt

from conftest import padded_batch, tiny_bert


def test_floor_is_the_gradient_with_respect_to_the_embedding_output():
    model = tiny_bert()
    ids, mask = padded_batch([6, 4])
    target = torch.tensor([2, 1])
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    expected = torch.autograd.grad(out.logits.gather(1, target[:, None]).sum(), out.hidden_states[0])[0]
    torch.testing.assert_close(gradient_floor(model, ids, mask, target), expected)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_budgets_are_checked():
    result = {
        "batch_size": 32,
        "seconds": {"floor": 1.0, "AttCAT": 1.2, "CAT": 1.4, "LayerIntegratedGradients": 20.0},
        "ratio_to_floor": {"floor": 1.0, "AttCAT": 1.2, "CAT": 1.4, "LayerIntegratedGradients": 20.0},
        "attcat_speedup_over_ig": 20.0 / 1.2,
        "budgets": {"AttCAT": 1.3, "CAT": 1.3},
    }
    assert failures([result]) == ["CAT at batch 32: 1.40x > 1.3x", "AttCAT vs IG at batch 32: 16.7x < 25x"]
    text = table([result])
    assert "| CAT | <= 1.3x | 1.4000 / 1.40x |" in text and "batch 32: 16.7x" in text


def test_mask_lrp_is_measured_with_the_minilm_head_mask():
    """MaskLRP without a mask would be TransAtt; the harness gives it the 3 heads found for MiniLM."""
    config = BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=32, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    explainer = explainer_for(MaskLRP, model)
    assert explainer.head_mask.shape == (6, 12) and int(explainer.head_mask.tensor().sum()) == 3
    assert isinstance(explainer_for(TransAtt, model), TransAtt)


def test_the_harness_measures_a_llama_of_the_same_size_too():
    from benchmarks.speed import main, minilm_sized_model

    llama = minilm_sized_model(architecture="llama")
    assert type(llama).__name__ == "LlamaForSequenceClassification"
    assert (llama.config.num_hidden_layers, llama.config.num_attention_heads, llama.config.hidden_size) == (6, 12, 384)
    with pytest.raises(SystemExit) as exit_info:  # peak memory is measured on the BERT only
        main(["--architecture", "llama"])
    assert exit_info.value.code == 2
