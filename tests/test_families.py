"""Llama-style rules, attention keywords and block finding on tiny models of several families."""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_attcat import AttCAT, MaskLRP, TransAtt, TransformerLRP
from captum_attcat.lrp import ProductRule
from conftest import assert_same_state, snapshot
from support_matrix import FAMILIES, tiny_model

warnings.filterwarnings("ignore", message=".*was not found in the config.*")


def family(name: str):
    return next(f for f in FAMILIES if f.name == name)


def test_elementwise_product_rule_gives_each_factor_half():
    g = torch.Generator().manual_seed(0)
    # factors away from 0, so that the stabiliser (1e-9 added to a * b) does not show
    a, b = (torch.rand(2, 5, 8, dtype=torch.float64, generator=g) + 0.5 for _ in range(2))
    relevance = torch.randn(2, 5, 8, dtype=torch.float64, generator=g)
    ra, rb = ProductRule().elementwise_relevance(a, b, a * b, relevance)
    torch.testing.assert_close(ra, 0.5 * relevance)
    torch.testing.assert_close(rb, 0.5 * relevance)
    shared = torch.rand(1, 5, 8, dtype=torch.float64, generator=g) + 0.5  # a broadcast factor receives the sum over the batch
    ra, _ = ProductRule().elementwise_relevance(shared, b, shared * b, relevance)
    torch.testing.assert_close(ra, 0.5 * relevance.sum(0, keepdim=True))


@pytest.mark.parametrize("name", ["Llama", "Gemma-2", "Qwen2", "GPT-NeoX", "Phi-3", "GPT-J", "ALBERT", "Falcon",
                                  "Mixtral", "Qwen2-MoE", "gpt-oss", "BLOOM", "BigBird", "ESM"])
def test_relevance_is_conserved_through_every_family_rule(name):
    """RMSNorm, rotary embeddings, gated MLPs, soft-capping, a shared layer, linear layers written as
    ``x @ W.T``, mixture-of-experts routing, GELUs written with erf or made during the forward:
    TransformerLRP's scores still sum to the 1.0 started at the logit."""
    model = tiny_model(family(name))
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    if name in ("Falcon", "BLOOM"):  # their in-place scaling of attention scores has no rule
        pytest.skip(f"{name}: refused, see the support matrix")
    scores = TransformerLRP(model).attribute(ids, target=[0, 1], additional_forward_args=(torch.ones_like(ids),))
    atol = 1e-6 if scores.dtype == torch.float64 and model.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(scores.sum(1), torch.ones(2, dtype=scores.dtype), rtol=0, atol=atol)


