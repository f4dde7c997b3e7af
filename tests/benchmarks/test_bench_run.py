"""The runner end to end on a file it has never seen, with a tiny real BERT and real Captum."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks.baselines import BASELINES, IntegratedGradientsEmbeddings, SaliencyEmbeddings
from benchmarks.metrics import Perturbation, aopc, log_odds
from benchmarks.run import available_methods, main, select_methods

ROWS = [("good fun movie , very good , really good", 1), ("awful boring plot", 0), ("the acting was not good !", 0),
        ("a great film", 1), ("dull", 0), ("it is really fine , this film .", 1), ("bad bad bad", 0)]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("id\ttext\ty\n" + "".join(f"{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(rows)))
    return path


def test_runner_on_unseen_tsv(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = write_tsv(tmp_path / "never_seen.tsv", ROWS)
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--text-column", "text", "--label-column", "y", "--limit", "6",
               "--model", str(tiny_model_dir), "--methods", "Saliency,InputXGradient,IntegratedGradients,Random",
               "--protocol", "all", "--batch-size", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = {(r["protocol"], r["method"]): r for r in res["results"]}
    assert len(rows) == 12 and all(r["error"] is None for r in rows.values())
    assert res["config"]["examples"] == 6 and res["config"]["protocols"]["attcat"]["aopc_absolute"] is True
    assert res["versions"]["torch"] == torch.__version__
    # masklrp keeps only inputs of >= 20 tokens: none here; attcat >= 10 tokens: 0 and 5 of the six
    assert rows[("paper", "Saliency")]["examples"] == 6
    assert rows[("attcat", "Saliency")]["examples"] == 2
    assert rows[("masklrp", "Saliency")]["examples"] == 0
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 12
    assert "| Saliency |" in (out / "results.md").read_text()
    assert (out / "curves_paper.png").stat().st_size > 1000
    # the run's peak resident memory, in the JSON and above each table
    (peak,) = res["config"]["peak_rss_mib_per_rank"]
    assert 100 < peak < 64 * 1024
    assert f"peak resident memory {peak / 1024:.2f} GiB" in (out / "results.md").read_text()

    # the paper-protocol numbers equal an independent one-example-at-a-time computation
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fwd = lambda i, m: model(input_ids=i, attention_mask=m).logits  # noqa: E731
    a_vals, l_vals, right = [], [], 0
    for text, label in ROWS[:6]:
        ids = torch.tensor([tok(text)["input_ids"]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            pred = int(fwd(ids, mask).argmax())
        right += pred == label
        scores = SaliencyEmbeddings(model).attribute(ids, target=pred, additional_forward_args=(mask,))
        # [CLS], [SEP], [PAD] never ranked: the tokenizer's own special tokens
        how = Perturbation(special_token_ids=(tok.cls_token_id, tok.sep_token_id, tok.pad_token_id),
                           pad_token_id=tok.pad_token_id, mask_token_id=tok.mask_token_id)
        a_vals.append(aopc(fwd, ids, scores, pred, attention_mask=mask, perturbation=how.with_kind("delete")).item())
        l_vals.append(log_odds(fwd, ids, scores, pred, attention_mask=mask, perturbation=how.with_kind("pad")).item())
    assert rows[("paper", "Saliency")]["aopc"] == pytest.approx(sum(a_vals) / 6, abs=1e-5)
    assert rows[("paper", "Saliency")]["lodds"] == pytest.approx(sum(l_vals) / 6, abs=1e-5)
    curves = res["curves"]["paper/Saliency"]
    assert curves["aopc"][0] == 0.0 and len(curves["aopc"]) == 11
    # the model's accuracy on the examples explained (not the one its own evaluation recorded)
    assert res["config"]["model_accuracy"] == round(right / 6, 4)
    assert res["config"]["model_eval"] is None  # a model directory without an eval.json
    assert f"classifies {100 * right / 6:.1f} % of the 6 examples right" in (out / "results.md").read_text()


def test_runner_rejects_labels_outside_the_model(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    data = write_tsv(tmp_path / "bad.tsv", [("good", 1), ("bad", 2)])
    assert main(["--data", str(data), "--text-column", "text", "--label-column", "y", "--model",
                 str(tiny_model_dir), "--methods", "Random", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert re.search("label 2 .* outside the model's 2 classes", capsys.readouterr().err)
    assert main(["--data", str(data), "--model", str(tiny_model_dir), "--methods", "Random",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "the columns are ['id', 'text', 'y']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_method_selection() -> None:
    avail = available_methods()
    for name in BASELINES:
        assert name in avail
    assert list(select_methods("random, SALIENCY", avail)) == ["Random", "Saliency"]
    with pytest.raises(ValueError, match="unknown method 'Gradcam'"):
        select_methods("Gradcam", avail)


def test_integrated_gradients_completeness(tiny_model_dir: Path) -> None:
    """IG scores sum to logit(x) - logit(baseline) (up to the 50-step Riemann error)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    scores = IntegratedGradientsEmbeddings(model).attribute(ids, target=1, additional_forward_args=(mask,))
    base = torch.tensor([[2, 0, 0, 0, 3, 0], [2, 0, 0, 3, 0, 0]])   # [CLS] and [SEP] kept
    with torch.no_grad():
        diff = model(input_ids=ids, attention_mask=mask).logits[:, 1] - \
            model(input_ids=base, attention_mask=mask).logits[:, 1]
    torch.testing.assert_close(scores.sum(1), diff, atol=2e-3, rtol=2e-2)
    assert (scores[mask == 0] == 0).all()


