"""The model is left exactly as it was given, after a call returns or raises."""

from __future__ import annotations

import pytest
import torch

from captum_attcat import CAT, AttCAT

from conftest import padded_batch, tiny_bert


def _snapshot(model: torch.nn.Module) -> dict:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            + len(m._forward_hooks_with_kwargs) + len(m._forward_pre_hooks_with_kwargs)
            for m in model.modules()
        ),
        "attn": model.config._attn_implementation,
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["attn"] == before["attn"]
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(after["grads"][name], grad), name
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), name


def _unusual_model() -> torch.nn.Module:
    """Train mode, one frozen weight, one existing .grad: all must survive."""
    model = tiny_bert(attn_implementation="sdpa").train()
    model.bert.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 0.5)
    return model


@pytest.mark.parametrize("method", [AttCAT, CAT])
def test_state_restored_after_return(method):
    model = _unusual_model()
    ids, mask = padded_batch([6, 4])
    before = _snapshot(model)
    scores = method(model).attribute(ids, target=1, additional_forward_args=(mask,))
    _assert_same(before, _snapshot(model))
    # the explanation ran in eval mode (dropout off): it equals the one of an eval-mode copy
    model.eval()
    torch.testing.assert_close(method(model).attribute(ids, target=1, additional_forward_args=(mask,)), scores)


@pytest.mark.parametrize("method", [AttCAT, CAT])
def test_state_restored_after_raise(method):
    model = _unusual_model()
    ids, mask = padded_batch([6, 4])
    before = _snapshot(model)
    with pytest.raises(ValueError, match="out of range"):
        method(model).attribute(ids, target=7, additional_forward_args=(mask,))
    _assert_same(before, _snapshot(model))


def test_inputs_left_unchanged():
    model = tiny_bert()
    ids, mask = padded_batch([6, 4])
    embeddings = model.get_input_embeddings()(ids).detach()
    copies = ids.clone(), mask.clone(), embeddings.clone()
    AttCAT(model).attribute(ids, target=1, additional_forward_args=(mask,))
    AttCAT(model).attribute(embeddings, target=1, additional_forward_args=(mask,))
    assert torch.equal(ids, copies[0]) and torch.equal(mask, copies[1]) and torch.equal(embeddings, copies[2])
    assert not embeddings.requires_grad and embeddings.grad is None