def test_mixture_of_experts_routing_weights_pass_gradients_but_no_relevance():
    """Mixtral's router: the gradients through the routing weights are the model's own, while the
    router itself receives no relevance (all of an expert's goes to the expert)."""
    from captum_attcat.lrp import routing_modules

    model = tiny_model(family("Mixtral"))
    assert {type(m).__name__ for m in routing_modules([model])} == {"MixtralTopKRouter"}
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(9))
    explainer = TransAtt(model)
    run = explainer.record_relevance(ids, [0, 1], None, blocks=[0, 1], attention_grads=True)
    plain = explainer.record_gradients(ids, [0, 1], None, block_inputs=None, attention_grads=True)
    for ours, theirs in zip(run.attention_grads, plain.attention_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    assert model.config._experts_implementation != "eager"  # switched for the pass only


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method", ["TransAtt", "MaskLRP"])
def test_llama_batch_equals_one_by_one_with_padding_on_either_side(side, method):
    model = tiny_model(family("Llama"))
    model.config.padding_side = side
    generator = torch.Generator().manual_seed(3)
    lengths = [7, 4]
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        where = slice(0, n) if side == "right" else slice(7 - n, 7)
        ids[row, where] = torch.randint(5, 100, (n,), generator=generator)
        mask[row, where] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # as generate() gives them: left padding shifts nothing
    head_mask = (torch.arange(2)[:, None] + torch.arange(4)[None]) % 2 == 0
    explainer = TransAtt(model) if method == "TransAtt" else MaskLRP(model, head_mask=head_mask)
    before = snapshot(model)
    batch = explainer.attribute(ids, target=[0, 1], additional_forward_args=(mask, positions))
    assert_same_state(before, snapshot(model))
    for row, n in enumerate(lengths):
        real = mask[row].bool()
        alone = explainer.attribute(ids[row:row + 1, real], target=row, additional_forward_args=(mask[row:row + 1, real],))
        torch.testing.assert_close(batch[row, real], alone[0], rtol=1e-9, atol=1e-12)
        assert batch[row, ~real].eq(0).all()


def test_gradient_mode_through_llama_rules_gives_the_ordinary_gradients():
    model = tiny_model(family("Llama"))
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    explainer = TransAtt(model)
    run = explainer.record_relevance(ids, [0, 1], None, blocks=[0, 1], attention_grads=True)
    plain = explainer.record_gradients(ids, [0, 1], None, block_inputs=None, attention_grads=True)
    for ours, theirs in zip(run.attention_grads, plain.attention_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_soft_capping_and_sinks_are_applied():
    """Gemma-2's soft-capping and gpt-oss's sinks change the probabilities: a row of gpt-oss's sums to
    less than 1, and Gemma-2's explained logits are its own."""
    gemma = tiny_model(family("Gemma-2"))
    ids = torch.randint(5, 100, (1, 6), generator=torch.Generator().manual_seed(2))
    run = AttCAT(gemma).record_gradients(ids, 0, None, attention=True)
    # (Gemma-2's own eager softmax runs in float32 even in a float64 model, hence 1e-6)
    torch.testing.assert_close(run.scores, gemma(input_ids=ids).logits[:, 0].detach(), rtol=0, atol=1e-6)
    attentions = [m for m in gemma.modules() if hasattr(m, "attn_logit_softcapping")]
    for module in attentions:  # without soft-capping the logits differ: dropping it could not go unseen
        module.attn_logit_softcapping = None
    assert (gemma(input_ids=ids).logits[:, 0].detach() - run.scores).abs().max() > 1e-3
    oss = tiny_model(family("gpt-oss"))
    run = AttCAT(oss).record_gradients(ids, 0, None, attention=True)
    assert (run.attentions[0].sum(-1) < 1 - 1e-4).all()
    torch.testing.assert_close(run.scores, oss(input_ids=ids).logits[:, 0].detach(), rtol=0, atol=1e-6)


def test_an_unknown_attention_keyword_is_refused_by_name():
    from captum_attcat._utils.attention import _dispatch_attention

    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(NotImplementedError, match="passes `position_bias` to its attention implementation"):
        _dispatch_attention(torch.nn.Module(), q, q, q, None, position_bias=torch.zeros(1))


def test_a_model_with_its_own_attention_code_must_be_loaded_eager():
    model = tiny_model(family("Falcon"))
    model.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match='Load it with attn_implementation="eager"'):
        AttCAT(model)


@pytest.mark.parametrize("name", ["BART", "T5"])
def test_encoder_decoder_models_are_refused(name):
    with pytest.raises(ValueError, match="encoder-decoder model"):
        AttCAT(tiny_model(family(name)))


def test_a_shared_layer_is_one_block_per_application():
    model = tiny_model(family("ALBERT"))
    explainer = TransAtt(model)
    assert len(explainer.adapter.blocks) == 2 and explainer.adapter.blocks[0] is explainer.adapter.blocks[1]
    ids = torch.randint(5, 100, (1, 6), generator=torch.Generator().manual_seed(4))
    run = explainer.record_relevance(ids, 0, None, blocks=[0, 1], attention_grads=True)
    assert all(r.count_nonzero() for r in run.attention_relevance)
    assert not torch.equal(run.attentions[0], run.attentions[1])


def test_a_language_model_explains_a_next_token_given_as_position_and_token_id():
    model = tiny_model(family("Llama (causal LM)"))
    ids = torch.randint(5, 100, (2, 5), generator=torch.Generator().manual_seed(5))
    scores = AttCAT(model).attribute(ids, target=[(4, 7), (4, 9)])
    assert scores.shape == (2, 5)
    with pytest.raises(TypeError, match=r"\(position, token_id\) for a language model's next token"):
        AttCAT(model).attribute(ids, target=7)


def _relevance_of(fn, *shapes):
    """Gradient and relevance of ``fn(*inputs).sum()`` under the LRP engine, float64."""
    from captum_attcat.lrp import Propagation, lrp_forward

    g = torch.Generator().manual_seed(6)
    inputs = [torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True) for shape in shapes]
    propagation = Propagation()
    with lrp_forward(propagation):
        output = fn(*inputs)
    grads = propagation.gradients(output.sum(), inputs, retain_graph=True)
    relevance = propagation.relevance(output.sum(), inputs)
    expected = torch.autograd.grad(fn(*inputs).sum(), inputs)
    for grad, plain in zip(grads, expected):
        torch.testing.assert_close(grad, plain)  # gradient mode is the chain rule
    return inputs, output.detach(), relevance


