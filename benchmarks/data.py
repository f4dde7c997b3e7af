"""Benchmark tasks and their data, loaded through the ``datasets`` library.

Built-in tasks read local files so that nothing needs a network connection:

* ``sst2``: single sentences, vendored in ``benchmarks/data/`` (train and dev);
* ``mnli``: sentence pairs, the 1,000-example TextFooler subset in ``../shared/data``;
* ``imdb``: long reviews, the 1,000-example TextFooler subset in ``../shared/data``;

and :func:`load_file` reads any CSV / TSV / JSONL file given its text column(s) and
label column. ``load_task(..., source="hub")`` keeps the Hugging Face hub path
(``load_dataset("glue", "sst2")`` and friends) for users who are online.

Example::

    >>> from benchmarks.data import load_task
    >>> dev = load_task("sst2", split="dev", limit=8)
    >>> len(dev), dev.num_labels
    (8, 2)
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

__all__ = [
    "Examples",
    "EncodedBatch",
    "model_max_length",
    "TASKS",
    "VENDORED_DIR",
    "shared_data_dir",
    "load_task",
    "load_file",
    "encode_batches",
]

#: Folder with the data the default run needs (compressed SST-2 train/dev).
VENDORED_DIR: Path = Path(__file__).resolve().parent / "data"

_QUOTE_NONE = 3  # csv.QUOTE_NONE: the GLUE/TextFooler TSVs contain bare quote characters

#: Built-in task names with their label names (index = class id).
TASKS: dict[str, tuple[str, ...]] = {
    "sst2": ("negative", "positive"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "imdb": ("negative", "positive"),
}


def shared_data_dir() -> Path:
    """The shared data folder: ``$CAPTUM_ATTCAT_SHARED/data`` or ``../shared/data`` beside the repo.

    Example::

        >>> shared_data_dir().name
        'data'
    """
    env = os.environ.get("CAPTUM_ATTCAT_SHARED")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return root / "data"


@dataclass(frozen=True)
class Examples:
    """Texts (or text pairs) with integer labels; what every loader returns.

    Example::

        >>> ex = Examples("toy", ["good", "bad"], None, [1, 0], ("neg", "pos"))
        >>> ex[1]
        ('bad', None, 0)
    """

    name: str
    texts: list[str]
    text_pairs: list[str] | None
    labels: list[int]
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.text_pairs)} second texts")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, str | None, int]:
        return self.texts[i], None if self.text_pairs is None else self.text_pairs[i], self.labels[i]

    @property
    def num_labels(self) -> int:
        """Number of classes: the label names if known, else ``max(label) + 1``."""
        if self.label_names is not None:
            return len(self.label_names)
        return max(self.labels) + 1 if self.labels else 0

    def check_labels(self, num_classes: int) -> None:
        """Raise ``ValueError`` if a label is outside ``[0, num_classes)`` (e.g. the model's classes).

        Example::

            >>> Examples("t", ["a"], None, [2]).check_labels(2)
            Traceback (most recent call last):
            ValueError: t: label 2 (row 0) is outside the model's 2 classes [0, 1]
        """
        for i, y in enumerate(self.labels):
            if not 0 <= y < num_classes:
                raise ValueError(
                    f"{self.name}: label {y} (row {i}) is outside the model's {num_classes} "
                    f"classes [0, {num_classes - 1}]"
                )

    def head(self, limit: int | None) -> "Examples":
        """The first ``limit`` examples (all when ``limit`` is None)."""
        if limit is None or limit >= len(self):
            return self
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return Examples(
            self.name,
            self.texts[:limit],
            None if self.text_pairs is None else self.text_pairs[:limit],
            self.labels[:limit],
            self.label_names,
        )


# --------------------------------------------------------------------------- loading


def _nonempty_or_raise(path: Path, header: bool = False) -> None:
    """Raise unless ``path`` has a non-blank line (two, the first being a header, if ``header``)."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    seen = 0
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for line in fh:
            if line.strip():
                seen += 1
                if seen > int(header):
                    return
    if seen == 0:
        raise ValueError(f"data file is empty: {path}")
    raise ValueError(f"data file has a header but no examples: {path}")


def _file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".tsv":
        return "tsv"
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".json"):
        return "json"
    raise ValueError(f"cannot tell the format of {path}: use a .csv, .tsv, .jsonl or .json file (optionally .gz)")


