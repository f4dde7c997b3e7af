"""Question-answering models as explained models: start/end targets, AnswerSpan, rows."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

from captum_attcat import AnswerSpan, AttCAT, CAT, RawAttention, logits_of, span_attribution, target_kind
from captum_attcat.base import explained_scores
from conftest import assert_same_state, padded_batch, snapshot, tiny_qa_model

LENGTHS = [11, 7, 9]
SPANS = AnswerSpan(start=[4, 2, 6], end=[6, 2, 8])


def _batch():
    ids, mask = padded_batch(LENGTHS)
    return ids, mask


def test_logits_of_stacks_start_and_end() -> None:
    model = tiny_qa_model("bert")
    ids, mask = _batch()
    out = model(input_ids=ids, attention_mask=mask)
    scores = logits_of(out)
    assert scores.shape == (3, 11, 2)
    assert torch.equal(scores[..., 0], out.start_logits) and torch.equal(scores[..., 1], out.end_logits)


def test_answer_span_selects_start_plus_end_by_hand() -> None:
    scores = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)  # value = 10 b + 2 pos + part
    span = AnswerSpan([1, 0], [3, 4])
    assert explained_scores(scores, span).tolist() == [2.0 + 7.0, 10.0 + 19.0]
    assert explained_scores(scores, AnswerSpan([1, 0], [3, 4], part="end")).tolist() == [7.0, 19.0]
    assert explained_scores(scores, [(1, 0), (4, 1)]).tolist() == [2.0, 19.0]
    assert explained_scores(scores, (2, 1)).tolist() == [5.0, 15.0]


def test_span_is_start_plus_end_for_every_method(method_case) -> None:
    """AnswerSpan = attribution of (start, 0) + attribution of (end, 1), on a padded batch,
    and each example as if alone; the model is left as it was."""
    model = tiny_qa_model("bert")
    explainer = method_case(model)
    ids, mask = _batch()
    if "answer_span" not in explainer.accepted_targets:  # ContrastCAT with references: refused by name
        with pytest.raises(ValueError, match="explains class targets only; got an answer span target"):
            explainer.attribute(ids, target=SPANS, additional_forward_args=(mask,))
        return
    before = snapshot(model)
    both = explainer.attribute(ids, target=SPANS, additional_forward_args=(mask,))
    assert_same_state(before, snapshot(model))
    start = explainer.attribute(ids, target=SPANS.pairs("start"), additional_forward_args=(mask,))
    end = explainer.attribute(ids, target=SPANS.pairs("end"), additional_forward_args=(mask,))
    assert both.shape == ids.shape
    torch.testing.assert_close(both, start + end, rtol=1e-5, atol=1e-6)
    only_start = explainer.attribute(ids, target=AnswerSpan(SPANS.start, SPANS.end, part="start"),
                                     additional_forward_args=(mask,))
    assert torch.equal(only_start, start)
    assert (both[mask == 0] == 0).all()
    for i, n in enumerate(LENGTHS):
        alone = explainer.attribute(ids[i:i + 1, :n], target=AnswerSpan(int(SPANS.start[i]), int(SPANS.end[i])),
                                    additional_forward_args=(mask[i:i + 1, :n],))
        torch.testing.assert_close(alone[0], both[i, :n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["roberta", "distilbert", "gpt2"])
def test_other_qa_families(family: str, method_case) -> None:
    model = tiny_qa_model(family)
    ids, mask = padded_batch([9, 6], pad=1 if family == "roberta" else 0)
    ids = ids.clamp(min=2) * mask + (1 if family == "roberta" else 0) * (1 - mask)
    explainer = method_case(model)
    if "answer_span" not in explainer.accepted_targets:
        with pytest.raises(ValueError, match="explains class targets only"):
            explainer.attribute(ids, target=AnswerSpan([3, 1], [5, 4]), additional_forward_args=(mask,))
        return
    scores = explainer.attribute(ids, target=AnswerSpan([3, 1], [5, 4]), additional_forward_args=(mask,))
    assert scores.shape == ids.shape and torch.isfinite(scores).all() and (scores[mask == 0] == 0).all()
    assert scores.abs().sum() > 0


def test_position_targets_read_the_explained_row() -> None:
    """Row-reading methods read the row of the explained token, keeping every value."""
    model = tiny_qa_model("bert")
    model.set_attn_implementation("eager")
    ids, mask = _batch()
    last = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].mean(1)
    got = RawAttention(model).attribute(ids, target=[(4, 0), (2, 0), (6, 1)], additional_forward_args=(mask,))
    for i, row in enumerate([4, 2, 6]):
        torch.testing.assert_close(got[i], last[i, row] * mask[i], rtol=1e-6, atol=1e-7)


def test_linear_methods_take_one_pass_equal_to_the_sum() -> None:
    model = tiny_qa_model("bert")
    ids, mask = _batch()
    for cls in (CAT, AttCAT):
        explainer = cls(model)
        assert explainer.linear_in_target
        one = explainer.attribute(ids, target=SPANS, additional_forward_args=(mask,))
        two = (explainer.attribute(ids, target=SPANS.pairs("start"), additional_forward_args=(mask,))
               + explainer.attribute(ids, target=SPANS.pairs("end"), additional_forward_args=(mask,)))
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-7)


def test_span_attribution_with_captum_methods() -> None:
    model = tiny_qa_model("bert")
    ids, mask = _batch()
    embeds = model.get_input_embeddings()(ids).detach()

    def forward(e, m):
        return logits_of(model(inputs_embeds=e, attention_mask=m))

    for method in (Saliency(forward), IntegratedGradients(forward)):
        kwargs = {"n_steps": 8} if isinstance(method, IntegratedGradients) else {}
        got = span_attribution(method.attribute, embeds, SPANS, (mask,), **kwargs)
        want = (method.attribute(embeds, target=SPANS.pairs("start"), additional_forward_args=(mask,), **kwargs)
                + method.attribute(embeds, target=SPANS.pairs("end"), additional_forward_args=(mask,), **kwargs))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("target, error, words", [
    (1, TypeError, "(start, 0)"),
    ([1, 2, 3], TypeError, "per token"),
    ((40, 0), ValueError, "outside the sequence"),
    ((1, 2), ValueError, "2 scores per token"),
    ([(1, 0)], ValueError, "1 (position, index) pairs for a batch of 3"),
    (AnswerSpan([1, 2], [2, 3]), ValueError, "2 spans for a batch of 3"),
    (AnswerSpan([1, 2, 9], [2, 3, 9]), ValueError, "start 9 (example 2) is a padding position"),
    (AnswerSpan([1, 2, 3], [2, 3, 11]), ValueError, "outside the sequence of 11"),
])
def test_bad_qa_targets(target, error, words: str, method_case) -> None:
    model = tiny_qa_model("bert")
    ids, mask = _batch()
    before = snapshot(model)
    explainer = method_case(model)
    if target_kind(target) not in explainer.accepted_targets:  # refused for its kind before it is read
        error, words = ValueError, f"{type(explainer).__name__} explains class targets only"
    with pytest.raises(error) as info:
        explainer.attribute(ids, target=target, additional_forward_args=(mask,))
    assert words in str(info.value)
    assert_same_state(before, snapshot(model))


def test_answer_span_checks_its_own_form() -> None:
    with pytest.raises(ValueError, match="start 5 is after end 3"):
        AnswerSpan(5, 3)
    with pytest.raises(TypeError, match="token positions"):
        AnswerSpan(1.5, 3)
    with pytest.raises(ValueError, match="part"):
        AnswerSpan(1, 3, part="middle")
    with pytest.raises(ValueError, match="2 start but 1 end"):
        AnswerSpan([1, 2], [3])


def test_answer_span_on_a_classifier_is_refused() -> None:
    from conftest import tiny_bert

    ids, mask = _batch()
    with pytest.raises(ValueError, match="question-answering model"):
        CAT(tiny_bert()).attribute(ids, target=AnswerSpan(1, 2), additional_forward_args=(mask,))
