"""Explaining what a causal language model generates: LLMTransformerAttribution and NextTokens targets."""

from __future__ import annotations

import warnings

import matplotlib
import pytest
import torch
from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTemplateInput, TextTokenInput
from captum.attr._core.llm_attr import LLMAttributionResult

from benchmarks.speed_llm import word_tokenizer
from captum_attcat import CAT, AttCAT, MaskLRP, NextTokens, TransAtt, TransformerAdapter
from captum_attcat.llm import LLMTransformerAttribution, template_features
from conftest import assert_same_state, snapshot, tiny_bert
from support_matrix import FAMILIES, tiny_model

matplotlib.use("Agg")
warnings.filterwarnings("ignore", message=".*generation flags.*")

PROMPT = "the movie was not very good"
RESPONSE = "it is really fun !"


def causal_lm(name: str) -> torch.nn.Module:
    """A tiny random float64 causal LM (vocabulary of 100, as the tokenizer's)."""
    return tiny_model(next(f for f in FAMILIES if f.name == f"{name} (causal LM)"))


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(100)


def make(method: str, model: torch.nn.Module):
    if method == "MaskLRP":
        return MaskLRP(model, head_mask=(torch.arange(2)[:, None] + torch.arange(4)[None]) % 2 == 0)
    return {"AttCAT": AttCAT, "TransAtt": TransAtt, "CAT": CAT}[method](model)


def loop_of_single_calls(explainer, prompt_ids: torch.Tensor, response: torch.Tensor, score: str) -> torch.Tensor:
    """``(response tokens, prompt tokens)``: each response token explained by its own call on the
    prompt and the response before it, with the library's long-standing ``(position, token)``
    target for logits."""
    rows = []
    for k, token in enumerate(response.tolist()):
        ids = torch.cat([prompt_ids, response[:k]])[None]
        position = ids.shape[1] - 1
        target = (position, token) if score == "logit" else NextTokens([position], [token], score)
        scores = explainer.attribute(ids, target=target)
        rows.append((scores if score == "logit" else scores[:, 0])[0, : len(prompt_ids)])
    return torch.stack(rows)


def close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((actual - expected).abs().max()) <= tolerance * scale, (actual, expected)


@pytest.mark.parametrize("family", ["Llama", "GPT-2"])
@pytest.mark.parametrize("method", ["AttCAT", "TransAtt"])
@pytest.mark.parametrize("score", ["log_prob", "logit"])
def test_result_equals_a_loop_of_single_token_calls(family, method, score, tokenizer):
    model = causal_lm(family)
    explainer = make(method, model)
    prompt = TextTokenInput(PROMPT, tokenizer)
    before = snapshot(model)
    result = LLMTransformerAttribution(explainer, tokenizer).attribute(prompt, target=RESPONSE, score=score)
    assert_same_state(before, snapshot(model))
    assert isinstance(result, LLMAttributionResult)
    response = torch.tensor(tokenizer.encode(RESPONSE, add_special_tokens=False))
    assert result.output_tokens == RESPONSE.split()
    assert result.input_tokens == ["<s>", *PROMPT.split()]
    assert result.token_attr.shape == (len(response), len(prompt.values))
    expected = loop_of_single_calls(explainer, prompt.inp_tensor[0], response, score)
    close(result.token_attr, expected)
    torch.testing.assert_close(result.seq_attr, result.token_attr.sum(0))


def test_log_probability_is_what_captums_llm_gradient_attribution_explains(tokenizer):
    """CAT's first term (gradient x input of the first block, Llama's embedding output) equals
    Captum's LLMGradientAttribution(LayerGradientXActivation(embeddings)) token for token."""
    model = causal_lm("Llama")
    prompt = TextTokenInput(PROMPT, tokenizer)
    theirs = LLMGradientAttribution(LayerGradientXActivation(model, model.get_input_embeddings()), tokenizer)
    expected = theirs.attribute(prompt, target=RESPONSE).token_attr
    response = torch.tensor(tokenizer.encode(RESPONSE, add_special_tokens=False))
    ids = torch.cat([prompt.inp_tensor[0], response[:-1]])[None]
    n = prompt.inp_tensor.shape[1]
    target = NextTokens(torch.arange(len(response)) + n - 1, response)
    ours = CAT(model).attribute(ids, target=target, return_layer_scores=True)[0, :, 0, :n]
    close(ours, expected, 1e-9)