def _read_table(path: Path, column_names: Sequence[str] | None = None) -> Any:
    """Read one local table file with ``datasets.load_dataset`` (the ``train`` split)."""
    import datasets

    fmt = _file_format(path)
    _nonempty_or_raise(path, header=fmt in ("csv", "tsv") and column_names is None)
    kwargs: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        kwargs = {"keep_default_na": False}
        if fmt == "tsv":
            kwargs.update(delimiter="\t", quoting=_QUOTE_NONE)
        if column_names is not None:
            kwargs["column_names"] = list(column_names)
        builder = "csv"
    else:
        builder = "json"
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a local file reads in a moment: no bars on standard error
    try:
        ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", **kwargs)
    finally:
        if shown:
            datasets.enable_progress_bars()
    if len(ds) == 0:
        raise ValueError(f"data file has a header but no examples: {path}")
    return ds


def _labels_to_ids(
    values: Sequence[Any], label_names: Sequence[str] | None, where: str
) -> tuple[list[int], tuple[str, ...] | None]:
    """Integer labels from ints, digit strings, or names (mapped through ``label_names``)."""
    out: list[int] = []
    names = tuple(label_names) if label_names is not None else None
    lookup = {n.lower(): i for i, n in enumerate(names)} if names else {}
    text_values = sorted({str(v).strip() for v in values if not _is_int_like(v)})
    if text_values and not lookup:
        names = tuple(text_values)
        lookup = {n.lower(): i for i, n in enumerate(names)}
    for row, v in enumerate(values):
        if _is_int_like(v):
            out.append(int(str(v).strip()) if not isinstance(v, (int, float)) else int(v))
        else:
            key = str(v).strip().lower()
            if key not in lookup:
                raise ValueError(
                    f"{where}: label {v!r} (row {row}) is not one of the known labels {list(names or ())}"
                )
            out.append(lookup[key])
    return out, names


def _is_int_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return v.is_integer()
    s = str(v).strip()
    return s.lstrip("-").isdigit()


