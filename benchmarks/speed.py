"""Speed of every registered method against the gradient floor (DESIGN section 9).

The floor is the least any gradient explanation costs: one forward pass plus the
gradient of the explained logits with respect to the embedding output (no
parameter gradients), same model, batch and attention implementation as loaded.
Each method's time is reported as a ratio to the floor measured in the same run.
Methods and the floor are interleaved; a method's time is the minimum of its
repeats (``--statistic median`` for the median; the JSON has both ratios and every
repeat). Every method runs with its defaults, MaskLRP with the head mask found for
the pretrained MiniLM (``docs/minilm_head_mask.json``). By default the clock is the
process's CPU time with one intra-op thread, which other processes on a shared
machine barely disturb; ``--clock wall --threads 2`` measures elapsed time on two
cores instead (use it on a quiet machine).

Peak memory: each method, and the floor, runs once at ``--memory-batch`` x
``--memory-seq-len`` (8 x 512) in a fresh process of its own; its peak is the growth of
the process's resident memory (``VmHWM``, reset after the model is built) over what the
model and inputs already hold, reported next to the floor's (``--no-memory`` skips it).

Usage::

    python -m benchmarks.speed [--json FILE] [--batch-sizes 1 32] [--repeats 9] [--statistic min]
    python -m benchmarks.speed --architecture llama --no-memory   # a MiniLM-sized Llama
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import captum
import torch
import transformers
from captum.attr import LayerIntegratedGradients
from torch import Tensor
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from captum_attcat import METHODS, HeadMask, TransformerAdapter, missing_arguments

IG_STEPS = 50
IG_MIN_SPEEDUP = 25.0
#: MaskLRP runs with the head mask found for the pretrained MiniLM (3 of 72 heads), which fits
#: the MiniLM-shaped model measured here
HEAD_MASK = Path(__file__).resolve().parents[1] / "docs" / "minilm_head_mask.json"


#: the architecture measured (``--architecture``)
ARCHITECTURES = ("bert", "llama")
_architecture = "bert"


def minilm_sized_model(seed: int = 0, architecture: str | None = None) -> torch.nn.Module:
    """A model shaped like all-MiniLM-L6-v2 (6 blocks, 12 heads, hidden 384, feed-forward 1536),
    random weights: a BERT, or a Llama (RMSNorm, rotary embeddings, gated MLP) of the same sizes."""
    torch.manual_seed(seed)
    sizes = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512, num_labels=2)
    if (architecture or _architecture) == "llama":
        return LlamaForSequenceClassification(LlamaConfig(**sizes, pad_token_id=0)).eval()
    return BertForSequenceClassification(BertConfig(**sizes)).eval()


def gradient_floor(model: torch.nn.Module, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    """One forward and the gradient of the explained logits w.r.t. the embedding output."""
    first_block = TransformerAdapter.from_model(model).blocks[0]
    seen: list[Tensor] = []
    handle = first_block.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        logits = model(ids, attention_mask=mask).logits
    finally:
        handle.remove()
    return torch.autograd.grad(logits.gather(1, target[:, None]).sum(), seen[0])[0]


def _integrated_gradients(model: torch.nn.Module) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Captum's LayerIntegratedGradients on the embeddings, baseline = [PAD] ids."""
    embeddings = model.bert.embeddings if hasattr(model, "bert") else model.get_input_embeddings()
    explainer = LayerIntegratedGradients(lambda ids, mask: model(ids, attention_mask=mask).logits, embeddings)

    def run(ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        baseline = torch.full_like(ids, model.config.pad_token_id or 0)
        return explainer.attribute(
            ids, baselines=baseline, target=target, additional_forward_args=(mask,),
            n_steps=IG_STEPS, internal_batch_size=max(ids.shape[0] * IG_STEPS // 4, IG_STEPS),
        ).sum(-1)

    return run


#: the sentences of ContrastCAT's reference set here (random token ids, as the model's weights)
REFERENCES = 30


def explainer_for(cls: type, model: torch.nn.Module, seq_len: int = 64) -> object:
    """The explainer measured for ``cls``: its defaults plus its required arguments
    (``required_arguments``): MaskLRP's head mask :data:`HEAD_MASK`, ContrastCAT's reference set
    (:data:`REFERENCES` random sentences of ``seq_len`` tokens, the measured length)."""
    given: dict = {}
    for argument in missing_arguments(cls):
        if argument == "head_mask":
            given["head_mask"] = HeadMask.load(HEAD_MASK)
        elif argument == "references":
            references = torch.randint(1000, 30000, (REFERENCES, seq_len), generator=torch.Generator().manual_seed(7))
            given.update(references=references, reference_args=(torch.ones_like(references),))
        else:
            raise ValueError(f"{cls.__name__} needs `{argument}`, which the speed harness cannot supply")
    return cls(model, **given)


def _method_runner(cls: type, model: torch.nn.Module, seq_len: int) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    explainer = explainer_for(cls, model, seq_len)
    return lambda ids, mask, target: explainer.attribute(ids, target=target, additional_forward_args=(mask,))


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


def _time(fn: Callable[[], object]) -> float:
    start = _clock()
    fn()
    return _clock() - start


#: how the repeats of one method become its time: the minimum (default: interference from
#: other work on the machine only ever adds time, as Python's ``timeit`` notes) or the median
STATISTICS: dict[str, Callable[[list[float]], float]] = {"min": min, "median": statistics.median}


def measure(batch_size: int, seq_len: int = 64, repeats: int = 9, ig_repeats: int = 2,
            statistic: str = "min") -> dict:
    """Seconds of the floor, each registered method and IG (``statistic`` of the repeats,
    every repeat kept too), and their ratios to the floor."""
    model = minilm_sized_model()
    generator = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(1000, 30000, (batch_size, seq_len), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    target = torch.randint(0, 2, (batch_size,), generator=generator)
    runners = {"floor": lambda i, m, t: gradient_floor(model, i, m, t)}
    runners.update({name: _method_runner(cls, model, seq_len) for name, cls in sorted(METHODS.items())
                    if cls.floor_budget is not None})
    for run in runners.values():  # warm-up
        run(ids, mask, target)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(_time(lambda: run(ids, mask, target)))
    # methods without a budget (ContrastCAT: dozens of forwards per example) and IG: ig_repeats runs each
    slow = {name: _method_runner(cls, model, seq_len) for name, cls in sorted(METHODS.items()) if cls.floor_budget is None}
    slow["LayerIntegratedGradients"] = _integrated_gradients(model)
    for name, run in slow.items():
        times[name] = [_time(lambda: run(ids, mask, target)) for _ in range(ig_repeats)]
    ratios_by = {
        stat: {name: reduce(values) / reduce(times["floor"]) for name, values in times.items()}
        for stat, reduce in STATISTICS.items()
    }
    seconds = {name: STATISTICS[statistic](values) for name, values in times.items()}
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "statistic": statistic,
        "seconds": seconds,
        "ratio_to_floor": ratios_by[statistic],
        "ratio_to_floor_by_statistic": ratios_by,
        "times": times,
        "attcat_speedup_over_ig": seconds["LayerIntegratedGradients"] / seconds["AttCAT"],
        "budgets": {name: METHODS[name].floor_budget for name in METHODS if METHODS[name].floor_budget is not None},
    }


def _resident_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status: peak memory is measured on Linux only")


def _peak_in_this_process(name: str, batch_size: int, seq_len: int, threads: int) -> float:
    """MiB the resident memory grows by while ``name`` (or ``"floor"``) runs once."""
    torch.set_num_threads(threads)
    model = minilm_sized_model()
    generator = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(1000, 30000, (batch_size, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    target = torch.randint(0, 2, (batch_size,), generator=generator)
    run = (lambda i, m, t: gradient_floor(model, i, m, t)) if name == "floor" else _method_runner(METHODS[name], model, seq_len)
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from what is resident now
    before = _resident_kib("VmRSS")
    run(ids, mask, target)
    return (_resident_kib("VmHWM") - before) / 1024


def peak_memory(batch_size: int = 8, seq_len: int = 512, threads: int = 1) -> dict:
    """Peak memory (MiB) of the floor and every registered method, each in a fresh process,
    and its ratio to the floor's."""
    context = multiprocessing.get_context("spawn")
    names = ["floor", *sorted(METHODS)]
    with context.Pool(1, maxtasksperchild=1) as pool:
        mib = {name: pool.apply(_peak_in_this_process, (name, batch_size, seq_len, threads)) for name in names}
    return {"batch_size": batch_size, "seq_len": seq_len, "peak_mib": mib,
            "ratio_to_floor": {name: value / mib["floor"] for name, value in mib.items()}}


def memory_table(memory: dict) -> str:
    """A Markdown table of :func:`peak_memory`."""
    lines = [f"| method | peak MiB at batch {memory['batch_size']} x {memory['seq_len']} tokens | x floor |",
             "|---|---|---|"]
    for name, mib in memory["peak_mib"].items():
        lines.append(f"| {name} | {mib:.0f} | {memory['ratio_to_floor'][name]:.2f}x |")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    """A Markdown table: per method, seconds and ratio to the floor at each batch size."""
    names = list(results[0]["seconds"])
    head = "| method | budget | " + " | ".join(
        f"batch {r['batch_size']}: s / x floor" for r in results
    ) + " |"
    lines = [head, "|" + "---|" * (2 + len(results))]
    for name in names:
        budget = results[0]["budgets"].get(name)
        budget_text = f"<= {budget:g}x" if budget else ("1x" if name == "floor" else (
            f">= {IG_MIN_SPEEDUP:g}x slower than AttCAT" if name == "LayerIntegratedGradients" else "none"))
        cells = [f"{r['seconds'][name]:.4f} / {r['ratio_to_floor'][name]:.2f}x" for r in results]
        lines.append(f"| {name} | {budget_text} | " + " | ".join(cells) + " |")
    speedups = ", ".join(f"batch {r['batch_size']}: {r['attcat_speedup_over_ig']:.1f}x" for r in results)
    lines.append("")
    lines.append(f"Times: the {results[0].get('statistic', 'min')} of the repeats (CPU seconds).")
    lines.append(f"AttCAT speed-up over LayerIntegratedGradients(n_steps={IG_STEPS}): {speedups}")
    return "\n".join(lines)


def failures(results: list[dict]) -> list[str]:
    """Every budget of DESIGN section 9 that a measurement misses."""
    missed = []
    for r in results:
        for name, budget in r["budgets"].items():
            if r["ratio_to_floor"][name] > budget:
                missed.append(f"{name} at batch {r['batch_size']}: {r['ratio_to_floor'][name]:.2f}x > {budget:g}x")
        if r["attcat_speedup_over_ig"] < IG_MIN_SPEEDUP:
            missed.append(f"AttCAT vs IG at batch {r['batch_size']}: {r['attcat_speedup_over_ig']:.1f}x < {IG_MIN_SPEEDUP:g}x")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the measurements and ratios to this file")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--ig-repeats", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--statistic", choices=sorted(STATISTICS), default="min",
                        help="how the repeats of a method become its time")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--memory-seq-len", type=int, default=512)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="bert",
                        help="the MiniLM-sized model measured: BERT (default) or Llama")
    args = parser.parse_args(argv)
    global _clock, _architecture
    _clock = CLOCKS[args.clock]
    _architecture = args.architecture
    if args.architecture != "bert" and not args.no_memory:
        parser.error("peak memory is measured on the BERT only: add --no-memory")
    torch.set_num_threads(args.threads)
    results = [measure(b, args.seq_len, args.repeats, args.ig_repeats, args.statistic) for b in args.batch_sizes]
    print(table(results))
    memory = None if args.no_memory else peak_memory(args.memory_batch, args.memory_seq_len, args.threads)
    if memory is not None:
        print()
        print(memory_table(memory))
    missed = failures(results)
    for line in missed:
        print("over budget:", line)
    if args.json:
        environment = {
            "torch": torch.__version__, "captum": captum.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0], "machine": platform.machine(), "threads": torch.get_num_threads(),
            "clock": args.clock, "architecture": args.architecture,
        }
        with open(args.json, "w") as handle:
            json.dump({"environment": environment, "results": results, "peak_memory": memory, "over_budget": missed},
                      handle, indent=2)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
