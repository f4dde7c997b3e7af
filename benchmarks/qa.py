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
from .metrics import precision_at_k
from .squad import QAExample, QAWindow, answer_window, encode_windows, pad_windows, window_spans

__all__ = ["QAQuestion", "QAProtocol", "QA_PROTOCOLS", "QAResult", "CURVE_KS", "prepare_questions", "evaluate_qa_methods", "write_qa_results",
           "run_squad"]

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

    Batches hold at most ``batch_size`` questions and ``max_tokens`` tokens once padded, counted
    twice (the start and the end are explained side by side). A method that fails has ``error``
    set in its rows.
    """
    from tqdm.auto import tqdm

    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(questions)), key=lambda i: len(questions[i].window.input_ids))
    ordered = [questions[i] for i in order]
    budget = None if max_tokens is None else max(1, max_tokens // 2)
    batches = [ordered[s] for s in token_batches([len(q.window.input_ids) for q in ordered], batch_size, budget)]
    ks = sorted(set(curve_ks) | {k})
    results: list[QAResult] = []
    for name, cls in methods.items():
        rows = {p.name: QAResult(p.name, name, len(questions), k) for p in protocols}
        results.extend(rows.values())
        if not batches:
            continue
        try:
            explainer = cls(model, **(method_kwargs or {}).get(name, {}))
        except Exception as exc:  # a method that cannot handle this model: report, go on
            for res in rows.values():
                res.error = f"{type(exc).__name__}: {exc}"
            continue
        for target in dict.fromkeys(p.target for p in protocols):
            sharing = [p for p in protocols if p.target == target]
            counts = {(p.name, x): [] for p in sharing for x in ks}  # type: dict[tuple[str, int], list[torch.Tensor]]
            lengths: list[torch.Tensor] = []
            bar = tqdm(batches, desc=f"squad:{name}:{target}", unit="batch", disable=not progress, leave=False)
            try:
                t0 = time.perf_counter()
                for part in bar:
                    ids, mask, types, context = pad_windows([q.window for q in part], pad, _device(model))
                    explained = [q.span(target) for q in part]
                    span = AnswerSpan([a for a, _ in explained], [b for _, b in explained])
                    args = (mask,) if types is None else (mask, types)
                    scores = explainer.attribute(ids, target=span, additional_forward_args=args).detach().float()
                    first, last = [q.gold[0] for q in part], [q.gold[1] for q in part]
                    lengths.append(torch.tensor([b - a + 1 for a, b in zip(first, last)], dtype=torch.float64))
                    for p in sharing:
                        rankable = context if p.ranked == "context" else mask
                        for x in ks:
                            c, _ = precision_at_k(scores, None, first, last, k=x, attention_mask=rankable)
                            counts[(p.name, x)].append(c.double().cpu())
                seconds = round(time.perf_counter() - t0, 3)
            except Exception as exc:
                for p in sharing:
                    rows[p.name].error = f"{type(exc).__name__}: {exc}"
                continue
            finally:
                bar.close()
            length = torch.cat(lengths)
            for p in sharing:
                res = rows[p.name]
                res.explain_seconds = seconds
                for x in ks:
                    c = torch.cat(counts[(p.name, x)])
                    pct = 100 * c.mean() / length.mean() if p.percent == "ratio_of_means" else (100 * c / length).mean()
                    res.curve[x] = (float(c.mean()), float(pct))
                res.count, res.percent = res.curve[k]
    return results


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
    held-out articles of SQuAD v1.1 dev (or every question of ``--data``), write the tables."""
    import sys

    from .cli import UsageError
    from .run import _load_model, available_methods, exit_status, method_arguments, select_methods
    from .squad import DEFAULT_SQUAD_FILE, load_squad, split_articles

    progress = not a.no_progress
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
    methods = select_methods(a.methods, available_methods())
    if a.data:
        examples, source = load_squad(a.data), a.data
    else:
        examples, source = split_articles(load_squad())[1], f"{DEFAULT_SQUAD_FILE.name} (held-out articles)"
    examples = examples[:a.limit] if a.limit else examples
    t0 = time.perf_counter()
    model, tokenizer, model_path = _load_model(a.model, progress, task="squad")
    questions, skipped = prepare_questions(model, tokenizer, examples, max_length=a.window, stride=a.stride,
                                           batch_size=a.batch_size)
    if not questions:
        raise UsageError(f"{source}: no answerable question whose answer fits a window of {a.window} tokens")
    method_kwargs, head_mask_source = method_arguments(a, methods, model, tokenizer, model_path, progress)
    eval_json = Path(model_path) / "eval.json"
    model_eval = json.loads(eval_json.read_text()) if eval_json.is_file() else {}
    t_run, cpu_run = time.perf_counter(), time.process_time()
    results = evaluate_qa_methods(model, tokenizer, questions, methods, protocols, k=a.k, batch_size=a.batch_size,
                                  max_tokens=a.max_tokens, progress=progress, method_kwargs=method_kwargs)
    out = Path(a.out) if a.out else Path("results") / ("squad" if not a.data else Path(a.data).stem)
    config = {
        "task": "squad", "data": source, "questions_read": len(examples), "questions": len(questions),
        "skipped": skipped, "limit": a.limit, "model": model_path,
        "model_exact_match": model_eval.get("exact_match"), "model_f1": model_eval.get("f1"),
        "methods": list(methods), "k": a.k, "curve_ks": list(CURVE_KS),
        "protocols": {p.name: p.to_dict() for p in protocols},
        "window": a.window, "stride": a.stride, "batch_size": a.batch_size, "max_tokens": a.max_tokens,
        "ig_steps": a.ig_steps, "head_mask": head_mask_source, "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t_run, 1), "cpu_seconds": round(time.process_time() - cpu_run, 1),
        "seconds_with_model_loading": round(time.perf_counter() - t0, 1),
        "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
    }
    written = write_qa_results(out, results, config)
    print((out / "results.md").read_text())
    print(f"{len(questions)} questions, {len(methods)} methods, {len(protocols)} protocol(s): {config['seconds']:.1f} s; "
          f"wrote {', '.join(str(w) for w in written)}")
    return exit_status(results, out, prefix="squad:")