class MissingColumnError(KeyError, ValueError):
    """A column the caller named is not in the file (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _pick_columns(ds: Any, text_columns: Sequence[str], label_column: str, where: str) -> None:
    missing = [c for c in [*text_columns, label_column] if c not in ds.column_names]
    if missing:
        raise MissingColumnError(
            f"{where}: column(s) {missing} not found; the columns are {list(ds.column_names)}"
        )


def load_file(
    path: str | os.PathLike[str],
    text_column: str | Sequence[str] = "sentence",
    label_column: str = "label",
    *,
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    limit: int | None = None,
) -> Examples:
    """Load a local CSV / TSV / JSONL file (``.gz`` allowed) with ``datasets``.

    Args:
        path: The file. The format comes from the extension.
        text_column: One column name, two names (sentence pairs) as a sequence, or a
            comma-separated string ``"premise,hypothesis"``.
        label_column: Column with the labels: integers, digit strings, or names (names are
            mapped through ``label_names``, else sorted alphabetically).
        label_names: Optional class names, index = class id.
        name: Name used in messages and results (default: the file name).
        limit: Keep only the first ``limit`` examples.

    Raises:
        FileNotFoundError / ValueError: missing or empty file, unknown extension, bad label.
        KeyError: a column is missing (the message lists the columns that exist).

    Example::

        >>> ex = load_file("reviews.tsv", text_column="text", label_column="stars")  # doctest: +SKIP
    """
    path = Path(path)
    cols = _split_columns(text_column)
    where = name or path.name
    ds = _read_table(path)
    _pick_columns(ds, cols, label_column, where)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    texts = [_as_text(t) for t in ds[cols[0]]]
    pairs = [_as_text(t) for t in ds[cols[1]]] if len(cols) == 2 else None
    labels, names = _labels_to_ids(ds[label_column], label_names, where)
    return Examples(where, texts, pairs, labels, names)


def _split_columns(text_column: str | Sequence[str]) -> list[str]:
    cols = [c.strip() for c in text_column.split(",")] if isinstance(text_column, str) else list(text_column)
    if not 1 <= len(cols) <= 2 or not all(cols):
        raise ValueError(f"give one text column or two (a sentence pair), got {text_column!r}")
    return cols


def _as_text(v: Any) -> str:
    return "" if v is None else str(v)


def _sst2_file(split: str) -> Path:
    fname = {"train": "sst2_train.tsv.gz", "dev": "sst2_dev.tsv.gz", "validation": "sst2_dev.tsv.gz"}
    if split not in fname:
        raise ValueError(f"sst2 has splits 'train' and 'dev' locally (test has no labels), got {split!r}")
    return VENDORED_DIR / fname[split]


def _shared_file(*parts: str) -> Path:
    path = shared_data_dir().joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: this task reads the shared data folder (../shared/data beside the "
            "repository, or $CAPTUM_ATTCAT_SHARED/data); use --data FILE for other files"
        )
    return path


def _load_imdb(path: Path) -> tuple[list[str], list[int]]:
    import datasets

    _nonempty_or_raise(path)
    ds = datasets.load_dataset("text", data_files={"train": str(path)}, split="train")
    texts, labels = [], []
    for i, line in enumerate(ds["text"]):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if not _is_int_like(label):
            raise ValueError(f"{path}: line {i + 1} does not start with an integer label")
        texts.append(text.strip())
        labels.append(int(label))
    return texts, labels


_HUB = {
    "sst2": (("glue", "sst2"), {"train": "train", "dev": "validation"}, ("sentence",)),
    "mnli": (("glue", "mnli"), {"train": "train", "dev": "validation_matched",
                                "dev_mismatched": "validation_mismatched"}, ("premise", "hypothesis")),
    "imdb": (("imdb",), {"train": "train", "dev": "test", "test": "test"}, ("text",)),
}


def load_task(
    task: str,
    split: str = "dev",
    *,
    source: str = "local",
    limit: int | None = None,
) -> Examples:
    """Load a built-in task.

    Args:
        task: ``"sst2"``, ``"mnli"`` or ``"imdb"``.
        split: ``"dev"`` (default) or ``"train"`` for SST-2; ``"dev"`` (matched) or
            ``"dev_mismatched"`` for the MNLI subset; ``"dev"`` for the IMDB subset.
        source: ``"local"`` (vendored / shared files, no network) or ``"hub"``
            (``datasets.load_dataset`` with the hub ids, needs a connection).
        limit: Keep only the first ``limit`` examples.

    IMDB texts are long; :func:`encode_batches` truncates them to the model limit.

    Example::

        >>> load_task("sst2", "dev").labels[:4]
        [1, 0, 1, 1]
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; built-in tasks are {sorted(TASKS)} (or use --data FILE)")
    names = TASKS[task]
    if source == "hub":
        return _load_hub(task, split, limit)
    if source != "local":
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")
    if task == "sst2":
        ex = load_file(_sst2_file(split), "sentence", "label", label_names=names, name="sst2")
    elif task == "mnli":
        fname = {"dev": "mnli_matched_1000.tsv", "dev_mismatched": "mnli_mismatched_1000.tsv"}
        if split not in fname:
            raise ValueError(f"the local MNLI subset has splits {sorted(fname)}, got {split!r}")
        ds = _read_table(_shared_file("mnli_textfooler1000", fname[split]),
                         column_names=("label", "premise", "hypothesis"))
        labels, _ = _labels_to_ids(ds["label"], names, "mnli")
        ex = Examples("mnli", [_as_text(t) for t in ds["premise"]],
                      [_as_text(t) for t in ds["hypothesis"]], labels, names)
    else:
        if split not in ("dev", "test"):
            raise ValueError(f"the local IMDB subset has only the split 'dev', got {split!r}")
        texts, labels = _load_imdb(_shared_file("imdb_textfooler1000", "imdb_1000.txt"))
        ex = Examples("imdb", texts, None, labels, names)
    return ex.head(limit)


