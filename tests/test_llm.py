"""Explaining what a causal language model generates: LLMTransformerAttribution and NextTokens targets."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTemplateInput, TextTokenInput
from captum.attr._core.llm_attr import LLMAttributionResult

from benchmarks.speed_llm import word_tokenizer
from captum_attcat import CAT, AttCAT, MaskLRP, NextTokens, TransAtt, TransformerAdapter
from captum_attcat.llm import LLMTransformerAttribution, template_features
from conftest import assert_same_state, snapshot, tiny_bert
from support_matrix import FAMILIES, tiny_model
from test_heads import PatternAttention

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


@pytest.mark.parametrize("method, default", [("AttCAT", "log_prob"), ("TransAtt", "logit"), ("MaskLRP", "logit")])
def test_the_default_score_is_the_log_probability_for_gradients_and_the_logit_for_lrp(method, default, tokenizer):
    wrapper = LLMTransformerAttribution(make(method, causal_lm("Llama")), tokenizer)
    prompt = TextTokenInput(PROMPT, tokenizer)
    by_default = wrapper.attribute(prompt, target=RESPONSE).token_attr
    other = {"log_prob": "logit", "logit": "log_prob"}[default]
    torch.testing.assert_close(by_default, wrapper.attribute(prompt, target=RESPONSE, score=default).token_attr)
    assert (by_default - wrapper.attribute(prompt, target=RESPONSE, score=other).token_attr).abs().max() > 1e-6


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


# --- head statistics of causal models (Mask-LRP on decoders) --------------------------------


class CausalPatternAttention(PatternAttention):
    """Causal attention with two heads: head 0 attends to the previous word piece; head 1 from a
    dependent's first piece to its governor's first piece when the governor comes first, else to
    position 0."""

    is_causal = True

    def key(self, query: int, links: dict[int, int]) -> int:
        governor = links.get(query, 0)
        return governor if governor < query else 0


def test_causal_head_statistics_look_from_the_later_word_of_each_dependency():
    from test_heads import CORPUS, PatternModel, _first_pieces
    from transformers import BertTokenizerFast

    from captum_attcat import HeadMask, head_statistics
    from captum_attcat.heads import parse_conllu
    from conftest import SHARED

    tokenizer = BertTokenizerFast(str(SHARED / "data" / "bert_base_uncased_vocab" / "vocab.txt"))
    sentences = list(parse_conllu(CORPUS))
    governor_of = {}
    for sentence in sentences:
        ids = tuple(tokenizer(list(sentence.words), is_split_into_words=True)["input_ids"])
        first = _first_pieces(tokenizer, sentence.words)
        governor_of[ids] = {first[w]: first[g] for w, g in enumerate(sentence.governors) if g >= 0}
    model = PatternModel(governor_of)
    model.attention = CausalPatternAttention(governor_of)
    stats = head_statistics(model, tokenizer, sentences, batch_size=3, layers=[model.attention],
                            attention_modules=[model.attention], progress=False)
    assert stats.causal
    # every pair is looked up from its later word: nsubj dog<-barked -1, she<-ate -1, he<-read -2;
    # amod big<-dog -1, red<-apples -1, [gr ##ump ##iest]<-book -3..-1, tall<-gr -1; advmod
    # loudly->barked -1, quickly<-read -1; obj apples->ate -2, book->read -5
    assert stats.relation_counts == {"nsubj": 3, "obj": 2, "amod": 4, "advmod": 2}
    assert stats.baseline("nsubj") == pytest.approx(2 / 3) and stats.best_offset("nsubj") == -1
    assert stats.baseline("amod") == 1.0 and stats.best_offset("amod") == -1
    assert stats.baseline("advmod") == 1.0 and stats.baseline("obj") == 0.5
    assert stats.offset_counts[..., stats.max_offset + 1:].sum() == 0  # nothing later is visible
    assert stats.positional_share()[0, 0] == 1.0
    # head 1 finds loudly->barked, apples->ate and book->read, looked up from the dependent
    assert stats.alpha("obj")[0, 1] == 1.0 and stats.alpha("advmod")[0, 1] == 0.5
    assert stats.alpha("nsubj")[0, 1] == 0.0 and stats.alpha("amod")[0, 1] == 0.0
    mask = HeadMask.from_statistics(stats)
    assert mask.positional.tolist() == [[True, False]] and mask.syntactic.tolist() == [[False, True]]


def test_causal_head_statistics_of_a_llama_count_what_its_attention_shows(tokenizer):
    """Offsets of every query's argmax key, recounted from the model's attention maps one sentence at
    a time: the first token is no query, and nothing later than the query is ever the argmax."""
    from captum_attcat import head_statistics, read_conllu
    from captum_attcat._utils.forward import attention_maps
    from conftest import SHARED

    model = causal_lm("Llama")
    sentences = read_conllu(SHARED / "data" / "ud_english_ewt" / "en_ewt-ud-dev.conllu")[:10]
    stats = head_statistics(model, tokenizer, sentences, batch_size=4, progress=False)
    adapter = TransformerAdapter.from_model(model)
    counts = torch.zeros(2, 4, 2 * stats.max_offset + 1, dtype=torch.long)
    queries = 0
    for sentence in sentences:
        encoded = tokenizer(list(sentence.words), is_split_into_words=True, return_tensors="pt")
        words = [w is not None for w in encoded.word_ids()]
        _, maps = attention_maps(adapter, encoded["input_ids"], encoded["attention_mask"])
        for query in range(1, len(words)):
            if not words[query]:
                continue
            queries += 1
            for block, probs in enumerate(maps):
                for head in range(4):
                    counts[block, head, int(probs[0, head, query].argmax()) - query + stats.max_offset] += 1
    assert stats.queries == queries
    np.testing.assert_array_equal(stats.offset_counts, counts.numpy())
    assert stats.causal and stats.offset_counts[..., stats.max_offset + 1:].sum() == 0


# --- the notebook -------------------------------------------------------------------------------


NOTEBOOK = "explain_generation.ipynb"


def _notebook_text(notebook) -> tuple[str, int]:
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                texts.append(output["text"])
            images += "image/png" in output.get("data", {})
    return "\n".join(texts), images


def _check_notebook_outputs(notebook) -> None:
    text, images = _notebook_text(notebook)
    assert "tiny Llama trained in this notebook" in text and "causal: True" in text
    for name in ("AttCAT", "TransAtt", "MaskLRP", "Captum LayerGradientXActivation"):
        assert f"{name} " in text and "token_attr (6, 8)" in text
    assert "['the food', 'good'] (6, 2)" in text
    assert images >= 7  # head mask, four token heatmaps, the seq panels, the template heatmap


def test_the_generation_notebook_executes(monkeypatch):
    import os

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(notebooks.parent),
                                                                   os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(notebooks / NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(notebooks)}}).execute()
    _check_notebook_outputs(notebook)


def test_the_committed_generation_notebook_holds_a_run():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / NOTEBOOK, as_version=4)
    assert all(c.get("execution_count") for c in notebook.cells if c.cell_type == "code")
    _check_notebook_outputs(notebook)


def test_the_cost_harness_measures_every_runner():
    from benchmarks.speed_llm import CAPTUM, measure, table

    result = measure("gpt2", prompt_len=4, response_len=3, vocab_size=100, hidden_size=32, layers=2, heads=4)
    assert set(result["seconds"]) == {"AttCAT", "CAT", "TransAtt", "MaskLRP", CAPTUM}
    assert result["ratio_to_captum"][CAPTUM] == 1.0 and all(s > 0 for s in result["seconds"].values())
    assert result["floor_s"] == pytest.approx(result["floor_forward_s"] + 3 * result["floor_backward_per_token_s"])
    assert "| | TransAtt |" in table([result])
