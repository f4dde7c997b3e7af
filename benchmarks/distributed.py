"""The ranks of a benchmark run: one process alone, or every process of a ``torchrun`` launch.

``Ranks.from_environment()`` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group (NCCL when the
rank runs on a GPU, gloo on CPU); without them it is a single rank and every collective is the
identity. Each rank runs on its own device: ``cuda:LOCAL_RANK`` when CUDA is available.

:func:`run_shards` is a run's work on these ranks, for every runner (classification, SQuAD):
the shards finished by an earlier run are read from its :class:`~benchmarks.resume.PartialResults`,
the others shared among the ranks by cost, each explained, saved as soon as it is done and
gathered on rank 0 in shard order; :func:`finish_shards` removes the partial results once rank 0
has written a complete run.

Example::

    >>> ranks = Ranks.from_environment("cpu")
    >>> ranks.rank, ranks.world_size, ranks.all_gather("x")
    (0, 1, ['x'])
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist

from .cli import UsageError
from .resume import PartialResults

__all__ = ["Ranks", "resolve_device", "share", "ShardResults", "run_shards", "finish_shards"]

T = TypeVar("T")

#: how long a rank waits for the others at a collective (the fastest waits for the slowest)
TIMEOUT = timedelta(hours=24)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` (``cuda:<local rank>`` when CUDA is available, else the CPU), ``"cpu"`` or ``"cuda"``.

    Example::

        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {spec!r}: expected auto, cpu or cuda")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(f"local rank {local_rank} has no GPU of its own ({count} visible): "
                         f"launch at most {count} processes per machine, or use --device cpu")
    return torch.device("cuda", local_rank)


def share(costs: Mapping[int, float], world_size: int) -> list[list[int]]:
    """Items (index -> cost) shared among ``world_size`` ranks: the costliest first, each to the
    least loaded rank so far (ties: the lower rank), every list in index order. The same on every rank.

    Example::

        >>> share({0: 4, 1: 3, 2: 2, 3: 2, 4: 1}, 2)
        [[0, 3], [1, 2, 4]]
    """
    load = [0.0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(costs, key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += costs[i]
    return [sorted(x) for x in out]


@dataclass
class Ranks:
    """This process's place in the run and the collectives the runner needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    joined: bool = False  # True when this object initialised the process group

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Ranks":
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local if world > 1 else 0)
        if world == 1:
            return cls(device=dev)
        joined = False
        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
            joined = True
        return cls(rank, world, local, dev, joined)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` on rank 0 (``None`` elsewhere)."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def first_on_each_machine(self, fn: Callable[[], T]) -> T:
        """``fn()`` on local rank 0 first, then on the other ranks: what it saves (a fine-tuned
        model, a head mask) is there before they look for it."""
        if self.local_rank == 0:
            result = fn()
            self.barrier()
            return result
        self.barrier()
        return fn()

    def check_agreement(self, parts: Mapping[str, str]) -> None:
        """Raise :class:`UsageError` on every rank when the ranks' digests differ, naming what
        (``parts`` maps e.g. ``"data"``, ``"model"`` to a digest of it) and which ranks."""
        everyone = self.all_gather(dict(parts))
        for name in parts:
            for r, theirs in enumerate(everyone):
                if theirs.get(name) != everyone[0].get(name):
                    raise UsageError(f"the ranks disagree on the {name}: rank 0 has {everyone[0].get(name, '')[:12]}, "
                                     f"rank {r} has {str(theirs.get(name))[:12]} (every rank must run the same "
                                     f"command on the same files)")

    def close(self) -> None:
        """Leave the process group if this object joined it."""
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
            self.joined = False


@dataclass
class ShardResults:
    """What rank 0 gets back from :func:`run_shards`: every shard's payload in shard order, one
    record per rank (``explained`` shards, ``examples``, ``seconds``, ``cpu_seconds`` of its own
    work) and how many shards were read from an earlier run."""

    payloads: list[dict[str, Any]]
    per_rank: list[dict[str, Any]]
    resumed: int

    def timing(self, loaded: float, started: float, cpu_started: float) -> dict[str, Any]:
        """The timing fields of the run's configuration (rank 0, after the gather): wall seconds since
        ``started`` (``time.perf_counter()`` once the model was loaded) and since ``loaded`` (before),
        CPU seconds summed over every rank's shards (this process's own since ``cpu_started``, its
        shards counted once; resumed shards count their first run) and each rank's seconds."""
        own = self.per_rank[0]["cpu_seconds"]
        return {"seconds": round(time.perf_counter() - started, 1),
                "cpu_seconds": round(time.process_time() - cpu_started - own
                                     + sum(g["cpu_seconds"] for g in self.per_rank), 1),
                "seconds_with_model_loading": round(time.perf_counter() - loaded, 1),
                "seconds_per_rank": [round(g["seconds"], 1) for g in self.per_rank],
                "peak_rss_mib_per_rank": [g["peak_rss_mib"] for g in self.per_rank]}

    def report(self, ranks: "Ranks", count: int, unit: str, details: str, seconds: float,
               written: Sequence[Any]) -> None:
        """Print the merged summary: one line per rank when distributed (its shards and ``unit``:
        examples, questions), then ``count`` ``unit``, ``details`` (methods, protocols), shards,
        processes, ``seconds`` and the files written."""
        if ranks.distributed:
            for r, g in enumerate(self.per_rank):
                print(f"rank {r}: {g['explained']} shards ({g['examples']} {unit}) in {g['seconds']:.1f} s")
        n = len(self.payloads)
        resumed = f", {self.resumed} of {n} shards read from an earlier run" if self.resumed else ""
        print(f"{count} {unit}, {details}, {n} shards, {ranks.world_size} process(es): {seconds:.1f} s{resumed}; "
              f"wrote {', '.join(str(w) for w in written)}")


def peak_resident_mib() -> float | None:
    """This process's peak resident memory so far in MiB (``getrusage``), None where unknown.

    Example::

        >>> peak_resident_mib() > 0  # doctest: +SKIP
        True
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def run_shards(ranks: Ranks, store: PartialResults, costs: Sequence[float],
               explain: Callable[[int, Callable[[str], None]], dict[str, Any]], *, sizes: Sequence[int],
               failed: Callable[[dict[str, Any]], bool], progress: bool = True) -> ShardResults | None:
    """Explain the shards ``0 .. len(costs) - 1`` on these ranks; every shard's payload on rank 0
    (``None`` on the others).

    A shard that some rank's ``store`` holds (an earlier run of the same configuration) is read
    there, not redone; the others go to the ranks by ``costs`` (:func:`share`), and each rank
    calls ``explain(i, note)`` for its own (``note(text)`` shows text beside its progress bar),
    saving each payload at once unless ``failed(payload)`` (a failed shard is redone by the
    next run). ``sizes`` are the shards' example counts (for the per-rank summary).
    """
    from tqdm.auto import tqdm

    n = len(costs)
    owner: dict[int, int] = {}
    for r, have in enumerate(ranks.all_gather(sorted(store.done() & set(range(n))))):
        for i in have:
            owner.setdefault(i, r)
    todo = [i for i in range(n) if i not in owner]
    mine = share({i: costs[i] for i in todo}, ranks.world_size)[ranks.rank]
    who = f"rank {ranks.rank}/{ranks.world_size}: " if ranks.distributed else ""
    if progress or ranks.distributed:
        print(f"{who}{len(mine)} of {n} shards to explain on {ranks.device}"
              + (f" ({len(owner)} finished earlier, in {store.folder})" if owner else ""), file=sys.stderr)
    payloads = {i: store.load(i) for i, r in owner.items() if r == ranks.rank}
    t_rank, cpu_rank = time.perf_counter(), time.process_time()
    bar = tqdm(mine, desc=f"rank {ranks.rank}" if ranks.distributed else "shards", unit="shard",
               disable=not progress, position=ranks.local_rank if ranks.distributed else None)
    try:
        for i in bar:
            payload = explain(i, lambda text: bar.set_postfix_str(text, refresh=False))
            if not failed(payload):
                store.save(i, payload)
            payloads[i] = payload
    finally:
        bar.close()
    gathered = ranks.gather({"shards": payloads, "explained": len(mine), "examples": sum(sizes[i] for i in mine),
                             "seconds": time.perf_counter() - t_rank, "cpu_seconds": time.process_time() - cpu_rank,
                             "peak_rss_mib": peak_resident_mib()})
    if gathered is None:
        return None
    everything: dict[int, dict[str, Any]] = {}
    for g in gathered:
        everything.update(g.pop("shards"))
    missing = sorted(set(range(n)) - set(everything))
    if missing:
        raise RuntimeError(f"shards {missing[:10]} came back from no rank")
    return ShardResults([everything[i] for i in range(n)], gathered, len(owner))


def finish_shards(ranks: Ranks, store: PartialResults, status: int) -> int:
    """Rank 0's exit status on every rank; a complete run (0) removes its partial results (an
    incomplete one keeps them for the next run)."""
    status = ranks.all_gather(status)[0]
    if status == 0:
        store.clear()
    return status
