"""Text records for Captum, the standalone HTML export, the per-block heatmap, the head-mask plot."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest
import torch
from captum.attr import visualization as captum_visualization

from captum_attcat import CAT, METHODS, AttCAT, register_method
from captum_attcat.base import TransformerAttribution
from captum_attcat.visualization import (
    TextExplanation,
    explain_text,
    explanation_html,
    layer_heatmap,
    merge_subwords,
    plot_head_mask,
    save_html,
    scale_scores,
    signed_color,
    visualization_records,
)

import textmodels

TEXT = "an unflinchingly bleak & <desperate> tale"


@pytest.fixture(scope="module")
def tokenizer():
    return textmodels.tokenizer()


@pytest.fixture(scope="module")
def model():
    return textmodels.classifier()


class _Spans(HTMLParser):
    """Collects every token span: (method of its row, class list, data-score, data-raw, style, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict] = []
        self.method: str | None = None
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-method" in attrs:
            self.method = attrs["data-method"]
        if tag == "span" and "tok" in (attrs.get("class") or "").split():
            self._open = {"method": self.method, "classes": attrs["class"].split(), "score": float(attrs["data-score"]),
                          "raw": float(attrs["data-raw"]), "style": attrs["style"], "text": ""}

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def _hue(style: str) -> tuple[int, int]:
    hue, _, lightness = map(int, re.search(r"hsl\((\d+), (\d+)%, (\d+)%\)", style).groups())
    return hue, lightness


# --- scaling and merging -----------------------------------------------------------------