def test_log_probability_through_a_forward_function_of_log_softmax(tokenizer):
    """AttCAT of the log-probability equals AttCAT, in Captum's explicit form, of a forward function
    returning the log-softmax, explained at the usual (position, token) targets."""
    model = causal_lm("GPT-2")
    adapter = TransformerAdapter.from_model(model)
    explicit = AttCAT(lambda ids: torch.log_softmax(model(input_ids=ids).logits, -1),
                      layers=adapter.blocks, attention_modules=adapter.attention_modules)
    prompt = TextTokenInput(PROMPT, tokenizer)
    result = LLMTransformerAttribution(AttCAT(model), tokenizer).attribute(prompt, target=RESPONSE)
    expected = loop_of_single_calls(explicit, prompt.inp_tensor[0],
                                    torch.tensor(tokenizer.encode(RESPONSE, add_special_tokens=False)), "logit")
    close(result.token_attr, expected)


@pytest.mark.parametrize("family", ["Llama", "GPT-2"])
@pytest.mark.parametrize("method", ["AttCAT", "TransAtt", "MaskLRP"])
def test_a_list_of_prompts_is_one_padded_batch_equal_to_each_prompt_alone(family, method, tokenizer):
    model = causal_lm(family)
    wrapper = LLMTransformerAttribution(make(method, model), tokenizer)
    prompts = [TextTokenInput(PROMPT, tokenizer), TextTokenInput("bad plot", tokenizer),
               TextTokenInput("a dull film , really", tokenizer)]
    targets = [RESPONSE, "not fun", torch.tensor([20, 7])]
    results = wrapper.attribute(prompts, target=targets)
    assert len(results) == 3
    for prompt, target, result in zip(prompts, targets, results):
        alone = wrapper.attribute(prompt, target=target)
        assert result.output_tokens == alone.output_tokens
        close(result.token_attr, alone.token_attr)


def test_captums_plots_run_on_the_result(tokenizer):
    model = causal_lm("Llama")
    result = LLMTransformerAttribution(AttCAT(model), tokenizer).attribute(TextTokenInput(PROMPT, tokenizer),
                                                                           target=RESPONSE)
    figure, axes = result.plot_token_attr()
    assert [t.get_text() for t in axes.get_yticklabels()] == RESPONSE.split()
    assert [t.get_text() for t in axes.get_xticklabels()] == ["<s>", *PROMPT.split()]
    assert axes.images[0].get_array().shape == (5, 7)
    figure, axes = result.plot_seq_attr()
    heights = [bar.get_height() for bar in axes.patches]
    positive = [max(v, 0) for v in result.seq_attr.tolist()]
    assert heights[:7] == pytest.approx(positive)


def test_the_response_is_generated_when_no_target_is_given(tokenizer):
    model = causal_lm("Llama")
    prompt = TextTokenInput(PROMPT, tokenizer)
    wrapper = LLMTransformerAttribution(TransAtt(model), tokenizer)
    result = wrapper.attribute(prompt, gen_args={"max_new_tokens": 3, "do_sample": False})
    generated = model.generate(prompt.inp_tensor, max_new_tokens=3, do_sample=False)[0, prompt.inp_tensor.shape[1]:]
    assert result.token_attr.shape == (3, len(prompt.values))
    given = wrapper.attribute(prompt, target=generated)
    torch.testing.assert_close(result.token_attr, given.token_attr)


def test_template_features_sum_their_tokens(tokenizer):
    model = causal_lm("Llama")
    wrapper = LLMTransformerAttribution(AttCAT(model), tokenizer)
    template = TextTemplateInput("{} movie was {} .", values=["the", "not very good"])
    by_feature = wrapper.attribute(template, target=RESPONSE)
    by_token = wrapper.attribute(TextTokenInput("the movie was not very good .", tokenizer), target=RESPONSE)
    # tokens: <s> the movie was not very good .  -> "the" is token 1, "not very good" tokens 4-6
    assert by_feature.input_tokens == ["the", "not very good"]
    close(by_feature.token_attr[:, 0], by_token.token_attr[:, 1])
    close(by_feature.token_attr[:, 1], by_token.token_attr[:, 4:7].sum(1))
    grouped = TextTemplateInput("{} movie was {} .", values=["the", "not very good"], mask=[0, 0])
    together = wrapper.attribute(grouped, target=RESPONSE).token_attr
    close(together[:, 0], by_token.token_attr[:, [1, 4, 5, 6]].sum(1))
    close(together[:, 1], together[:, 0])
    features = template_features(TextTemplateInput("{a} is {b}", values={"a": "it", "b": "fun"}), tokenizer)
    assert features.tolist() == [[0, 0], [1, 0], [0, 0], [0, 1]]


