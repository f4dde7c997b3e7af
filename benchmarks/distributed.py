"""The ranks of a benchmark run: one process alone, or every process of a ``torchrun`` launch.

``Ranks.from_environment()`` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group (NCCL when the
rank runs on a GPU, gloo on CPU); without them it is a single rank and every collective is the
identity. Each rank runs on its own device: ``cuda:LOCAL_RANK`` when CUDA is available.

Example::

    >>> ranks = Ranks.from_environment("cpu")
    >>> ranks.rank, ranks.world_size, ranks.all_gather("x")
    (0, 1, ['x'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping, TypeVar

import torch
import torch.distributed as dist

from .cli import UsageError

__all__ = ["Ranks", "resolve_device", "share"]

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