def test_align_labels_follows_the_model_names() -> None:
    from transformers import BertConfig

    from benchmarks.data import Examples
    from benchmarks.run import align_labels

    ex = Examples("mnli", ["p1", "p2", "p3"], ["h1", "h2", "h3"], [0, 1, 2],
                  ("entailment", "neutral", "contradiction"))
    cfg = BertConfig(id2label={0: "CONTRADICTION", 1: "ENTAILMENT", 2: "NEUTRAL"})
    assert align_labels(ex, cfg).labels == [1, 2, 0]
    # generic LABEL_0.. names: nothing to align, numbers kept
    assert align_labels(ex, BertConfig(num_labels=3)).labels == [0, 1, 2]


def test_every_registered_method_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    from captum_attcat import METHODS

    data = write_tsv(tmp_path / "d.tsv", ROWS)
    out = tmp_path / "all"
    main(["--data", str(data), "--text-column", "text", "--label-column", "y", "--limit", "4",
          "--model", str(tiny_model_dir), "--methods", "all", "--protocol", "attcat", "--out", str(out),
          "--references", str(data), "--no-progress"])  # ContrastCAT's reference set from the same file
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert set(METHODS) | set(BASELINES) == set(rows)
    for name, r in rows.items():
        assert r["error"] is None, (name, r["error"])
        assert r["examples"] == 1 and -1.0 <= r["aopc"] <= 1.0