def test_skip_tokens_are_no_features(tokenizer):
    model = causal_lm("GPT-2")
    wrapper = LLMTransformerAttribution(AttCAT(model), tokenizer)
    skipped = wrapper.attribute(TextTokenInput(PROMPT, tokenizer, skip_tokens=["<s>"]), target=RESPONSE)
    full = wrapper.attribute(TextTokenInput(PROMPT, tokenizer), target=RESPONSE)
    assert skipped.input_tokens == PROMPT.split()
    torch.testing.assert_close(skipped.token_attr, full.token_attr[:, 1:])


def test_next_tokens_target_checks_and_hides_later_tokens():
    model = causal_lm("Llama")
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    target = NextTokens([[3, 4], [2, 4]], [[9, 10], [11, 12]])
    scores = AttCAT(model).attribute(ids, target=target, additional_forward_args=(mask,))
    assert scores.shape == (2, 2, 7)
    assert scores[0, 0, 4:].eq(0).all() and scores[1, 0, 3:].eq(0).all() and scores[1, 1, 5:].eq(0).all()
    assert scores[0, 0, :4].ne(0).all()
    with pytest.raises(ValueError, match="padding position"):
        AttCAT(model).attribute(ids, target=NextTokens([[3], [6]], [[9], [9]]), additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="outside the sequence"):
        AttCAT(model).attribute(ids, target=NextTokens([7], [9]))
    with pytest.raises(ValueError, match="out of range"):
        AttCAT(model).attribute(ids, target=NextTokens([3], [100]))
    with pytest.raises(ValueError, match="differ in shape"):
        NextTokens([3, 4], [9])
    with pytest.raises(ValueError, match="score"):
        NextTokens([3], [9], score="prob")
    with pytest.raises(TypeError, match="integers"):
        NextTokens(torch.tensor([3.0]), [9])
    with pytest.raises(ValueError, match="causal language model"):
        AttCAT(tiny_bert()).attribute(ids, target=NextTokens([3], [9]))


def test_bad_arguments_are_refused_by_name(tokenizer):
    model = causal_lm("Llama")
    prompt = TextTokenInput(PROMPT, tokenizer)
    with pytest.raises(TypeError, match="attr_method"):
        LLMTransformerAttribution(LayerGradientXActivation(model, model.get_input_embeddings()), tokenizer)
    with pytest.raises(ValueError, match="not a causal language model"):
        LLMTransformerAttribution(AttCAT(tiny_bert()), tokenizer)
    with pytest.raises(TypeError, match="tokenizer"):
        LLMTransformerAttribution(AttCAT(model), object())
    wrapper = LLMTransformerAttribution(AttCAT(model), tokenizer)
    with pytest.raises(ValueError, match="gen_args"):
        wrapper.attribute(prompt, target=RESPONSE, gen_args={"max_new_tokens": 2})
    with pytest.raises(ValueError, match="score"):
        wrapper.attribute(prompt, target=RESPONSE, score="prob")
    with pytest.raises(TypeError, match="inp"):
        wrapper.attribute(PROMPT, target=RESPONSE)
    with pytest.raises(TypeError, match="target"):
        wrapper.attribute(prompt, target=3.5)
    with pytest.raises(ValueError, match="empty"):
        wrapper.attribute(prompt, target="")
    with pytest.raises(ValueError, match="one target per prompt"):
        wrapper.attribute([prompt, prompt], target=[RESPONSE])
    with pytest.raises(ValueError, match="vocabulary"):
        wrapper.attribute(prompt, target=torch.tensor([5, 100]))
    with pytest.raises(ValueError, match="return_layer_scores"):
        wrapper.attribute(prompt, target=RESPONSE, return_layer_scores=True)