def test_scale_scores_keeps_sign_and_zero_rows():
    scaled = scale_scores(torch.tensor([[2.0, -4.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(scaled, torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        scale_scores(torch.tensor([1.0, float("nan")]))


def test_merge_subwords_word_ids_and_wordpiece_agree(tokenizer):
    encoding = tokenizer(TEXT)
    tokens = encoding.tokens()
    scores = torch.arange(len(tokens), dtype=torch.float32) - 5
    by_ids, merged_ids = merge_subwords(tokens, scores, encoding.word_ids())
    by_pieces, merged_pieces = merge_subwords(tokens, scores)
    assert by_ids == by_pieces == ["[CLS]", "an", "unflinchingly", "bleak", "&", "<", "desperate", ">", "tale", "[SEP]"]
    torch.testing.assert_close(merged_ids, merged_pieces)
    pieces = [i for i, w in enumerate(encoding.word_ids()) if w == 1]
    assert len(pieces) > 1  # "unflinchingly" really is several pieces
    assert merged_ids[2] == scores[pieces].sum()
    assert merged_ids.sum() == scores.sum()  # "sum" keeps the total
    _, peak = merge_subwords(["a", "##b", "##c"], [0.5, -2.0, 1.0], reduce="max")
    assert peak.tolist() == [-2.0]
    _, mean = merge_subwords(["a", "##b"], [1.0, 2.0], reduce="mean")
    assert mean.tolist() == [1.5]
    with pytest.raises(ValueError, match="one score per token"):
        merge_subwords(["a", "b"], [1.0])


# --- Captum records ----------------------------------------------------------------------


def test_records_round_trip_into_visualize_text(model, tokenizer):
    texts = ["a charming and often affecting journey", "unflinchingly bleak and desperate"]
    encoding = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = encoding["input_ids"], encoding["attention_mask"]
    assert (mask == 0).any()  # the batch really is padded
    scores = AttCAT(model).attribute(ids, target=1, additional_forward_args=(mask,))
    with torch.no_grad():
        probabilities = model(ids, attention_mask=mask).logits.softmax(-1)
    records = visualization_records(
        scores, ids, tokenizer, target=1, probabilities=probabilities, true_labels=[1, 0],
        attention_mask=mask, class_names=["negative", "positive"], merge=True,
        word_ids=[encoding.word_ids(i) for i in range(2)],
    )
    assert [r.raw_input_ids for r in records] == [
        ["[CLS]", "a", "charming", "and", "often", "affecting", "journey", "[SEP]"],
        ["[CLS]", "unflinchingly", "bleak", "and", "desperate", "[SEP]"],
    ]
    for i, record in enumerate(records):
        kept = scores[i][mask[i].bool()]
        assert record.word_attributions.abs().max() == pytest.approx(1.0)
        assert record.attr_score == pytest.approx(float(kept.sum()), rel=1e-5)
        assert record.pred_class == ["negative", "positive"][int(probabilities[i].argmax())]
        assert record.pred_prob == pytest.approx(float(probabilities[i].max()))
        assert record.attr_class == "positive"
    assert [r.true_class for r in records] == ["positive", "negative"]
    # "unflinchingly" is several pieces: its word score is their summed score, then scaled
    keep = mask[1].bool()
    _, words_raw = merge_subwords(
        tokenizer.convert_ids_to_tokens(ids[1][keep]), scores[1][keep],
        [w for w, k in zip(encoding.word_ids(1), keep.tolist()) if k],
    )
    pieces = scores[1][[i for i, w in enumerate(encoding.word_ids(1)) if w == 0]]
    assert len(pieces) > 1 and words_raw[1] == pieces.sum()
    torch.testing.assert_close(records[1].word_attributions, words_raw / words_raw.abs().max())

    page = captum_visualization.visualize_text(records).data
    marks = re.findall(r"<mark[^>]*>(.*?)</mark>", page, flags=re.S)
    assert len(marks) == sum(len(r.raw_input_ids) for r in records)
    assert "unflinchingly" in page and "[PAD]" not in page
    assert f"{records[0].pred_class} ({records[0].pred_prob:.2f})" in page  # prediction and probability


def test_records_without_merge_keep_tokens_and_check_shapes(model, tokenizer):
    encoding = tokenizer([TEXT], return_tensors="pt")
    ids = encoding["input_ids"]
    scores = CAT(model).attribute(ids, target=0)
    (record,) = visualization_records(scores, ids, tokenizer, target=0)
    assert record.raw_input_ids == encoding.tokens()
    assert record.word_attributions.shape == (ids.shape[1],)
    assert record.true_class == 0 and np.isnan(record.pred_prob)
    with pytest.raises(ValueError, match="differ in shape"):
        visualization_records(scores[:, :-1], ids, tokenizer, target=0)


# --- several methods, standalone HTML -------------------------------------------------------


def test_explain_text_runs_the_registered_methods(model, tokenizer):
    explanation = explain_text(model, tokenizer, TEXT)
    needing = {name for name, cls in METHODS.items() if cls.required_arguments}
    assert {"MaskLRP", "ContrastCAT"} <= needing
    assert list(explanation.scores) == sorted(set(METHODS) - needing)
    assert set(explanation.skipped) == needing and "head_mask" in explanation.skipped["MaskLRP"]
    with pytest.raises(ValueError, match="MaskLRP needs `head_mask`"):
        explain_text(model, tokenizer, TEXT, methods=["MaskLRP"])
    mask = torch.ones(model.config.num_hidden_layers, model.config.num_attention_heads)
    given = explain_text(model, tokenizer, TEXT, methods=["MaskLRP"], init_kwargs={"MaskLRP": {"head_mask": mask}})
    assert list(given.scores) == ["MaskLRP"] and not given.skipped
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    predicted = int(model(ids).logits.argmax())
    assert explanation.target == explanation.predicted == predicted
    expected = AttCAT(model).attribute(ids, target=predicted, additional_forward_args=(torch.ones_like(ids),))
    torch.testing.assert_close(explanation.scores["AttCAT"], expected[0])
    other = explain_text(model, tokenizer, TEXT, methods=["CAT"], target=1 - predicted)
    torch.testing.assert_close(other.scores["CAT"], CAT(model).attribute(ids, target=1 - predicted)[0])
    with pytest.raises(KeyError, match="registered"):
        explain_text(model, tokenizer, TEXT, methods=["NoSuchMethod"])


def test_a_newly_registered_method_needs_no_code_change(model, tokenizer):
    @register_method("LastBlockInputXGradient")
    class LastBlock(TransformerAttribution):
        needs_attention = False

        def attribute(self, inputs, target=None, additional_forward_args=None):
            run = self.record_gradients(inputs, target, additional_forward_args)
            return (run.state_grads[-1] * run.states[-1]).sum(-1)

    try:
        explanation = explain_text(model, tokenizer, TEXT, methods=["AttCAT", "LastBlockInputXGradient"])
        ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
        expected = CAT(model).attribute(ids, target=explanation.target, return_layer_scores=True)[0, -1]
        torch.testing.assert_close(explanation.scores["LastBlockInputXGradient"], expected)
        page = explanation_html(explanation)
        assert 'data-method="LastBlockInputXGradient"' in page
    finally:
        del METHODS["LastBlockInputXGradient"]


def test_html_has_one_signed_coloured_element_per_token(model, tokenizer, tmp_path):
    explanation = explain_text(model, tokenizer, TEXT, methods=["AttCAT", "CAT"])
    explanation.add("Given", torch.linspace(-1, 1, len(explanation.tokens)))
    before = {k: v.clone() for k, v in explanation.scores.items()}
    path = save_html(tmp_path / "page.html", [explanation, explanation.merged()])
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page  # standalone, static

    parser = _Spans()
    parser.feed(page)
    n_tokens, n_words = len(explanation.tokens), len(explanation.merged().tokens)
    assert len(parser.spans) == 3 * n_tokens + 3 * n_words
    first = [s for s in parser.spans[: 3 * n_tokens]]
    for method in ("AttCAT", "CAT", "Given"):
        row = [s for s in first if s["method"] == method]
        assert [s["text"] for s in row] == explanation.tokens  # "&", "<", ">" survive escaping
        raw = explanation.scores[method]
        torch.testing.assert_close(torch.tensor([s["raw"] for s in row]), raw, rtol=1e-5, atol=1e-30)
        for span, value in zip(row, scale_scores(raw).tolist()):
            sign = "pos" if value > 0 else "neg" if value < 0 else "zero"
            assert sign in span["classes"]
            assert span["score"] == pytest.approx(value, abs=1e-4)
            hue, lightness = _hue(span["style"])
            if value > 0:
                assert hue == 120 and lightness < 100
            elif value < 0:
                assert hue == 0 and lightness < 100
    given = [s for s in first if s["method"] == "Given"]
    assert given[0]["classes"][-1] == "neg" and given[-1]["classes"][-1] == "pos"
    assert _hue(given[0]["style"]) == (0, 60) and _hue(given[-1]["style"]) == (120, 50)  # full strength
    assert {s["text"] for s in parser.spans[3 * n_tokens:]} >= {"unflinchingly"}
    for key, value in before.items():  # drawing changed nothing
        assert torch.equal(explanation.scores[key], value)


def test_explanation_add_checks_length():
    explanation = TextExplanation(tokens=["a", "b"])
    with pytest.raises(ValueError, match="2 tokens"):
        explanation.add("x", [1.0, 2.0, 3.0])
    assert signed_color(0.0) == "hsl(0, 0%, 100%)"
    assert signed_color(5.0) == signed_color(1.0)


# --- per-block heatmap ---------------------------------------------------------------------


def test_layer_heatmap_has_one_row_per_block_plus_the_sum(model, tokenizer, tmp_path):
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    per_block = AttCAT(model).attribute(ids, target=1, return_layer_scores=True)
    blocks = model.config.num_hidden_layers
    assert per_block.shape == (1, blocks, ids.shape[1])
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    copy = per_block.clone()
    fig = layer_heatmap(per_block[0], tokens, title="AttCAT per block")
    assert torch.equal(per_block, copy)

    ax = fig.axes[0]
    (image,) = ax.get_images()
    grid = np.asarray(image.get_array())
    assert grid.shape == (blocks + 1, len(tokens))
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"block {i}" for i in range(1, blocks + 1)] + ["sum"]
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    np.testing.assert_allclose(grid[:blocks], scale_scores(per_block[0]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(grid[-1], scale_scores(per_block[0].sum(0)).numpy(), rtol=1e-6)
    # the sum row is the explanation AttCAT returns
    total = AttCAT(model).attribute(ids, target=1)[0]
    np.testing.assert_allclose(grid[-1], scale_scores(total).numpy(), rtol=1e-5, atol=1e-7)

    path = tmp_path / "layers.png"
    fig.savefig(path, dpi=fig.dpi)
    pixels = matplotlib.image.imread(path)[..., :3]
    width, height = fig.get_size_inches() * fig.dpi
    assert pixels.shape[:2] == (round(height), round(width))
    # the PNG shows every cell in its colour: sample each cell's centre
    cmap, norm = image.get_cmap(), image.norm
    for row in range(blocks + 1):
        for col in range(len(tokens)):
            x, y = ax.transData.transform((col, row))
            pixel = pixels[int(pixels.shape[0] - y), int(x)]
            np.testing.assert_allclose(pixel, cmap(norm(grid[row, col]))[:3], atol=0.02)

    global_fig = layer_heatmap(per_block[0], tokens, normalize="global")
    global_grid = np.asarray(global_fig.axes[0].get_images()[0].get_array())
    np.testing.assert_allclose(global_grid[:blocks], (per_block[0] / per_block[0].abs().max()).numpy(), rtol=1e-6)


def test_layer_heatmap_rejects_bad_shapes(model, tokenizer):
    with pytest.raises(ValueError, match="3 tokens"):
        layer_heatmap(torch.zeros(2, 4), ["a", "b", "c"])
    with pytest.raises(ValueError, match="blocks, seq"):
        layer_heatmap(torch.zeros(4), ["a", "b", "c", "d"])


# --- head mask ------------------------------------------------------------------------------


def test_plot_head_mask_shows_both_kinds(tmp_path):
    positional = np.zeros((6, 12), bool)
    syntactic = np.zeros((6, 12), bool)
    positional[0, 3] = positional[2, 5] = True
    syntactic[4, 7] = syntactic[2, 5] = True
    fig = plot_head_mask(positional=positional, syntactic=torch.from_numpy(syntactic), title="MiniLM heads")
    grid = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert grid.shape == (6, 12)
    assert grid[0, 3] == 1 and grid[4, 7] == 2 and grid[2, 5] == 3 and grid.sum() == 6
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["neither", "positional", "syntactic", "both"]
    fig.savefig(tmp_path / "heads.png")

    class Mask:  # anything with the two boolean arrays, as a Mask-LRP head mask
        def __init__(self):
            self.positional, self.syntactic = positional, syntactic

    from_object = np.asarray(plot_head_mask(Mask()).axes[0].get_images()[0].get_array())
    np.testing.assert_array_equal(from_object, grid)
    single = np.asarray(plot_head_mask(positional | syntactic).axes[0].get_images()[0].get_array())
    np.testing.assert_array_equal(single > 0, positional | syntactic)
    with pytest.raises(ValueError, match="differ in shape"):
        plot_head_mask(positional=positional, syntactic=syntactic[:, :4])
    with pytest.raises(ValueError, match="blocks, heads"):
        plot_head_mask(np.zeros(12, bool))
