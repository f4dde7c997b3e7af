"""The runner on torch.distributed (two real gloo processes on this machine) and resumed after a
kill, for classification and for SQuAD: the same table as one uninterrupted process, to the last
digit."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from benchmarks.resume import PartialResults, digest, model_digest
from benchmarks.run import main

ROOT = Path(__file__).resolve().parents[2]
WORDS = "good great fine bad awful dull movie film plot acting the a is was not very really fun boring , . ! it".split()
TIMING = {"explain_seconds", "metric_seconds"}
CONFIG_TIMING = {"seconds", "cpu_seconds", "seconds_per_protocol", "seconds_with_model_loading", "seconds_per_rank",
                 "peak_rss_mib_per_rank"}


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _child(argv: list[str], cwd: str, environment: dict[str, str], log: str) -> None:
    os.environ.update(environment)
    os.chdir(cwd)
    with open(log, "w") as fh:
        sys.stdout = sys.stderr = fh
        rc = main(argv)
        fh.flush()
    os._exit(rc)


def fork_run(argv: list[str], cwd: Path, log: Path, **environment: str) -> multiprocessing.process.BaseProcess:
    """``python -m benchmarks.run ARGV`` in a forked process (the imports are already done),
    its standard output and error in ``log``."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, str(cwd), environment, str(log)))
    proc.start()
    return proc


