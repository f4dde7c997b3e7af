"""The public recording API: what a pass records, that its gradients are Captum's, and that a
method written on the public base classes is registered and explained like the library's own."""

from __future__ import annotations

import captum._utils.gradient
import pytest
import torch
from captum.attr import LayerGradientXActivation
from conftest import padded_batch, tiny_bert
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForSequenceClassification

import captum_attcat.base
from captum_attcat import (
    CAT,
    AttCAT,
    METHODS,
    AttentionAttribution,
    AttentionGradientAttribution,
    AttentionGradient,
    GradSAM,
    NextTokens,
    RawAttention,
    Recording,
    TransformerAdapter,
    register_method,
    target_kind,
)
from captum_attcat.maps import head_mean, query_mean


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=2,
                         pad_token_id=0)
    return LlamaForSequenceClassification(config).double().eval()


@pytest.mark.parametrize("family, to_input", [("bert", False), ("llama", True)])
def test_block_gradients_equal_captums_layer_gradient_x_activation(family: str, to_input: bool) -> None:
    """CAT per block is Captum's own LayerGradientXActivation on that block (its output for BERT,
    whose blocks also receive ``None`` masks; its input for Llama, whose blocks receive only the
    hidden states positionally), summed over hidden units."""
    model = tiny_bert().double() if family == "bert" else _llama()
    ids, mask = padded_batch([7, 5])
    blocks = TransformerAdapter.from_model(model).blocks
    ours = CAT(model).attribute(ids, target=[1, 0], additional_forward_args=(mask,), return_layer_scores=True,
                                attribute_to_layer_input=to_input)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    for block, layer in enumerate(blocks):
        theirs = LayerGradientXActivation(forward, layer).attribute(
            ids, target=[1, 0], additional_forward_args=(mask,), attribute_to_layer_input=to_input)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        torch.testing.assert_close(ours[:, block], theirs.sum(-1), rtol=1e-12, atol=1e-12)


def test_gradients_come_from_captums_layer_utility(monkeypatch: pytest.MonkeyPatch) -> None:
    """One call of Captum's ``compute_layer_gradients_and_eval`` per class-target pass on the block
    states; attention gradients (whose copies the utility would keep) and a NextTokens target (one
    backward per token) take their own."""
    calls: list[int] = []
    real = captum._utils.gradient.compute_layer_gradients_and_eval

    def counted(forward_fn, layers, *args, **kwargs):
        calls.append(len(layers))
        return real(forward_fn, layers, *args, **kwargs)

    monkeypatch.setattr(captum_attcat.base, "compute_layer_gradients_and_eval", counted)
    model = tiny_bert()
    ids, mask = padded_batch([7, 5])
    CAT(model).attribute(ids, target=1, additional_forward_args=(mask,))
    GradSAM(model).attribute(ids, target=1, additional_forward_args=(mask,))
    AttCAT(model).attribute(ids, target=1, additional_forward_args=(mask,))
    assert calls == [3, 3]  # CAT's and AttCAT's 3 block states; none for GradSAM
    torch.manual_seed(0)
    causal = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=40)).eval()
    CAT(causal).attribute(ids[:1, :5], target=NextTokens([3, 4], [5, 6]))
    assert calls == [3, 3]


def test_recording_holds_what_was_asked() -> None:
    model = tiny_bert()
    ids, mask = padded_batch([7, 5])
    run = CAT(model).record_gradients(ids, [1, 2], (mask,), attention=True)
    assert isinstance(run, Recording) and len(run.states) == len(run.state_grads) == len(run.attentions) == 3
    assert run.states[0].shape == run.state_grads[0].shape == (2, 7, 32) and run.attentions[0].shape == (2, 4, 7, 7)
    assert not run.attention_grads and run.token_mask.tolist() == mask.float().tolist()
    torch.testing.assert_close(run.scores, model(ids, attention_mask=mask).logits[[0, 1], [1, 2]])
    forward = CAT(model).record_forward(ids, None, (mask,), states=True)
    torch.testing.assert_close(forward.output, model(ids, attention_mask=mask).logits)
    for recorded, again in zip(run.states + run.attentions, forward.states + forward.attentions):
        torch.testing.assert_close(recorded, again)
    assert not forward.state_grads and forward.scores.numel() == 0


@pytest.fixture
def public_methods():
    """Two methods written on the public base classes only, registered for the test and removed after."""

    class FirstRowAttention(AttentionAttribution):
        """Row 0 of the first block's head-mean attention."""

        def attribute(self, inputs, target=None, additional_forward_args=None):
            run = self.record(inputs, target, additional_forward_args)
            return self.explained_row(head_mean(run.attentions[-1]), run.token_mask, target)

    class PositiveLastGradient(AttentionGradientAttribution):
        """The last block's attention gradient, mean over heads and real query rows, clamped at 0."""

        def attribute(self, inputs, target=None, additional_forward_args=None):
            run = self.record(inputs, target, additional_forward_args)
            scores = query_mean(head_mean(run.attention_grads[-1]), run.token_mask).clamp(min=0)
            return scores * run.token_mask

    names = ["FirstRowAttention", "PositiveLastGradient"]
    register_method(names[0])(FirstRowAttention)
    register_method(names[1])(PositiveLastGradient)
    try:
        yield names
    finally:
        for name in names:
            METHODS.pop(name)


def test_a_method_from_public_names_is_registered_and_explains(public_methods) -> None:
    """Written on the public bases, the two methods equal the library's RawAttention and
    AttentionGradient, and refuse a target kind they do not accept by name."""
    model = tiny_bert()
    ids, mask = padded_batch([7, 5])
    first, gradient = (METHODS[name](model) for name in public_methods)
    assert torch.equal(first.attribute(ids, additional_forward_args=(mask,)),
                       RawAttention(model).attribute(ids, additional_forward_args=(mask,)))
    assert torch.equal(gradient.attribute(ids, target=[1, 2], additional_forward_args=(mask,)),
                       AttentionGradient(model).attribute(ids, target=[1, 2], additional_forward_args=(mask,)))
    gradient.accepted_targets = frozenset({"class"})
    assert target_kind([(1, 0), (2, 0)]) == "position"
    with pytest.raises(ValueError, match="PositiveLastGradient explains class targets only; got a position target"):
        gradient.attribute(ids, target=[(1, 0), (2, 0)], additional_forward_args=(mask,))