def _load_hub(task: str, split: str, limit: int | None) -> Examples:  # pragma: no cover - needs network
    import datasets

    args, splits, cols = _HUB[task]
    if split not in splits:
        raise ValueError(f"{task} on the hub has splits {sorted(splits)}, got {split!r}")
    ds = datasets.load_dataset(*args, split=splits[split])
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    pairs = list(ds[cols[1]]) if len(cols) == 2 else None
    return Examples(task, list(ds[cols[0]]), pairs, [int(y) for y in ds["label"]], TASKS[task])


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodedBatch:
    """One padded batch: ``input_ids``, ``attention_mask``, ``labels`` and the example indices."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    indices: list[int]
    token_type_ids: torch.Tensor | None = None


def model_max_length(tokenizer: Any, config: Any | None = None) -> int:
    """The longest sequence the model takes: min of the tokenizer and position-embedding limits."""
    limits = [int(getattr(tokenizer, "model_max_length", 10**9) or 10**9)]
    if config is not None and getattr(config, "max_position_embeddings", None):
        limits.append(int(config.max_position_embeddings))
    return min(min(limits), 10**6)


def token_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> Iterator[slice]:
    """Consecutive slices of rows, each of at most ``batch_size`` rows and ``max_tokens``
    tokens once padded to its longest row (a longer row goes alone). Rows sorted by length
    waste the least padding.

    Example::

        >>> list(token_batches([2, 3, 3, 8], batch_size=8, max_tokens=9))
        [slice(0, 3, None), slice(3, 4, None)]
    """
    if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"batch size and token budget must be positive; got {batch_size} and {max_tokens}")
    start, width = 0, 0
    for i, length in enumerate(lengths):
        wider = max(width, length)
        if i > start and (i - start == batch_size or (max_tokens is not None and (i - start + 1) * wider > max_tokens)):
            yield slice(start, i)
            start, wider = i, length
        width = wider
    if start < len(lengths):
        yield slice(start, len(lengths))


def encode_batches(
    examples: Examples,
    tokenizer: Any,
    batch_size: int = 32,
    *,
    max_length: int | None = None,
    sort_by_length: bool = True,
    max_tokens: int | None = None,
) -> Iterator[EncodedBatch]:
    """Tokenize (truncating to ``max_length``) and yield dynamically padded batches of at most
    ``batch_size`` rows and, when given, ``max_tokens`` tokens once padded (a longer example
    goes alone).

    With ``sort_by_length`` examples of similar length share a batch (less padding);
    ``EncodedBatch.indices`` says which examples each row is.

    Example::

        >>> batches = list(encode_batches(dev, tokenizer, 16, max_tokens=4096))  # doctest: +SKIP
    """
    limit = max_length or model_max_length(tokenizer)
    enc = tokenizer(
        examples.texts,
        examples.text_pairs,
        truncation=True if examples.text_pairs is None else "longest_first",
        max_length=limit,
    )
    ids: list[list[int]] = enc["input_ids"]
    ttype: list[list[int]] | None = enc.get("token_type_ids")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort_by_length else list(range(len(ids)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for chunk in token_batches([len(ids[i]) for i in order], batch_size, max_tokens):
        idx = order[chunk]
        width = max(len(ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        tt = torch.zeros((len(idx), width), dtype=torch.long) if ttype is not None else None
        for r, i in enumerate(idx):
            n = len(ids[i])
            input_ids[r, :n] = torch.tensor(ids[i])
            mask[r, :n] = 1
            if tt is not None and ttype is not None:
                tt[r, :n] = torch.tensor(ttype[i])
        labels = torch.tensor([examples.labels[i] for i in idx], dtype=torch.long)
        yield EncodedBatch(input_ids, mask, labels, list(idx), tt)