@pytest.fixture(autouse=True)
def keep_threads() -> Iterator[None]:
    """``--threads`` sets this process's thread count: put it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny BERT with peaked outputs, 20 labelled texts, and the single-process run of them."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("distributed")
    model_dir = d / "model"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab=str(model_dir / "vocab.txt"), do_lower_case=True, model_max_length=32)
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2, initializer_range=0.5,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rng = random.Random(0)
    rows = [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 24))), rng.randint(0, 1)) for _ in range(20)]
    data = d / "data.tsv"
    data.write_text("text\ty\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    args = ["--data", str(data), "--text-column", "text", "--label-column", "y", "--model", str(model_dir),
            "--methods", "all", "--protocol", "paper", "--batch-size", "2", "--head-mask", "none",
            "--threads", "1", "--device", "cpu", "--no-progress"]  # gloo, also where a GPU is (one per rank)
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--out", str(d / "single")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"dir": d, "args": args, "single": d / "single", "model": model_dir, "data": data}


def comparable(out: Path, time_columns: int = 2) -> dict:
    """results.json without its timing fields, and the table without its ``time_columns`` last
    columns (classification: explain s, metric s; SQuAD: explain s)."""
    res = json.loads((out / "results.json").read_text())
    res["results"] = [{k: v for k, v in r.items() if k not in TIMING} for r in res["results"]]
    res["config"] = {k: v for k, v in res["config"].items() if k not in CONFIG_TIMING | {"command"}}
    times = re.compile(r"( [\d.]+ \|){%d}$" % time_columns)
    table = [times.sub("", line) for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    md = (out / "results.md").read_text()
    return {"json": res, "table": table, "header": re.sub(r"; [\d.]+ s\.", ";", md.split("\n## ")[0])}


def test_single_process_results_are_real(toy: dict) -> None:
    res = json.loads((toy["single"] / "results.json").read_text())
    rows = {(r["protocol"], r["method"]): r for r in res["results"]}
    assert res["complete"] and res["config"]["shards"] == 10 and res["config"]["seconds_per_rank"][0] > 0
    assert rows[("paper", "Saliency")]["examples"] == 20
    aopcs = [r["aopc"] for (p, _), r in rows.items() if p == "paper"]
    assert max(aopcs) > 0.05 and len({round(a, 6) for a in aopcs}) > 8  # the methods differ
    assert not list(toy["single"].glob("partial-*"))  # a complete run leaves no partial results


def test_two_gloo_processes_give_the_single_process_results(toy: dict) -> None:
    out = toy["dir"] / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "benchmarks.run", *toy["args"], "--out", str(out)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert comparable(out) == comparable(toy["single"])
    assert json.loads((out / "results.json").read_text())["curves"] == \
        json.loads((toy["single"] / "results.json").read_text())["curves"]
    # progress per rank, a merged summary from rank 0 only
    assert "rank 0/2: 5 of 10 shards to explain on cpu" in proc.stderr
    assert "rank 1/2: 5 of 10 shards to explain on cpu" in proc.stderr
    assert re.search(r"rank 0: 5 shards \(\d+ examples\)", proc.stdout)
    assert re.search(r"rank 1: 5 shards \(\d+ examples\)", proc.stdout)
    assert proc.stdout.count("2 process(es)") == 1
    assert len(json.loads((out / "results.json").read_text())["config"]["seconds_per_rank"]) == 2


def kill_and_resume(args: list[str], out: Path, log: Path, changed: list[str], shards: int, seconds: float,
                    capsys: pytest.CaptureFixture) -> None:
    """Start the run in a forked process, SIGKILL it after its first shard, then check that a changed
    configuration (``changed`` added) reads none of the finished shards and that the same command
    again reads them all and finishes, leaving no partial results."""
    proc = fork_run([*args, "--out", str(out)], ROOT, log)
    try:
        deadline = time.monotonic() + seconds
        while not list(out.glob("partial-*/shard-*.pt")):
            assert proc.is_alive(), log.read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)  # after its first shard: no clean-up of any kind
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    (partial,) = out.glob("partial-*")
    finished = PartialResults(partial).done()
    assert 1 <= len(finished) < shards and not (out / "results.json").exists()

    threads = torch.get_num_threads()
    try:
        # a changed configuration does not read them
        assert main([*args, *changed, "--out", str(out)]) == 0
        assert "read from an earlier run" not in capsys.readouterr().out
        assert partial.is_dir() and PartialResults(partial).done() == finished
        # the same command again redoes only the shards without a file
        assert main([*args, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"{len(finished)} of {shards} shards read from an earlier run" in capsys.readouterr().out
    assert not partial.exists()


def test_a_killed_run_resumes_where_it_stopped(toy: dict, capsys: pytest.CaptureFixture) -> None:
    out = toy["dir"] / "killed"
    kill_and_resume(toy["args"], out, toy["dir"] / "killed.log", ["--ig-steps", "7"], 10, 60, capsys)
    assert comparable(out) == comparable(toy["single"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_that_disagree_on_the_data_fail_on_every_rank(toy: dict) -> None:
    """Two ranks started as torchrun starts them (its environment variables), each with its own
    data.tsv in its folder: both stop, naming what differs."""
    port = free_port()
    procs = []
    for rank in range(2):
        cwd = toy["dir"] / f"rank{rank}"
        cwd.mkdir()
        lines = toy["data"].read_text().splitlines()
        (cwd / "data.tsv").write_text("\n".join(lines[:-1] if rank else lines) + "\n")
        procs.append(fork_run(["--data", "data.tsv", "--text-column", "text", "--label-column", "y", "--model",
                               str(toy["model"]), "--methods", "Random", "--device", "cpu", "--out", "out",
                               "--no-progress"],
                              cwd, cwd / "log", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                              LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
    for rank, proc in enumerate(procs):
        proc.join(120)
        err = (toy["dir"] / f"rank{rank}" / "log").read_text()
        assert proc.exitcode == 2, err[-3000:]
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and re.fullmatch(
            r"python -m benchmarks.run: error: the ranks disagree on the data: rank 0 has \w{12}, rank 1 has \w{12} "
            r"\(every rank must run the same command on the same files\)", errors[0]), err[-3000:]
        assert not (toy["dir"] / f"rank{rank}" / "out").exists()


def test_fingerprints_follow_the_model_and_the_data(toy: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(toy["model"])
    before = model_digest(model)
    assert model_digest(AutoModelForSequenceClassification.from_pretrained(toy["model"])) == before
    with torch.no_grad():
        model.classifier.bias[0] += 1e-6
    assert model_digest(model) != before
    assert digest([["a", "b"], None, [0, 1]]) != digest([["a", "b"], None, [1, 0]])
    # a temporary file left by a kill is not a finished shard
    store = PartialResults(tmp_path / "p")
    store.save(3, {"x": torch.ones(2)})
    (store.folder / ".shard-00004.123.tmp").write_bytes(b"half")
    assert store.done() == {3} and store.load(3)["x"].tolist() == [1.0, 1.0]


def test_shards_go_to_the_least_loaded_rank() -> None:
    from benchmarks.distributed import share

    # by padded tokens, costliest first: every rank ends with about the same work
    costs = {i: c for i, c in enumerate([1024, 1024, 990, 1020, 1000, 300])}
    assert share(costs, 2) == [[0, 3, 5], [1, 2, 4]]  # 2344 and 3014 tokens
    assert share(costs, 1) == [[0, 1, 2, 3, 4, 5]]
    assert share({0: 5}, 3) == [[0], [], []]


def test_what_cannot_run_on_these_ranks_is_refused(toy: dict, capsys: pytest.CaptureFixture) -> None:
    if not torch.cuda.is_available():
        assert main([*toy["args"], "--device", "cuda", "--out", str(toy["dir"] / "cuda")]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == \
            "python -m benchmarks.run: error: --device cuda: CUDA is not available on this machine"
    assert not (toy["dir"] / "cuda").exists()


# --------------------------------------------------------------------------- SQuAD

QA_WORDS = ("the team city game river won lost played built crossed north south old new long short in on of at by "
            "a an two three seven year rain snow winter summer bridge station who what where when did was is").split()


@pytest.fixture(scope="module")
def qa_toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny BERT question-answering model, 14 questions on 7 contexts of different lengths
    (7 shards of 2), and the single-process run of them."""
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    d = tmp_path_factory.mktemp("distributed_qa")
    model_dir = d / "model"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *QA_WORDS, "?", "."])
                                         + "\n")
    tok = BertTokenizerFast(vocab=str(model_dir / "vocab.txt"), do_lower_case=True, model_max_length=64)
    torch.manual_seed(2)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, initializer_range=0.5,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForQuestionAnswering(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rng = random.Random(3)
    paragraphs = []
    for c in range(7):
        words = [rng.choice(QA_WORDS[:30]) for _ in range(rng.randint(6, 30))]
        context = " ".join(words) + " ."
        qas = []
        for q in range(2):
            a = rng.randrange(len(words) - 2)
            answer = " ".join(words[a:a + rng.randint(1, 3)])
            start = len(" ".join(words[:a])) + (1 if a else 0)
            question = " ".join(rng.choice(QA_WORDS[30:]) for _ in range(rng.randint(2, 6))) + " ?"
            qas.append({"id": f"c{c}q{q}", "question": question, "answers": [{"text": answer, "answer_start": start}]})
        paragraphs.append({"context": context, "qas": qas})
    data = d / "qa.json"
    data.write_text(json.dumps({"version": "toy", "data": [{"title": "toy", "paragraphs": paragraphs}]}))
    args = ["--task", "squad", "--data", str(data), "--model", str(model_dir), "--methods", "all", "--protocol", "all",
            "--k", "3", "--window", "48", "--stride", "16", "--batch-size", "2", "--ig-steps", "4",
            "--head-mask", "none", "--threads", "1", "--device", "cpu", "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--out", str(d / "single")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"dir": d, "args": args, "single": d / "single", "model": model_dir, "data": data}


def test_squad_single_process_results_are_real(qa_toy: dict) -> None:
    from benchmarks.qa import evaluate_qa_methods

    res = json.loads((qa_toy["single"] / "results.json").read_text())
    assert res["complete"] and res["config"]["questions"] == 14 and res["config"]["shards"] == 7
    rows = {(r["protocol"], r["method"]): r for r in res["results"]}
    counts = [r["precision_count"] for (p, _), r in rows.items() if p == "paper"]
    assert len({round(c, 6) for c in counts}) > 5  # the methods differ
    assert not list(qa_toy["single"].glob("partial-*"))
    assert res["config"]["seconds_per_rank"][0] > 0
    # the library function gives the rows the command line wrote
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from benchmarks.qa import QA_PROTOCOLS, prepare_questions
    from benchmarks.run import available_methods, select_methods

    model = AutoModelForQuestionAnswering.from_pretrained(qa_toy["model"]).eval()
    tok = AutoTokenizer.from_pretrained(qa_toy["model"])
    from benchmarks.squad import load_squad

    questions, _ = prepare_questions(model, tok, load_squad(qa_toy["data"]), max_length=48, stride=16, batch_size=2)
    rows2 = evaluate_qa_methods(model, tok, questions, select_methods("AttCAT,Random,Saliency", available_methods()),
                                list(QA_PROTOCOLS.values()), k=3, batch_size=2, progress=False)
    for r in rows2:
        assert (r.count, r.percent) == (rows[(r.protocol, r.method)]["precision_count"],
                                        rows[(r.protocol, r.method)]["precision_percent"]), (r.protocol, r.method)


def test_squad_on_two_gloo_processes_gives_the_single_process_results(qa_toy: dict) -> None:
    out = qa_toy["dir"] / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "benchmarks.run", *qa_toy["args"], "--out", str(out)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert comparable(out, 1) == comparable(qa_toy["single"], 1)
    assert re.search(r"rank 0/2: [34] of 7 shards to explain on cpu", proc.stderr)
    assert re.search(r"rank 1/2: [34] of 7 shards to explain on cpu", proc.stderr)
    assert re.search(r"rank 0: [34] shards \(\d+ questions\)", proc.stdout)
    assert re.search(r"rank 1: [34] shards \(\d+ questions\)", proc.stdout)
    assert proc.stdout.count("2 process(es)") == 1
    assert len(json.loads((out / "results.json").read_text())["config"]["seconds_per_rank"]) == 2
    assert not list(out.glob("partial-*"))


def test_a_killed_squad_run_resumes_where_it_stopped(qa_toy: dict, capsys: pytest.CaptureFixture) -> None:
    out = qa_toy["dir"] / "killed"
    kill_and_resume(qa_toy["args"], out, qa_toy["dir"] / "killed.log", ["--k", "2"], 7, 120, capsys)
    assert comparable(out, 1) == comparable(qa_toy["single"], 1)