def test_a_gelu_written_with_erf_passes_relevance_unchanged():
    import math

    (x,), _, (relevance,) = _relevance_of(lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))), (3, 4))
    torch.testing.assert_close(relevance, torch.ones_like(x))


def test_subtraction_is_the_add_rule_with_a_negated_operand():
    cos, sin = torch.rand(4, dtype=torch.float64) + 0.5, torch.rand(4, dtype=torch.float64) + 0.5
    (a, b), _, (ra, rb) = _relevance_of(lambda a, b: a * cos - b * sin, (2, 3, 4), (2, 3, 4))
    torch.testing.assert_close((ra + rb).sum((1, 2)), torch.full((2,), 12.0, dtype=torch.float64))
    (x,), _, (rx,) = _relevance_of(lambda x: 3.0 - x, (2, 5))  # minus the input: relevance unchanged
    torch.testing.assert_close(rx, torch.ones_like(x))


def test_a_product_with_a_transposed_weight_is_that_linear_layer():
    """Falcon's linear layers compute ``x @ W.T``: the same relevance as ``F.linear(x, W)``, and a
    per-module rule given for the layer applies."""
    import torch.nn.functional as F

    from captum_attcat.lrp import EpsilonRule, LRPRules, Propagation, lrp_forward

    layer = torch.nn.Linear(4, 3, bias=False).double().requires_grad_(False)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for fn in (lambda t: t @ layer.weight.T, lambda t: F.linear(t, layer.weight)):
        for rules in (LRPRules(), LRPRules(modules={layer: EpsilonRule()})):
            propagation = Propagation(rules)
            with lrp_forward(propagation):
                y = fn(x)
            results.append(propagation.relevance(y.sum(), [x])[0])
    torch.testing.assert_close(results[0], results[2])
    torch.testing.assert_close(results[1], results[3])
    assert not torch.allclose(results[0], results[1])


@pytest.mark.parametrize("name", ["BLOOM", "DeBERTa-v2"])
def test_the_head_mask_applies_where_the_model_multiplies_a_reshaped_copy(name):
    """BLOOM and DeBERTa-v2 multiply the values by a (batch * heads) view of the probabilities they
    return: the head mask still applies there, so which heads are kept changes the result."""
    model = tiny_model(family(name))
    ids = torch.randint(5, 100, (1, 6), generator=torch.Generator().manual_seed(7))
    every = torch.ones(2, 4, dtype=torch.bool)
    some = every.clone()
    some[1, :3] = False
    received = []
    for mask in (every, some):
        run = MaskLRP(model, head_mask=mask).record_relevance(ids, 0, None, blocks=range(2), attention_grads=True)
        received.append(run.recorder.received)
    assert received[0][0].shape == run.attentions[0].shape  # (batch, heads, queries, keys)
    torch.testing.assert_close(received[0][1], received[1][1])  # the last block receives the same ...
    change = (received[0][0] - received[1][0]).abs().max() / received[0][0].abs().max()
    assert change > 1e-5  # ... and passes less down through its masked heads (0 if the mask were ignored)


def test_a_vision_transformer_is_explained_per_patch():
    """ViT reads pixel values; every method scores [CLS] + patches, laid out as the image's grid."""
    from captum_attcat import METHODS
    from captum_attcat.vision import overlay_patch_map, patch_map

    model = tiny_model(family("ViT"))
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    for name, cls in sorted(METHODS.items()):
        scores = cls(model).attribute(images, target=[0, 1])
        assert scores.shape == (2, 1 + 16), name
    grid = patch_map(scores, model)
    assert grid.shape == (2, 4, 4) and torch.equal(grid[1, 1], scores[1, 5:9])
    conserved = TransformerLRP(model).attribute(images, target=[0, 1]).sum(1)
    torch.testing.assert_close(conserved, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-4)
    ax = overlay_patch_map(images[0], grid[0])
    assert len(ax.images) == 2