def test_explanation_pass_masks_per_protocol(tiny_model_dir: Path) -> None:
    """attcat hides [CLS]/[SEP] from the explained model but keeps every real query row."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.data import Examples
    from benchmarks.protocols import ATTCAT, MASKLRP, PAPER
    from benchmarks.run import evaluate_methods

    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    class Spy:
        def __init__(self, model: object) -> None:
            pass

        def attribute(self, input_ids: torch.Tensor, target: object = None, additional_forward_args: tuple = (),
                      query_mask: torch.Tensor | None = None) -> torch.Tensor:
            seen.append((additional_forward_args[0].clone(), query_mask))
            return torch.arange(input_ids.shape[1], dtype=torch.float32).expand(input_ids.shape).clone()

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "good fun movie , very good , really good"          # 9 words -> 11 tokens
    ex = Examples("t", [text], None, [1])
    for proto, want in [(PAPER, [1] * 11), (ATTCAT, [0] + [1] * 9 + [0]), (MASKLRP, [1] * 10 + [0])]:
        seen.clear()
        keep = proto is not MASKLRP                             # masklrp needs >= 20 tokens
        res = evaluate_methods(model, tok, ex, {"Spy": Spy}, proto, progress=False)
        assert res[0].examples == int(keep)
        if keep:
            assert seen[0][0].tolist() == [want]
            assert (seen[0][1] is not None) == (proto in (ATTCAT, MASKLRP))
            if proto is ATTCAT:
                assert seen[0][1].tolist() == [[1] * 11]


def test_kendall_column_matches_per_example_computation(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.data import Examples
    from benchmarks.metrics import kendall_tau
    from benchmarks.protocols import PAPER
    from benchmarks.run import evaluate_methods

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [t for t, _ in ROWS[:4]]
    res = evaluate_methods(model, tok, Examples("t", texts, None, [y for _, y in ROWS[:4]]),
                           {"Saliency": SaliencyEmbeddings}, PAPER, kendall=True, progress=False)
    taus = []
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            pred = int(model(input_ids=ids, attention_mask=mask).logits.argmax())
        s = [SaliencyEmbeddings(model).attribute(ids, target=c, additional_forward_args=(mask,))[0, 1:-1]
             for c in (pred, 1 - pred)]
        taus.append(kendall_tau(s[0], s[1]))
    assert res[0].kendall_tau == pytest.approx(sum(taus) / 4, abs=1e-6)
    assert -1.0 < res[0].kendall_tau < 1.0


def test_head_mask_for_mask_lrp(tmp_path: Path, tiny_model_dir: Path) -> None:
    """'auto' finds the heads on the vendored EWT dev once and keeps them next to the model."""
    import shutil

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.run import resolve_head_mask
    from captum_attcat import HeadMask

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "head_mask.json").unlink(missing_ok=True)  # left by a run with --methods all
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert resolve_head_mask("none", model, tok, str(model_dir)) == (None, "none (MaskLRP = TransAtt)")
    found, source = resolve_head_mask("auto", model, tok, str(model_dir), progress=False)
    assert isinstance(found, HeadMask) and found.shape == (2, 2)
    assert "UD English EWT dev" in source and (model_dir / "head_mask.json").is_file()
    again, source = resolve_head_mask("auto", model, tok, str(model_dir))
    assert source == str(model_dir / "head_mask.json") and (again.mask == found.mask).all()
    custom = tmp_path / "mask.json"
    HeadMask.from_tensor([[1, 0], [0, 0]]).save(custom)
    given, source = resolve_head_mask(str(custom), model, tok, str(model_dir))
    assert source == str(custom) and given.mask.tolist() == [[True, False], [False, False]]
    with pytest.raises(ValueError, match="no such file"):
        resolve_head_mask(str(tmp_path / "missing.json"), model, tok, str(model_dir))

    # the runner builds MaskLRP with the mask and records where it came from
    import benchmarks.run as run

    built: list[dict] = []

    class Recorded(run.available_methods()["MaskLRP"]):
        def __init__(self, model: object, **kwargs: object) -> None:
            built.append(kwargs)
            super().__init__(model, **kwargs)

    data = write_tsv(tmp_path / "d.tsv", ROWS)
    out = tmp_path / "out"
    original = run.available_methods
    run.available_methods = lambda: {**original(), "MaskLRP": Recorded}
    try:
        main(["--data", str(data), "--text-column", "text", "--label-column", "y", "--limit", "6",
              "--model", str(model_dir), "--methods", "MaskLRP", "--head-mask", str(custom),
              "--out", str(out), "--no-progress"])
    finally:
        run.available_methods = original
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["head_mask"] == f"{custom}; 1 of 4 heads"
    assert res["results"][0]["error"] is None
    assert built and built[0]["head_mask"].mask.tolist() == [[True, False], [False, False]]


def test_sentence_pairs_reach_every_model_call_with_their_segment_ids(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.data import Examples
    from benchmarks.protocols import PAPER
    from benchmarks.run import evaluate_methods

    seen: list[tuple] = []

    class Spy:
        def __init__(self, model: object) -> None:
            pass

        def attribute(self, input_ids: torch.Tensor, target: object = None, additional_forward_args: tuple = ()
                      ) -> torch.Tensor:
            seen.append(tuple(a.clone() for a in additional_forward_args))
            return torch.arange(input_ids.shape[1], dtype=torch.float32).expand(input_ids.shape).clone()

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    calls: list[torch.Tensor | None] = []
    hook = model.bert.embeddings.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs.get("token_type_ids")), with_kwargs=True)
    try:
        ex = Examples("pairs", ["good fun movie", "bad"], ["very good", "really bad movie"], [1, 0])
        res = evaluate_methods(model, tok, ex, {"Spy": Spy}, PAPER, progress=False)
    finally:
        hook.remove()
    assert res[0].error is None and res[0].examples == 2
    mask, types = seen[0]
    assert types.tolist() == [[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1, 1]]  # rows sorted by length
    assert calls and all(t is not None and t.any() for t in calls)  # the metric passes see them too

    # and through the command line, every kind of method
    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\ty\n" + "".join(f"{t}\t{u}\t{y}\n" for (t, _), (u, y) in zip(ROWS, ROWS[1:])))
    out = tmp_path / "out"
    main(["--data", str(data), "--text-column", "a,b", "--label-column", "y", "--limit", "4",
          "--model", str(tiny_model_dir), "--methods", "AttCAT,TransAtt,Saliency,IntegratedGradients",
          "--out", str(out), "--no-progress"])
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["error"] for r in rows] == [None] * 4


def test_a_method_failing_mid_run_makes_the_run_incomplete(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """A method that raises on its second batch: the run exits 1 naming it, the finished
    methods are written, and every file says the run is incomplete (no error row in a table)."""
    from captum_attcat import METHODS, CAT, register_method

    @register_method("ExplodingCAT")
    class ExplodingCAT(CAT):
        calls = 0

        def attribute(self, inputs, target=None, additional_forward_args=None):
            type(self).calls += 1
            if type(self).calls == 2:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
            return super().attribute(inputs, target, additional_forward_args)

    data = write_tsv(tmp_path / "d.tsv", ROWS)
    out = tmp_path / "out"
    try:
        rc = main(["--data", str(data), "--text-column", "text", "--label-column", "y", "--model", str(tiny_model_dir),
                   "--methods", "Saliency,ExplodingCAT", "--batch-size", "2", "--out", str(out), "--no-progress"])
    finally:
        del METHODS["ExplodingCAT"]
    assert rc == 1
    err = capsys.readouterr().err
    assert "error: paper:ExplodingCAT failed: RuntimeError: DefaultCPUAllocator: can't allocate memory" in err
    assert "error: incomplete run" in err
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is False and res["failed"] == [
        "paper:ExplodingCAT: RuntimeError: DefaultCPUAllocator: can't allocate memory"]
    md = (out / "results.md").read_text()
    assert md.splitlines()[2] == "**INCOMPLETE RUN**" and "| Saliency |" in md
    assert "ExplodingCAT |" not in md and "error:" not in md


def test_explanations_batched_by_a_token_budget_give_the_same_results(tiny_model_dir: Path) -> None:
    """A token budget of 24 splits the 7 texts into many small batches (IG's 20-step passes
    too); every number is the one of the unbounded run, and no batch exceeds the budget."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.data import Examples, encode_batches
    from benchmarks.protocols import PROTOCOLS
    from benchmarks.run import evaluate_methods

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = Examples("toy", [t for t, _ in ROWS], None, [y for _, y in ROWS])
    widths = [b.input_ids.numel() for b in encode_batches(examples, tok, 32, max_tokens=24)]
    assert len(widths) >= 3 and max(widths) <= 24
    methods = select_methods("AttCAT,TransAtt,IntegratedGradients", available_methods())
    kwargs = {"IntegratedGradients": {"n_steps": 20}}
    unbounded = evaluate_methods(model, tok, examples, methods, PROTOCOLS["paper"], max_tokens=None,
                                 progress=False, method_kwargs=kwargs)
    kwargs["IntegratedGradients"]["max_tokens"] = 24
    bounded = evaluate_methods(model, tok, examples, methods, PROTOCOLS["paper"], max_tokens=24,
                               progress=False, method_kwargs=kwargs)
    for a, b in zip(unbounded, bounded):
        assert a.error is None and b.error is None and a.examples == b.examples == 7
        assert b.aopc == pytest.approx(a.aopc, abs=1e-6) and b.lodds == pytest.approx(a.lodds, abs=1e-5)


