"""Precision@K of every attribution method on extractive question answering (SQuAD).

Each answerable question is explained on the window of its context that holds the gold answer
(:func:`benchmarks.squad.answer_window`): the attribution of the start logit at the explained
span's first token plus that of the end logit at its last token (:class:`captum_attcat.AnswerSpan`).
Precision@K counts the gold-answer tokens among the top K ranked tokens (the AttCAT paper's
Precision@20) and gives that count as a percentage of the answer's length (the Mask-LRP paper's).
Unanswerable questions (SQuAD v2) are skipped and counted.

Protocols (:data:`QA_PROTOCOLS`): ``paper`` follows the papers' text (the gold span explained,
only **context** tokens ranked: never the question, [CLS]/[SEP] or padding); ``attcat`` and
``masklrp`` follow the authors' code (the model's predicted span explained, every real token
ranked; Mask-LRP's % is the mean count over the mean answer length). Protocols that explain the
same span share the explanations.

Command line (through :mod:`benchmarks.run`)::

    python -m benchmarks.run --task squad --methods all [--protocol paper|attcat|masklrp|all] [--limit N]
        [--k 20] [--qa-target gold|predicted] [--data FILE.json|FILE.jsonl] [--model PATH] [--out DIR]
    torchrun --nproc_per_node 2 -m benchmarks.run --task squad --methods all --threads 1

The questions are sorted by window length and cut into shards (the explanation batches), each
explained and scored on its own and saved as soon as it is done (a killed run started again
redoes only the others); under ``torchrun`` the processes share the shards and rank 0 gathers
them and writes the files once, the same as one process (:mod:`benchmarks.distributed`).

Example::

    >>> from benchmarks.qa import prepare_questions, evaluate_qa_methods
    >>> questions, skipped = prepare_questions(model, tokenizer, load_squad(limit=50))  # doctest: +SKIP
    >>> rows = evaluate_qa_methods(model, tokenizer, questions, {"Saliency": SaliencyEmbeddings})  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from captum_attcat import AnswerSpan

from .data import token_batches
from .distributed import Ranks, finish_shards, run_shards
from .metrics import precision_at_k
from .resume import PartialResults, code_digest, digest, fingerprint, model_digest
from .squad import QAExample, QAWindow, answer_window, encode_windows, pad_windows, window_spans

__all__ = ["QAQuestion", "QAProtocol", "QA_PROTOCOLS", "QAResult", "CURVE_KS", "prepare_questions", "qa_shards",
           "explain_qa_shard", "merge_qa_shards", "evaluate_qa_methods", "write_qa_results", "run_squad"]

#: the K of the Precision@K plot
CURVE_KS = (1, 2, 3, 5, 10, 15, 20, 30, 40, 50)


@dataclass(frozen=True)
class QAQuestion:
    """One question to explain: its window, the gold answer's token span and the model's best span."""

    id: str
    window: QAWindow
    gold: tuple[int, int]
    predicted: tuple[int, int]

    def span(self, target: str) -> tuple[int, int]:
        """The explained span: ``"gold"`` or ``"predicted"``."""
        return self.gold if target == "gold" else self.predicted


@dataclass(frozen=True)
class QAProtocol:
    """What a Precision@K run explains and counts.

    ``target``: the span explained (``"gold"`` or the model's ``"predicted"`` one); ``ranked``:
    the tokens ranked (``"context"`` only, or ``"all"`` real tokens, question and [CLS]/[SEP]
    included); ``percent``: the % of the answer per question then averaged
    (``"per_question"``), or mean count over mean answer length (``"ratio_of_means"``).
    """

    name: str
    target: str
    ranked: str
    percent: str
    description: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


#: ``paper``: the papers' text (gold answers, context tokens); ``attcat`` / ``masklrp``: their
#: reference code (the predicted span's start and end explained, every token ranked)
QA_PROTOCOLS: dict[str, QAProtocol] = {
    "paper": QAProtocol("paper", "gold", "context", "per_question",
                        "gold answer span; context tokens ranked; % per question"),
    "attcat": QAProtocol("attcat", "predicted", "all", "per_question",
                         "AttCAT reference notebooks: predicted span; every token ranked; the count"),
    "masklrp": QAProtocol("masklrp", "predicted", "all", "ratio_of_means",
                          "Mask-LRP reference code: predicted span; every token ranked; mean count / mean answer length"),
}


@dataclass
class QAResult:
    """One method's row: mean Precision@K (count and % of the answer length) for each K."""

    protocol: str
    method: str
    questions: int
    k: int
    count: float = float("nan")
    percent: float = float("nan")
    explain_seconds: float = 0.0
    error: str | None = None
    curve: dict[int, tuple[float, float]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "method": self.method, "questions": self.questions, "k": self.k, "precision_count": self.count,
                "precision_percent": self.percent, "explain_seconds": self.explain_seconds, "error": self.error}


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def prepare_questions(model: Any, tokenizer: Any, examples: Sequence[QAExample], *, max_length: int = 384,
                      stride: int = 128, batch_size: int = 32) -> tuple[list[QAQuestion], dict[str, int]]:
    """The questions to explain and what was skipped: ``{"unanswerable": n, "answer_not_in_window": n}``.

    Each question keeps the window holding its gold answer, the gold token span, and the model's
    best span on that window (start <= end, at most 30 tokens, in the context).
    """
    answerable = [e for e in examples if e.answerable]
    skipped = {"unanswerable": len(examples) - len(answerable), "answer_not_in_window": 0}
    if not answerable:
        return [], skipped
    chosen = answer_window(encode_windows(answerable, tokenizer, max_length, stride))
    skipped["answer_not_in_window"] = len(answerable) - len(chosen)
    order = sorted(chosen)
    windows = [chosen[i] for i in order]
    predicted = [(a, b) for a, b, _ in window_spans(model, tokenizer, windows, batch_size)]
    questions = [QAQuestion(answerable[i].id, w, w.answer, span)  # type: ignore[arg-type]
                 for i, w, span in zip(order, windows, predicted)]
    return questions, skipped


def qa_shards(questions: Sequence[QAQuestion], batch_size: int = 32, max_tokens: int | None = 1024
              ) -> list[list[int]]:
    """The run's shards: the explanation batches of the questions sorted by window length (indices
    into ``questions``), at most ``batch_size`` questions and ``max_tokens`` tokens once padded,
    counted twice (the start and the end are explained side by side); the same whatever the
    number of processes.

    Example::

        >>> qa_shards(questions, batch_size=2)  # doctest: +SKIP
        [[3, 0], [1, 2], [4]]
    """
    order = sorted(range(len(questions)), key=lambda i: len(questions[i].window.input_ids))
    budget = None if max_tokens is None else max(1, max_tokens // 2)
    return [order[s] for s in token_batches([len(questions[i].window.input_ids) for i in order], batch_size, budget)]


def explain_qa_shard(
    model: Any,
    tokenizer: Any,
    questions: Sequence[QAQuestion],
    methods: dict[str, type],
    protocols: Sequence[QAProtocol],
    *,
    ks: Sequence[int],
    seed: int = 0,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    explainers: dict[str, Any] | None = None,
    on_method: Any = None,
) -> dict[str, Any]:
    """Explain one shard of questions (one padded batch) with every method, an
    :class:`~captum_attcat.AnswerSpan` target on each protocol's span, and count the gold-answer
    tokens among the top K for every K of ``ks``; protocols explaining the same span share the
    explanations.

    Returns plain data (what :class:`benchmarks.resume.PartialResults` stores): ``{"lengths":
    gold answer lengths, "protocols": {protocol: {method: {"counts": (questions, len(ks)),
    "explain_seconds", "error"}}}}``, rows in the order given. It depends only on the shard and
    ``seed`` (methods that take a ``seed``, the random floor, are built with it); the other
    methods are built once into ``explainers`` when given. ``on_method(target, method)`` is
    called before each explanation (progress).
    """
    from .run import _explainer

    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask, types, context = pad_windows([q.window for q in questions], pad, _device(model))
    args = (mask,) if types is None else (mask, types)
    first, last = [q.gold[0] for q in questions], [q.gold[1] for q in questions]
    out: dict[str, Any] = {"lengths": torch.tensor([b - a + 1 for a, b in zip(first, last)], dtype=torch.float64),
                           "protocols": {p.name: {} for p in protocols}}
    for name, cls in methods.items():
        rows = {p.name: {"explain_seconds": 0.0, "error": None} for p in protocols}
        for p in protocols:
            out["protocols"][p.name][name] = rows[p.name]
        try:
            explainer = _explainer(name, cls, model, (method_kwargs or {}).get(name, {}), seed, explainers)
        except Exception as exc:  # a method that cannot handle this model: report, go on
            for row in rows.values():
                row["error"] = f"{type(exc).__name__}: {exc}"
            continue
        for target in dict.fromkeys(p.target for p in protocols):
            sharing = [p for p in protocols if p.target == target]
            if on_method is not None:
                on_method(target, name)
            try:
                t0 = time.perf_counter()
                explained = [q.span(target) for q in questions]
                span = AnswerSpan([a for a, _ in explained], [b for _, b in explained])
                scores = explainer.attribute(ids, target=span, additional_forward_args=args).detach().float()
                counts = {}
                for p in sharing:
                    rankable = context if p.ranked == "context" else mask
                    counts[p.name] = torch.stack([precision_at_k(scores, None, first, last, k=x,
                                                                 attention_mask=rankable)[0].double().cpu()
                                                  for x in ks], 1)
                seconds = time.perf_counter() - t0
            except Exception as exc:
                for p in sharing:
                    rows[p.name]["error"] = f"{type(exc).__name__}: {exc}"
                continue
            for p in sharing:
                rows[p.name].update(counts=counts[p.name], explain_seconds=seconds)
    return out


def qa_shard_failed(payload: dict[str, Any]) -> bool:
    """Whether a method failed on this shard (such a shard is not kept for resuming)."""
    return any(r["error"] for rows in payload["protocols"].values() for r in rows.values())


def merge_qa_shards(payloads: Sequence[dict[str, Any]], methods: Sequence[str], protocols: Sequence[QAProtocol],
                    *, k: int, ks: Sequence[int]) -> list[QAResult]:
    """The rows of every method and protocol from the shards' results (:func:`explain_qa_shard`,
    all with the same ``ks``), given in shard order: per-question counts are concatenated in that
    order before any mean, so the rows are the same whichever processes explained which shards.
    A method that failed on any shard has ``error`` (the first failure) set."""
    questions = sum(len(p["lengths"]) for p in payloads)
    length = torch.cat([p["lengths"] for p in payloads]) if payloads else torch.zeros(0, dtype=torch.float64)
    results: list[QAResult] = []
    for name in methods:
        for p in protocols:
            parts = [x["protocols"][p.name][name] for x in payloads]
            res = QAResult(p.name, name, questions, k)
            results.append(res)
            res.explain_seconds = round(sum(x["explain_seconds"] for x in parts), 3)
            errors = [x["error"] for x in parts if x["error"]]
            if errors:
                res.error = errors[0]
                continue
            if not parts:
                continue
            counts = torch.cat([x["counts"] for x in parts])
            for j, x in enumerate(ks):
                c = counts[:, j].contiguous()
                pct = 100 * c.mean() / length.mean() if p.percent == "ratio_of_means" else (100 * c / length).mean()
                res.curve[x] = (float(c.mean()), float(pct))
            res.count, res.percent = res.curve[k]
    return results


def evaluate_qa_methods(
    model: Any,
    tokenizer: Any,
    questions: Sequence[QAQuestion],
    methods: dict[str, type],
    protocols: Sequence[QAProtocol] = (QA_PROTOCOLS["paper"],),
    *,
    k: int = 20,
    curve_ks: Sequence[int] = CURVE_KS,
    batch_size: int = 32,
    max_tokens: int | None = 1024,
    progress: bool = True,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
) -> list[QAResult]:
    """Explain every question with every method (an :class:`~captum_attcat.AnswerSpan` target on
    each protocol's span) and score Precision@K of the gold answer, for ``k`` and every K of
    ``curve_ks``; protocols explaining the same span share the explanations.

    The questions are cut into shards (:func:`qa_shards`: at most ``batch_size`` questions and
    ``max_tokens`` tokens once padded, counted twice), each explained on its own
    (:func:`explain_qa_shard`, the random floor seeded with the shard's index) and merged in
    shard order (:func:`merge_qa_shards`), as the command line does in one process or many. A
    method that fails has ``error`` set in its rows.
    """
    from tqdm.auto import tqdm

    ks = sorted(set(curve_ks) | {k})
    shards = qa_shards(questions, batch_size, max_tokens)
    built: dict[str, Any] = {}
    payloads = [explain_qa_shard(model, tokenizer, [questions[j] for j in shard], methods, protocols, ks=ks, seed=i,
                                 method_kwargs=method_kwargs, explainers=built)
                for i, shard in enumerate(tqdm(shards, desc="squad", unit="shard", disable=not progress, leave=False))]
    return merge_qa_shards(payloads, list(methods), protocols, k=k, ks=ks)


def write_qa_results(out_dir: Path, results: Sequence[QAResult], config: dict[str, Any]) -> list[Path]:
    """``results.md``, ``results.csv``, ``results.json`` and ``precision_at_k_<protocol>.png``; a
    run with failed methods says so first (``**INCOMPLETE RUN**``, ``"complete": false``)."""
    from .run import _versions, plot_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    failed = [r for r in results if r.error]
    payload = {"complete": not failed, "failed": [f"{r.protocol}:{r.method}: {r.error}" for r in failed],
               "config": config, "versions": _versions(), "results": [r.row() for r in results],
               "curves": {f"{r.protocol}/{r.method}": {str(x): {"count": c, "percent": p} for x, (c, p) in r.curve.items()}
                          for r in results if r.curve}}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    with open(out_dir / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(QAResult("", "", 0, 0).row()))
        w.writeheader()
        for r in results:
            w.writerow(r.row())
    k = config["k"]
    skipped = config.get("skipped", {})
    lines = [f"# Precision@{k} on {config.get('task')} ({config.get('model')})", ""]
    if failed:
        lines += ["**INCOMPLETE RUN**", "", "These methods failed and are not in the tables below:", ""]
        lines += [f"- `{r.protocol}:{r.method}`: {r.error}" for r in failed] + [""]
    lines += [f"{config.get('questions')} questions (start + end attribution of the explained span); skipped: "
              f"{skipped.get('unanswerable', 0)} unanswerable, {skipped.get('answer_not_in_window', 0)} with the "
              f"answer in no window; {config.get('seconds', 0):.0f} s. Count: gold-answer tokens among the top "
              "K (AttCAT paper); %: of the answer's length (Mask-LRP paper).", ""]
    for name in dict.fromkeys(r.protocol for r in results):
        pc = config["protocols"][name]
        lines += [f"## protocol `{name}`: {pc['description']}", "",
                  f"| method | Precision@{k} (count) | Precision@{k} (% of answer) | explain s |", "|---|---:|---:|---:|"]
        for r in sorted((r for r in results if r.protocol == name and not r.error), key=lambda r: -r.count):
            lines.append(f"| {r.method} | {r.count:.3f} | {r.percent:.2f} | {r.explain_seconds:.1f} |")
        lines.append("")
    (out_dir / "results.md").write_text("\n".join(lines))
    written = [out_dir / "results.json", out_dir / "results.csv", out_dir / "results.md"]

    for name in dict.fromkeys(r.protocol for r in results):
        rows = [r for r in results if r.protocol == name and r.curve]
        if not rows:
            continue
        ks = sorted(rows[0].curve)
        path = out_dir / f"precision_at_k_{name}.png"
        plot_curves(path, ks, [(r.method, [r.curve[x][0] for x in ks], [r.curve[x][1] for x in ks]) for r in rows],
                    (f"Precision@K, count ({name})", "answer tokens in the top K"),
                    (f"Precision@K, % of answer length ({name})", "% of the answer in the top K"),
                    xlabel="K (top-ranked tokens)")
        written.append(path)
    return written


def run_squad(a: Any, argv: Sequence[str] | None) -> int:
    """``python -m benchmarks.run --task squad ...`` (``a`` holds the parsed options): explain the
    held-out articles of SQuAD v1.1 dev (or every question of ``--data``), write the tables.

    As for classification, the questions are cut into shards (:func:`qa_shards`) whose results
    are saved as they finish under ``<out>/partial-<fingerprint>/`` (a killed run started again
    redoes only the others), and under ``torchrun`` the shards are shared among the processes
    and gathered on rank 0, which writes the files once (:func:`benchmarks.distributed.run_shards`).
    """
    from .cli import UsageError
    from .squad import DEFAULT_SQUAD_FILE, load_squad, split_articles

    if a.kendall:
        raise UsageError("--kendall does not apply to --task squad (Precision@K has no other classes)")
    names = list(QA_PROTOCOLS) if a.protocol == "all" else [x.strip() for x in a.protocol.split(",")]
    unknown = [x for x in names if x not in QA_PROTOCOLS]
    if unknown:
        raise UsageError(f"unknown QA protocol {unknown[0]!r}; QA protocols: {', '.join(QA_PROTOCOLS)}, all")
    protocols = [QA_PROTOCOLS[x] for x in names]
    if a.qa_target:
        protocols = [dataclasses.replace(p, target=a.qa_target, description=f"{p.description} ({a.qa_target} span)")
                     for p in protocols]
    if a.stride >= a.window:
        raise UsageError(f"--stride {a.stride} must be smaller than --window {a.window}")
    from .run import available_methods, select_methods

    methods = select_methods(a.methods, available_methods())
    if a.data:
        examples, source = load_squad(a.data), a.data
    else:
        examples, source = split_articles(load_squad())[1], f"{DEFAULT_SQUAD_FILE.name} (held-out articles)"
    examples = examples[:a.limit] if a.limit else examples
    ranks = Ranks.from_environment(a.device)
    try:
        return _run_squad_shards(a, argv, ranks, protocols, methods, examples, source)
    finally:
        ranks.close()


def _run_squad_shards(a: Any, argv: Sequence[str] | None, ranks: Ranks, protocols: list[QAProtocol],
                      methods: dict[str, type], examples: list[QAExample], source: str) -> int:
    """Explain the shards of this rank that no earlier run finished, gather every shard's results
    on rank 0 and write them there once (as :func:`benchmarks.run._run_shards` does for
    classification)."""
    import sys

    from .cli import UsageError
    from .run import _load_model, _versions, arguments_digest, exit_status, method_arguments

    progress, lead = not a.no_progress, ranks.rank == 0
    t0 = time.perf_counter()
    model, tokenizer, model_path = ranks.first_on_each_machine(
        lambda: _load_model(a.model, progress and lead, task="squad"))
    questions, skipped = prepare_questions(model, tokenizer, examples, max_length=a.window, stride=a.stride,
                                           batch_size=a.batch_size)
    if not questions:
        raise UsageError(f"{source}: no answerable question whose answer fits a window of {a.window} tokens")
    t_run, cpu_run = time.perf_counter(), time.process_time()
    method_kwargs, head_mask_source = ranks.first_on_each_machine(
        lambda: method_arguments(a, methods, model, tokenizer, model_path, progress and lead, quiet=not lead))
    model.to(ranks.device)
    ks = sorted(set(CURVE_KS) | {a.k})
    shards = qa_shards(questions, a.batch_size, a.max_tokens)
    parts = {
        "data": digest([[e.id, e.title, e.question, e.context, [list(x) for x in e.answers]] for e in examples]),
        "tokenized data": digest([[q.id, q.window.input_ids, q.window.token_type_ids, q.window.context_mask,
                                   list(q.gold), list(q.predicted)] for q in questions]),
        "model": model_digest(model),
        "method arguments": arguments_digest(method_kwargs),
        "settings": digest({"task": "squad", "data": source, "limit": a.limit, "methods": list(methods),
                            "protocols": [p.to_dict() for p in protocols], "k": a.k, "curve_ks": ks,
                            "window": a.window, "stride": a.stride, "batch_size": a.batch_size,
                            "max_tokens": a.max_tokens, "ig_steps": a.ig_steps, "device": ranks.device.type}),
        "library versions": digest(_versions()),
        "code": code_digest(),
    }
    ranks.check_agreement(parts)  # every rank fails, naming what differs
    out = Path(a.out) if a.out else Path("results") / ("squad" if not a.data else Path(a.data).stem)
    store = PartialResults(out / f"partial-{fingerprint(parts)[:16]}")
    built: dict[str, Any] = {}
    done = run_shards(ranks, store, [len(s) * max(len(questions[j].window.input_ids) for j in s) for s in shards],
                      lambda i, note: explain_qa_shard(model, tokenizer, [questions[j] for j in shards[i]], methods,
                                                       protocols, ks=ks, seed=i, method_kwargs=method_kwargs,
                                                       explainers=built,
                                                       on_method=lambda t, m: note(f"{t}:{m}")),
                      sizes=[len(s) for s in shards], failed=qa_shard_failed, progress=progress)
    status = 0
    if done is not None:
        results = merge_qa_shards(done.payloads, list(methods), protocols, k=a.k, ks=ks)
        eval_json = Path(model_path) / "eval.json"
        model_eval = json.loads(eval_json.read_text()) if eval_json.is_file() else {}
        config = {
            "task": "squad", "data": source, "questions_read": len(examples), "questions": len(questions),
            "skipped": skipped, "limit": a.limit, "model": model_path,
            "model_exact_match": model_eval.get("exact_match"), "model_f1": model_eval.get("f1"),
            "methods": list(methods), "k": a.k, "curve_ks": list(CURVE_KS),
            "protocols": {p.name: p.to_dict() for p in protocols},
            "window": a.window, "stride": a.stride, "batch_size": a.batch_size, "max_tokens": a.max_tokens,
            "ig_steps": a.ig_steps, "head_mask": head_mask_source, "threads": torch.get_num_threads(),
            "device": ranks.device.type, "shards": len(shards),
            "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
            **done.timing(t0, t_run, cpu_run),
        }
        written = write_qa_results(out, results, config)
        print((out / "results.md").read_text())
        done.report(ranks, len(questions), "questions", f"{len(methods)} methods, {len(protocols)} protocol(s)",
                    config["seconds"], written)
        status = exit_status(results, out, prefix="squad:")
    return finish_shards(ranks, store, status)
