"""Question answering end to end: SQuAD files, windows, EM/F1, Precision@K and the runner on tiny
real BERT, RoBERTa and GPT-2 question-answering models."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from benchmarks.metrics import precision_at_k
from benchmarks.run import main
from benchmarks.squad import (QAExample, answer_window, best_spans, encode_windows, load_squad, split_articles,
                              squad_scores)

CONTEXTS = [
    ("the broncos won the super bowl in 2016 . the panthers lost the game in the rain .",
     [("who won the super bowl ?", "the broncos"), ("when did the panthers lose ?", "in the rain")]),
    ("denver is a city . it is high in the mountains and the city is very cold in the winter .",
     [("what is denver ?", "a city"), ("where is denver ?", "in the mountains")]),
    ("the game was long and the team played well . " * 4 + "the final score was seven to three .",
     [("what was the final score ?", "seven to three")]),
]
WORDS = sorted({w for c, qa in CONTEXTS for w in (c + " " + " ".join(q + " " + a for q, a in qa)).split()}
               | {"what", "?", "unknown"})


def squad_json(contexts=CONTEXTS, impossible: bool = False) -> dict:
    paragraphs = []
    for c, (context, qas) in enumerate(contexts):
        items = [{"id": f"q{c}-{i}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
                 for i, (q, a) in enumerate(qas)]
        if impossible and c == 0:
            items.append({"id": "q0-none", "question": "what is unknown ?", "answers": [], "is_impossible": True})
        paragraphs.append({"context": context, "qas": items})
    return {"version": "test", "data": [{"title": "Sport", "paragraphs": paragraphs}]}


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("squad") / "never_seen.json"
    path.write_text(json.dumps(squad_json(impossible=True)))
    return path


def _save_bert_qa(d: Path) -> Path:
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"), model_max_length=64)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertForQuestionAnswering(cfg).eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _save_bpe_qa(d: Path, family: str) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (GPT2Config, GPT2ForQuestionAnswering, GPT2TokenizerFast, RobertaConfig,
                              RobertaForQuestionAnswering, RobertaTokenizerFast)

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([c for c, _ in CONTEXTS] + [q for _, qa in CONTEXTS for q, _ in qa],
                            vocab_size=320, min_frequency=1, special_tokens=specials, show_progress=False)
    bpe.save_model(str(d))
    torch.manual_seed(0)
    if family == "roberta":
        tok = RobertaTokenizerFast(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"),
                                   model_max_length=64)
        cfg = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=66, pad_token_id=tok.pad_token_id)
        model = RobertaForQuestionAnswering(cfg)
    else:
        tok = GPT2TokenizerFast(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"),
                                model_max_length=64, pad_token="<|endoftext|>")
        cfg = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=64,
                         pad_token_id=tok.pad_token_id)
        model = GPT2ForQuestionAnswering(cfg)
    model.eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def qa_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qa_models")
    dirs = {family: root / family for family in ("bert", "roberta", "gpt2")}
    for family, d in dirs.items():
        d.mkdir()
        _save_bert_qa(d) if family == "bert" else _save_bpe_qa(d, family)
    return dirs


# --------------------------------------------------------------------------- data


def test_vendored_squad_and_the_article_split() -> None:
    examples = load_squad()
    assert len(examples) == 10570 and len({e.article for e in examples}) == 48
    train, held_out = split_articles(examples)
    assert (len(train), len(held_out)) == (8595, 1975)
    assert not {e.context for e in train} & {e.context for e in held_out}
    assert sorted({e.article for e in held_out}) == [4, 9, 14, 19, 24, 29, 34, 39, 44]
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "squad_v1.1" / "dev-v1.1.json"
    if shared.is_file():
        assert gzip.decompress((Path(__file__).resolve().parents[2] / "benchmarks" / "data" /
                                "squad_dev_v1.1.json.gz").read_bytes()) == shared.read_bytes()


def test_jsonl_rows_read_like_the_json(tmp_path: Path, qa_file: Path) -> None:
    rows = [{"id": e.id, "title": e.title, "context": e.context, "question": e.question,
             "answers": {"text": [t for t, _ in e.answers], "answer_start": [s for _, s in e.answers]}}
            for e in load_squad(qa_file)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [(e.id, e.question, e.context, e.answers) for e in load_squad(path)] == \
        [(e.id, e.question, e.context, e.answers) for e in load_squad(qa_file)]
    assert sum(not e.answerable for e in load_squad(path)) == 1


@pytest.mark.parametrize("content, words", [
    ("", "empty"),
    ("{not json", "not valid JSON"),
    ('{"data": 3}', "not a SQuAD file"),
    ('{"data": [{"title": "t", "paragraphs": [{"context": "a b", "qas": [{"id": "x", "question": "q?", '
     '"answers": []}]}]}]}', "question 'x' has no answers"),
    ('{"data": [{"title": "t", "paragraphs": [{"context": "a b c", "qas": [{"id": "x", "question": "q?", '
     '"answers": [{"text": "b", "answer_start": 0}]}]}]}]}', "answer 'b' is not at character 0"),
    ('{"data": [{"title": "t", "paragraphs": [{"context": "a b", "qas": [{"id": "x", "question": "q?", '
     '"answers": [], "is_impossible": true}]}]}]}', "no question has an answer"),
])
def test_bad_squad_files(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        load_squad(path)
    assert words in str(info.value)


def test_windows_keep_the_answer(qa_model_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    examples = load_squad_from(CONTEXTS)
    for family, d in qa_model_dirs.items():
        tok = AutoTokenizer.from_pretrained(d)
        windows = encode_windows(examples, tok, max_length=40, stride=10)
        assert len(windows) > len(examples)  # the long contexts are cut
        chosen = answer_window(windows)
        assert sorted(chosen) == list(range(len(examples))), family
        for i, w in chosen.items():
            a, b = w.answer
            text = examples[i].context[w.offsets[a][0]:w.offsets[b][1]]
            assert text.strip() == examples[i].answers[0][0], family
            assert all(w.context_mask[a:b + 1])


def load_squad_from(contexts) -> list[QAExample]:
    return [QAExample(f"q{c}-{i}", "t", 0, q, ctx, ((a, ctx.index(a)),))
            for c, (ctx, qas) in enumerate(contexts) for i, (q, a) in enumerate(qas)]


def test_squad_scores_by_hand() -> None:
    ex = [QAExample("a", "t", 0, "q", "The Denver Broncos won.", (("Denver Broncos", 4), ("Broncos", 11))),
          QAExample("b", "t", 0, "q", "in the rain", (("in the rain", 0),))]
    scores = squad_scores({"a": "the Broncos!", "b": "rain today"}, ex)
    # a: exact after normalisation against "Broncos"; b: F1 of {rain, today} vs {in, rain} = 0.5
    assert scores == {"exact_match": 50.0, "f1": 75.0, "questions": 2}


def test_a_question_longer_than_the_window_is_refused(qa_model_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qa_model_dirs["gpt2"])
    long = [QAExample("long", "t", 0, "who won the super bowl ? " * 6, CONTEXTS[0][0], (("the broncos", 0),))]
    with pytest.raises(ValueError, match="question 'long' takes .* tokens: a window of 32 leaves"):
        encode_windows(long, tok, max_length=32, stride=6)


def test_best_spans_by_hand() -> None:
    start = torch.tensor([[9.0, 1.0, 3.0, 0.0, 2.0]])
    end = torch.tensor([[9.0, 0.0, 1.0, 4.0, 0.0]])
    context = torch.tensor([[0, 1, 1, 1, 1]])  # position 0 is the question: never chosen
    first, last, score = best_spans(start, end, context, max_answer_tokens=2)
    assert (first.item(), last.item(), score.item()) == (2, 3, 7.0)
    first, last, _ = best_spans(start, end, context, max_answer_tokens=1)
    assert (first.item(), last.item()) == (2, 2)  # 3 + 1 beats 1 + 0, 2 + 0 and 0 + 4


def test_precision_of_summed_scores() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    context = torch.tensor([[0, 1, 1, 1, 1]])
    count, percent = precision_at_k(scores, None, [2], [4], k=2, attention_mask=context)
    assert count.item() == 1 and percent.item() == pytest.approx(100 / 3)  # top-2 of context: 1, 2


# --------------------------------------------------------------------------- the runner


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_runner_on_a_never_seen_squad_file(family: str, tmp_path: Path, qa_file: Path,
                                           qa_model_dirs: dict[str, Path]) -> None:
    from captum_attcat import METHODS

    out = tmp_path / "out"
    rc = main(["--task", "squad", "--data", str(qa_file), "--model", str(qa_model_dirs[family]), "--methods", "all",
               "--k", "3", "--window", "40", "--stride", "10", "--batch-size", "2", "--ig-steps", "4",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True
    assert res["config"]["questions"] == 5 and res["config"]["skipped"] == {"unanswerable": 1,
                                                                            "answer_not_in_window": 0}
    rows = {r["method"]: r for r in res["results"]}
    # ContrastCAT needs a reference set of classified examples, which a QA task has not: left out of "all"
    assert set(rows) == set(METHODS) - {"ContrastCAT"} | {"IntegratedGradients", "Saliency", "InputXGradient", "Random"}
    for name, r in rows.items():
        assert r["error"] is None, name
        assert 0 <= r["precision_count"] <= 3 and 0 <= r["precision_percent"] <= 100, name
        curve = res["curves"][f"paper/{name}"]
        counts = [curve[str(k)]["count"] for k in (1, 2, 3, 5, 10)]
        assert counts == sorted(counts), name  # more tokens kept, never fewer answer tokens
    # with K past every context's length, the whole answer is always in: 100 %
    assert all(res["curves"][f"paper/{n}"]["50"]["percent"] == pytest.approx(100.0) for n in rows)
    assert "| Random |" in (out / "results.md").read_text()
    assert (out / "precision_at_k_paper.png").stat().st_size > 1000


def test_runner_precision_equals_a_hand_computation(tmp_path: Path, qa_file: Path,
                                                    qa_model_dirs: dict[str, Path]) -> None:
    """Saliency's Precision@3 from the runner equals one question at a time computed here."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from benchmarks.baselines import SaliencyEmbeddings
    from captum_attcat import AnswerSpan

    d = qa_model_dirs["bert"]
    out = tmp_path / "o"
    assert main(["--task", "squad", "--data", str(qa_file), "--model", str(d), "--methods", "Saliency", "--k", "3",
                 "--window", "40", "--stride", "10", "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "results.json").read_text())["results"][0]
    model = AutoModelForQuestionAnswering.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    counts = []
    for e in [e for e in load_squad(qa_file) if e.answerable]:
        w = answer_window(encode_windows([e], tok, 40, 10))[0]
        ids = torch.tensor([w.input_ids])
        mask = torch.ones_like(ids)
        types = torch.tensor([w.token_type_ids])
        scores = SaliencyEmbeddings(model).attribute(ids, target=AnswerSpan(*w.answer),
                                                     additional_forward_args=(mask, types))[0]
        context = [i for i, c in enumerate(w.context_mask) if c]
        top = sorted(context, key=lambda i: -float(scores[i]))[:3]
        counts.append(sum(w.answer[0] <= i <= w.answer[1] for i in top))
    assert row["precision_count"] == pytest.approx(sum(counts) / len(counts), abs=1e-6)


def test_reference_code_protocols(tmp_path: Path, qa_file: Path, qa_model_dirs: dict[str, Path]) -> None:
    """attcat/masklrp explain the predicted span and rank every token; masklrp's % is the mean
    count over the mean answer length; --qa-target overrides the explained span."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from benchmarks.qa import prepare_questions

    d = qa_model_dirs["bert"]
    out = tmp_path / "p"
    assert main(["--task", "squad", "--data", str(qa_file), "--model", str(d), "--methods", "AttCAT,Random",
                 "--protocol", "all", "--k", "3", "--window", "40", "--stride", "10", "--out", str(out),
                 "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["protocols"]["attcat"]["target"] == "predicted"
    rows = {(r["protocol"], r["method"]): r for r in res["results"]}
    assert len(rows) == 6 and all(r["error"] is None for r in rows.values())
    # attcat and masklrp share the explanations: the same counts
    assert rows[("attcat", "AttCAT")]["precision_count"] == rows[("masklrp", "AttCAT")]["precision_count"]
    model = AutoModelForQuestionAnswering.from_pretrained(d).eval()
    questions, _ = prepare_questions(model, AutoTokenizer.from_pretrained(d), load_squad(qa_file),
                                     max_length=40, stride=10)
    mean_length = sum(q.gold[1] - q.gold[0] + 1 for q in questions) / len(questions)
    r = rows[("masklrp", "AttCAT")]
    assert r["precision_percent"] == pytest.approx(100 * r["precision_count"] / mean_length)
    assert (out / "precision_at_k_masklrp.png").is_file()
    again = tmp_path / "g"
    assert main(["--task", "squad", "--data", str(qa_file), "--model", str(d), "--methods", "AttCAT",
                 "--protocol", "attcat", "--qa-target", "gold", "--window", "40", "--stride", "10", "--out",
                 str(again), "--no-progress"]) == 0
    assert json.loads((again / "results.json").read_text())["config"]["protocols"]["attcat"]["target"] == "gold"


def test_runner_bad_qa_input(tmp_path: Path, qa_file: Path, qa_model_dirs: dict[str, Path], tiny_model_dir: Path,
                             capsys) -> None:
    base = ["--task", "squad", "--methods", "Random", "--no-progress", "--out", str(tmp_path / "never")]
    no_answers = tmp_path / "no_answers.json"
    no_answers.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "a b", "qas": [{"id": "x", "question": "q", "answers": []}]}]}]}))
    shifted = json.loads(qa_file.read_text())
    shifted["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] += 1
    moved = tmp_path / "shifted.json"
    moved.write_text(json.dumps(shifted))
    cases = [
        (["--data", str(no_answers), "--model", str(qa_model_dirs["bert"])], "question 'x' has no answers"),
        (["--data", str(moved), "--model", str(qa_model_dirs["bert"])], "the answer offsets do not match"),
        (["--data", str(qa_file), "--model", str(tiny_model_dir)], "not a fine-tuned question-answering model"),
        (["--data", str(qa_file), "--model", str(qa_model_dirs["bert"]), "--stride", "40", "--window", "32"],
         "--stride 40 must be smaller than --window 32"),
        (["--data", str(qa_file), "--model", str(qa_model_dirs["bert"]), "--protocol", "bogus"],
         "unknown QA protocol 'bogus'"),
        (["--data", str(qa_file), "--model", str(qa_model_dirs["bert"]), "--kendall"],
         "--kendall does not apply to --task squad"),
    ]
    for args, words in cases:
        assert main(base + args) == 2, words
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


def test_a_method_failing_mid_run_makes_the_run_incomplete(tmp_path: Path, qa_file: Path,
                                                           qa_model_dirs: dict[str, Path], capsys,
                                                           monkeypatch) -> None:
    from benchmarks import baselines

    calls = {"n": 0}
    original = baselines.RandomScores.attribute

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of luck on the second batch")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(baselines.RandomScores, "attribute", flaky)
    out = tmp_path / "inc"
    rc = main(["--task", "squad", "--data", str(qa_file), "--model", str(qa_model_dirs["bert"]), "--methods",
               "Saliency,Random", "--batch-size", "2", "--window", "40", "--stride", "10", "--out", str(out),
               "--no-progress"])
    assert rc == 1
    assert "squad:paper:Random failed: RuntimeError: out of luck" in capsys.readouterr().err
    assert (out / "results.md").read_text().startswith("# Precision@20")
    assert "**INCOMPLETE RUN**" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["complete"] is False


def test_finetune_squad_on_a_tiny_model(tmp_path: Path, qa_model_dirs: dict[str, Path]) -> None:
    from transformers import AutoConfig

    from benchmarks.finetune import finetune_squad

    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "head_mask.json").write_text("{}")  # found for other weights: must not survive
    out = finetune_squad(tmp_path / "ft", qa_model_dirs["bert"], max_train=64, batch_size=16, max_length=64,
                         stride=16, progress=False, num_threads=1)
    assert not (out / "head_mask.json").exists()
    config = AutoConfig.from_pretrained(out)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.0
    info = json.loads((out / "eval.json").read_text())
    assert info["held_out_questions"] == 1975 and info["train_questions"] == 64 and info["steps"] >= 4
    assert 0 <= info["exact_match"] <= info["f1"] <= 100
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("name", ["IntegratedGradients", "InputXGradient", "Saliency"])
def test_baselines_explain_a_span_as_start_plus_end(name: str) -> None:
    """One pass on start + end logit (linear methods) or two (Saliency): the sum of the two."""
    from benchmarks.baselines import BASELINES
    from captum_attcat import AnswerSpan
    from conftest import padded_batch, tiny_qa_model

    model = tiny_qa_model("bert")
    ids, mask = padded_batch([9, 6])
    kwargs = {"n_steps": 6} if name == "IntegratedGradients" else {}
    method = BASELINES[name](model, **kwargs)
    span = AnswerSpan([2, 1], [4, 5])
    both = method.attribute(ids, target=span, additional_forward_args=(mask,))
    parts = sum(method.attribute(ids, target=span.pairs(p), additional_forward_args=(mask,)) for p in ("start", "end"))
    torch.testing.assert_close(both, parts, rtol=1e-5, atol=1e-6)
    assert (both[mask == 0] == 0).all() and both.abs().sum() > 0