def test_contrast_cat_gets_a_reference_set_or_is_left_out(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """ContrastCAT runs with references drawn from --references; without a reference set it is left
    out of 'all' (it would be AttCAT under another name) and refused when named."""
    data = write_tsv(tmp_path / "data.tsv", ROWS)
    common = ["--data", str(data), "--text-column", "text", "--label-column", "y", "--limit", "4",
              "--model", str(tiny_model_dir), "--batch-size", "4", "--no-progress"]
    assert main([*common, "--methods", "ContrastCAT", "--out", str(tmp_path / "a")]) == 2
    assert "ContrastCAT needs `references`: --references FILE" in capsys.readouterr().err
    assert main([*common, "--methods", "AttCAT,ContrastCAT", "--references", str(data), "--out", str(tmp_path / "b")]) == 0
    assert "ContrastCAT references:" in capsys.readouterr().err
    rows = {r["method"]: r for r in json.loads((tmp_path / "b" / "results.json").read_text())["results"]}
    assert rows["ContrastCAT"]["error"] is None and rows["ContrastCAT"]["aopc"] != rows["AttCAT"]["aopc"]
    assert main([*common, "--methods", "all", "--references", "none", "--out", str(tmp_path / "c")]) == 0
    assert "ContrastCAT left out" in capsys.readouterr().err
    methods = {r["method"] for r in json.loads((tmp_path / "c" / "results.json").read_text())["results"]}
    assert "ContrastCAT" not in methods and {"AttCAT", "AttnLRP"} <= methods
    assert main([*common, "--methods", "AttCAT", "--references", str(tmp_path / "missing.tsv"),
                 "--out", str(tmp_path / "d")]) == 0  # unused when ContrastCAT is not run


def test_mnli_with_the_default_model_explains_the_mismatched_examples(capsys) -> None:
    """The default MNLI model learnt the matched examples: explaining them is refused, before any
    model is loaded or fine-tuned."""
    assert main(["--task", "mnli", "--split", "dev", "--methods", "Random", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fine-tuned on the matched examples" in err and "--split dev_mismatched" in err


def test_finetune_mnli_on_a_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Three classes named as MNLI's, trained on the matched subset (pairs with their segment ids),
    evaluated on the 1,000 mismatched examples."""
    from transformers import AutoConfig

    from benchmarks.finetune import finetune

    out = finetune(tmp_path / "ft", tiny_model_dir, task="mnli", max_train=48, epochs=1, batch_size=16, max_length=32,
                   progress=False, num_threads=1)
    info = json.loads((out / "eval.json").read_text())
    assert (info["task"], info["train_split"], info["dev_split"]) == ("mnli", "dev", "dev_mismatched")
    assert info["train_examples"] == 48 and info["dev_examples"] == 1000 and info["steps"] == 3
    assert 0 <= info["accuracy"] <= 1
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    with pytest.raises(ValueError, match="classification tasks"):
        finetune(tmp_path / "other", tiny_model_dir, task="squad")
