"""Resumable benchmark runs: a fingerprint of everything a result depends on, and per-shard
partial results written atomically under a folder named after it.

A shard is one explanation batch of the length-sorted examples; its results (per-example
AOPC, LOdds, curves, Kendall tau of every protocol and method) are final once written, so a
run killed midway and started again with the same arguments redoes only the shards without a
file. Any change to the model, the data, the methods, the protocols, the limits, the library
versions or the code gives another fingerprint, hence another folder: stale results are never
read.

Example::

    >>> parts = fingerprint_parts(examples=..., model=model, settings={"limit": 16})  # doctest: +SKIP
    >>> store = PartialResults(Path("results/sst2") / f"partial-{fingerprint(parts)[:16]}")
    >>> store.save(0, {"paper": {...}})  # doctest: +SKIP
    >>> store.done()  # doctest: +SKIP
    {0}
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["digest", "model_digest", "code_digest", "fingerprint", "PartialResults"]


def digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object (keys sorted), of a tensor's bytes, or of a list of tensors.

    Example::

        >>> digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
        True
    """
    h = hashlib.sha256()
    items = obj if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj) else None
    if isinstance(obj, torch.Tensor):
        items = [obj]
    if items is not None:
        for t in items:
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's weights, buffers and configuration (not of where it was loaded from).

    Example::

        >>> model_digest(model) == model_digest(copy.deepcopy(model))  # doctest: +SKIP
        True
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(digest(t).encode())
    config = getattr(model, "config", None)
    if config is not None:
        d = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(digest(d).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_digest(packages: tuple[str, ...] = ("captum_attcat", "benchmarks")) -> str:
    """sha256 of the Python sources of ``packages`` (a code change never reuses old results),
    read once per process: the code it runs is the code it imported, whatever happens to the
    files afterwards.

    Example::

        >>> len(code_digest())
        64
    """
    import importlib

    h = hashlib.sha256()
    for name in packages:
        try:
            root = Path(importlib.import_module(name).__file__ or "").parent
        except ImportError:
            continue
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(parts: Mapping[str, str]) -> str:
    """One sha256 of named digests (see :func:`digest`), the key of a run's partial results.

    Example::

        >>> fingerprint({"data": "ab", "model": "cd"}) != fingerprint({"data": "ab", "model": "ce"})
        True
    """
    return digest(dict(parts))


class PartialResults:
    """Per-shard results of one configuration, one file per shard (``shard-00012.pt``), each
    written to a temporary file and moved into place with ``os.replace``: a file either is
    complete or does not exist, whenever the run is killed.

    Example::

        >>> store = PartialResults(tmp / "partial-0123")  # doctest: +SKIP
        >>> store.save(3, {"x": torch.ones(2)}); store.load(3)["x"]  # doctest: +SKIP
        tensor([1., 1.])
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.pt"

    def done(self) -> set[int]:
        """The shards whose results are on disk (temporary files of a killed run are ignored)."""
        if not self.folder.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.folder.glob("shard-*.pt")}

    def save(self, shard: int, payload: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".shard-{shard:05d}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path(shard))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path(shard)

    def load(self, shard: int) -> dict[str, Any]:
        return torch.load(self.path(shard), weights_only=True)

    def clear(self) -> None:
        """Remove the folder (after the final results are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
