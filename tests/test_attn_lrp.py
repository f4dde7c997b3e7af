"""AttnLRP: its rules checked by hand, and the whole method against an independent gradient x input
implementation of the paper's rules written here with plain torch (module patches, no engine)."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, LlamaConfig, LlamaForSequenceClassification
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from captum_attcat import AttnLRP, TransformerLRP
from captum_attcat.lrp.engine import Propagation, lrp_forward

from conftest import padded_batch, tiny_bert


# --- the rules, by hand ------------------------------------------------------------------------


def _implicit_relevance(fn, x: torch.Tensor) -> torch.Tensor:
    """Relevance at ``x`` of ``fn(x).sum()`` in gradient x input form, under the engine."""
    propagation = Propagation(implicit=True)
    leaf = x.clone().requires_grad_()
    with lrp_forward(propagation):
        output = fn(leaf)
    (relevance,) = propagation.relevance(output.sum(), [leaf])
    return relevance


def test_uniform_rule_gives_each_factor_half():
    """``x * x``: each factor receives half of the output's relevance, so ``x`` receives all of it."""
    x = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(_implicit_relevance(lambda t: t * t, x), x * x, rtol=1e-15, atol=0)
    # a product with a constant is a linear map: all of it, by the gradient
    torch.testing.assert_close(_implicit_relevance(lambda t: t * 3.0, x), 3.0 * x, rtol=1e-15, atol=0)


def test_identity_rule_through_activations():
    """An elementwise non-linearity hands each entry its output's relevance (0 at ``x = 0``)."""
    x = torch.tensor([1.5, -2.0, 0.0, 0.3], dtype=torch.float64)
    torch.testing.assert_close(_implicit_relevance(F.gelu, x), F.gelu(x), rtol=1e-15, atol=0)
    torch.testing.assert_close(_implicit_relevance(torch.tanh, x), torch.tanh(x), rtol=1e-15, atol=0)


def test_softmax_rule():
    """``R_x = x * (R_s - s * sum(R_s))`` with ``R_s = s * w`` for the score ``sum(s * w)``."""
    x = torch.tensor([[0.5, -1.0, 2.0, 0.1]], dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    s = torch.softmax(x, -1)
    r_s = s * w
    expected = x * (r_s - s * r_s.sum(-1, keepdim=True))
    got = _implicit_relevance(lambda t: torch.softmax(t, -1) * w, x)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-16)


def test_layer_norm_keeps_its_standard_deviation_constant():
    """LayerNorm: the centring and the affine map are linear layers (bias included), the division
    by the standard deviation the identity rule."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, dtype=torch.float64)
    weight, bias = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    std = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    ((leaf - leaf.mean(-1, keepdim=True)) / std * weight + bias).sum().backward()
    got = _implicit_relevance(lambda t: F.layer_norm(t, (6,), weight, bias, 1e-5), x)
    torch.testing.assert_close(got, x * leaf.grad, rtol=1e-13, atol=1e-15)


# --- the whole method against an implementation by hand -----------------------------------------


class _Identity(torch.autograd.Function):
    """``f(x)`` with the gradient ``f(x) / x`` (0 where x is 0)."""

    @staticmethod
    def forward(ctx, x, f):
        y = f(x)
        ctx.save_for_backward(torch.nan_to_num(y / x, nan=0.0, posinf=0.0, neginf=0.0))
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.saved_tensors[0], None


class _Half(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad / 2


def _attention_by_hand(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with the uniform rule on both products."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = _Half.apply(query) @ _Half.apply(key).transpose(2, 3) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, -1)
    return (_Half.apply(probs) @ _Half.apply(value)).transpose(1, 2).contiguous(), probs


AttentionInterface.register("attnlrp_by_hand", _attention_by_hand)
AttentionMaskInterface.register("attnlrp_by_hand", eager_mask)


def _patched_by_hand(model: nn.Module) -> nn.Module:
    """The model with AttnLRP's rules as gradients: activations and RMSNorm by the identity rule,
    LayerNorm's standard deviation constant, products halved for each operand."""
    for module in model.modules():
        name = type(module).__name__
        if isinstance(module, nn.LayerNorm):
            def layer_norm(self, x):
                centered = x - x.mean(-1, keepdim=True)
                std = (centered.pow(2).mean(-1, keepdim=True) + self.eps).sqrt().detach()
                return centered / std * self.weight + self.bias
            module.forward = types.MethodType(layer_norm, module)
        elif name == "LlamaRMSNorm":  # the identity rule on the model's own norm (which rounds to float32)
            original = module.forward
            module.forward = lambda x, original=original: _Identity.apply(x, original)
        elif name == "LlamaMLP":
            def gated(self, x):
                gate = _Identity.apply(self.gate_proj(x), self.act_fn)
                return self.down_proj(_Half.apply(gate) * _Half.apply(self.up_proj(x)))
            module.forward = types.MethodType(gated, module)
        elif name in ("GELUActivation", "Tanh"):
            original = module.forward
            module.forward = lambda x, original=original: _Identity.apply(x, original)
    model.config._attn_implementation = "attnlrp_by_hand"
    return model


def _by_hand(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, target: int) -> torch.Tensor:
    """Relevance at the first block's input: that input times its gradient, summed over hidden units."""
    reference = _patched_by_hand(__import__("copy").deepcopy(model))
    blocks = reference.model.layers if hasattr(reference, "model") else reference.bert.encoder.layer
    seen: list[torch.Tensor] = []

    def leaf(module, args, kwargs):
        seen.append(args[0].detach().requires_grad_())
        return (seen[-1], *args[1:]), kwargs

    handle = blocks[0].register_forward_pre_hook(leaf, with_kwargs=True)
    try:
        logits = reference(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, target].sum(), seen[0])
    return (seen[0] * grad).sum(-1) * mask


def _tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, num_labels=2, pad_token_id=0)
    return LlamaForSequenceClassification(config).eval()


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_attn_lrp_equals_the_rules_by_hand(family):
    """Every rule at once on a tiny BERT (LayerNorm, GELU, pooler tanh) and a tiny Llama with grouped
    queries (RMSNorm, gated MLP, rotary embeddings), padded batch, float64."""
    model = (tiny_bert(seed=3) if family == "bert" else _tiny_llama()).double()
    ids, mask = padded_batch([9, 6])
    got = AttnLRP(model).attribute(ids, target=1, additional_forward_args=(mask,))
    expected = _by_hand(model, ids, mask, 1)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)
    assert not torch.allclose(got, TransformerLRP(model).attribute(ids, target=1, additional_forward_args=(mask,)))


def test_attn_lrp_takes_no_rules():
    with pytest.raises(TypeError):
        AttnLRP(tiny_bert(), rules=None)  # type: ignore[call-arg]