def test_vision_inputs_are_checked():
    model = tiny_model(family("ViT"))
    with pytest.raises(ValueError, match="must be floating pixel values"):
        AttCAT(model).attribute(torch.randint(0, 5, (1, 8)), target=0)
    with pytest.raises(ValueError, match="have 1 channels but the model reads 3"):
        AttCAT(model).attribute(torch.randn(1, 1, 32, 32, dtype=torch.float64), target=0)
    with pytest.raises(TypeError, match="are torch.float32 but the model is torch.float64"):
        AttCAT(model).attribute(torch.randn(1, 3, 32, 32), target=0)
    from captum_attcat.vision import patch_map

    with pytest.raises(ValueError, match="cannot hold a 4 x 4 grid"):
        patch_map(torch.zeros(1, 10), model)


def test_swin_is_refused_since_its_blocks_see_different_tokens():
    with pytest.raises(ValueError, match="attends within windows or changes the sequence between blocks"):
        AttCAT(tiny_model(family("Swin"))).attribute(torch.randn(1, 3, 32, 32, dtype=torch.float64), target=0)


def test_activations_made_during_the_forward_are_one_operation_and_leave_no_global_hook():
    """BigBird's head makes its GELU module during the forward (``ACT2FN[name](x)``): it still
    passes relevance unchanged, and the global module hooks that catch it are gone afterwards."""
    import torch.nn.modules.module as module_hooks

    before = (len(module_hooks._global_forward_hooks), len(module_hooks._global_forward_pre_hooks))
    model = tiny_model(family("BigBird"))
    ids = torch.randint(5, 100, (1, 6), generator=torch.Generator().manual_seed(10))
    scores = TransformerLRP(model).attribute(ids, target=0)
    torch.testing.assert_close(scores.sum(1), torch.ones(1, dtype=scores.dtype), rtol=0, atol=1e-6)
    assert (len(module_hooks._global_forward_hooks), len(module_hooks._global_forward_pre_hooks)) == before


@pytest.mark.parametrize("groups, channels_in, channels_out", [(1, 4, 6), (4, 4, 4), (2, 4, 6)])
def test_a_convolution_is_a_linear_layer_over_windows(groups, channels_in, channels_out):
    """ConvBERT's convolutions: the same output and gradients as ``F.conv1d``, and (alpha1-beta0,
    no bias) each output unit with positive contributions hands all its relevance to the input (a
    unit without any, ``z+ = 0``, passes nothing on)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(11)
    weight = torch.randn(channels_out, channels_in // groups, 3, dtype=torch.float64, generator=g)
    conv = lambda x, w=weight: F.conv1d(x, w, padding=1, groups=groups)  # noqa: E731
    (x,), output, (relevance,) = _relevance_of(conv, (2, channels_in, 7))
    torch.testing.assert_close(output, conv(x))
    x = x.detach()
    positive = conv(x.clamp(min=0), weight.clamp(min=0)) + conv(x.clamp(max=0), weight.clamp(max=0))
    torch.testing.assert_close(relevance.sum((1, 2)), (positive > 0).sum((1, 2)).double())


def test_multi_head_attention_with_a_learned_query_is_written_out_with_the_rules():
    """SigLIP's pooling head (``nn.MultiheadAttention`` with a constant query): the same output and
    gradients as torch's, and the keys and values receive all the relevance."""
    from captum_attcat.lrp import Propagation, lrp_forward

    torch.manual_seed(12)
    attention = torch.nn.MultiheadAttention(8, 2, batch_first=True).double().eval().requires_grad_(False)
    probe = torch.randn(1, 1, 8, dtype=torch.float64).expand(2, 1, 8)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    propagation = Propagation()
    with lrp_forward(propagation):
        output = attention(probe, hidden, hidden)[0]
    expected = attention(probe, hidden, hidden)[0]
    torch.testing.assert_close(output, expected)
    (grad,) = propagation.gradients(output.sum(), [hidden], retain_graph=True)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), hidden)[0])
    (relevance,) = propagation.relevance(output[:, 0, 0].sum(), [hidden])
    torch.testing.assert_close(relevance.sum((1, 2)), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-5)  # conserved
