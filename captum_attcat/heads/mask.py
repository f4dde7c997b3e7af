"""Which heads Mask-LRP lets relevance flow through.

A :class:`HeadMask` holds the positional heads, the syntactic heads and the mask
actually used (by default their union), each a ``(blocks, heads)`` boolean
array; variants for the ablations of the paper (positional only, syntactic
only, a seeded random mask of the same size) derive from it. It saves to and
loads from JSON and plots as blocks x heads.

Example::

    >>> stats = head_statistics(model, tokenizer, read_conllu("en_ewt-ud-dev.conllu"))
    >>> mask = HeadMask.from_statistics(stats)          # xi_pos = 0.8, xi_synt = 0.1
    >>> mask.save("mask.json"); HeadMask.load("mask.json").mask.sum()
    >>> mask.random(seed=0).mask.sum() == mask.mask.sum()
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .statistics import HeadStatistics

KINDS = ("union", "positional", "syntactic", "random", "custom")


def _boolean_grid(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"`{name}` must be a (blocks, heads) array; got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"`{name}` must hold booleans or 0/1 values")
    return array.astype(bool)


@dataclass
class HeadMask:
    """Important heads, ``(blocks, heads)`` booleans (True = relevance flows through).

    Attributes:
        positional: heads that mostly attend at one fixed nonzero offset.
        syntactic: heads that find governors better than the positional baseline.
        mask: the heads used by Mask-LRP (``positional | syntactic`` unless a variant).
        kind: ``"union"``, ``"positional"``, ``"syntactic"``, ``"random"`` or ``"custom"``.
        thresholds: the thresholds the mask was found with, if any.
    """

    positional: np.ndarray
    syntactic: np.ndarray
    mask: np.ndarray | None = None
    kind: str = "union"
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positional = _boolean_grid(self.positional, "positional")
        self.syntactic = _boolean_grid(self.syntactic, "syntactic")
        if self.positional.shape != self.syntactic.shape:
            raise ValueError(
                f"`positional` {self.positional.shape} and `syntactic` {self.syntactic.shape} differ in shape"
            )
        if self.kind not in KINDS:
            raise ValueError(f"unknown head-mask kind {self.kind!r}; one of {KINDS}")
        if self.mask is None:
            self.mask = self.positional | self.syntactic
        self.mask = _boolean_grid(self.mask, "mask")
        if self.mask.shape != self.positional.shape:
            raise ValueError(f"`mask` {self.mask.shape} differs in shape from the head kinds {self.positional.shape}")

    @classmethod
    def from_statistics(cls, statistics: HeadStatistics, xi_pos: float = 0.8, xi_synt: float = 0.1) -> "HeadMask":
        """Positional: one nonzero offset wins more than ``xi_pos`` of the time; syntactic:
        ``alpha_k > lambda_k + xi_synt`` for a relation ``k``; the mask is their union."""
        return cls(
            statistics.positional_heads(xi_pos), statistics.syntactic_heads(xi_synt),
            thresholds={"xi_pos": xi_pos, "xi_synt": xi_synt},
        )

    @classmethod
    def from_tensor(cls, mask: Any) -> "HeadMask":
        """A mask given directly as a ``(blocks, heads)`` boolean or 0/1 array/tensor."""
        grid = _boolean_grid(mask, "head_mask")
        empty = np.zeros_like(grid)
        return cls(empty, empty, mask=grid, kind="custom")

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[union-attr]

    def tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The mask as a boolean ``(blocks, heads)`` tensor."""
        return torch.as_tensor(self.mask, device=device)

    def only_positional(self) -> "HeadMask":
        """The ablation keeping the positional heads alone."""
        return HeadMask(self.positional, self.syntactic, self.positional, "positional", dict(self.thresholds))

    def only_syntactic(self) -> "HeadMask":
        """The ablation keeping the syntactic heads alone."""
        return HeadMask(self.positional, self.syntactic, self.syntactic, "syntactic", dict(self.thresholds))

    def random(self, seed: int = 0) -> "HeadMask":
        """As many heads as :attr:`mask` selects, drawn uniformly at random (seeded)."""
        generator = np.random.default_rng(seed)
        chosen = generator.choice(self.mask.size, size=int(self.mask.sum()), replace=False)
        grid = np.zeros(self.mask.size, dtype=bool)
        grid[chosen] = True
        thresholds = dict(self.thresholds, seed=seed)
        return HeadMask(self.positional, self.syntactic, grid.reshape(self.shape), "random", thresholds)

    def counts_per_block(self) -> list[dict[str, int]]:
        """Per block: how many heads are positional, syntactic, both, and selected."""
        return [
            {
                "positional": int(p.sum()), "syntactic": int(s.sum()),
                "both": int((p & s).sum()), "selected": int(m.sum()),
            }
            for p, s, m in zip(self.positional, self.syntactic, self.mask)  # type: ignore[arg-type]
        ]

    def plot(self, path: str | Path | None = None, title: str | None = None) -> Any:
        """Blocks x heads, positional and syntactic heads marked apart (Fig. 5 of the
        Mask-LRP paper); saved as PNG to ``path`` if given. Returns the figure."""
        from ..visualization import plot_head_mask

        figure = plot_head_mask(self, title=title or f"Important heads ({self.kind})")
        if path is not None:
            figure.savefig(path, dpi=150)
        return figure

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "thresholds": self.thresholds,
            "positional": self.positional.astype(int).tolist(),
            "syntactic": self.syntactic.astype(int).tolist(),
            "mask": self.mask.astype(int).tolist(),  # type: ignore[union-attr]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadMask":
        """The mask of :meth:`to_dict`'s dictionary; a clear error for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"a head mask is a JSON object with the fields ['mask', 'positional', 'syntactic']; "
                             f"got {type(data).__name__}")
        missing = {"positional", "syntactic", "mask"} - set(data)
        if missing:
            raise ValueError(f"a head mask needs the fields {sorted(missing)}")
        thresholds = data.get("thresholds", {})
        if not isinstance(thresholds, dict):
            raise ValueError(f"a head mask's `thresholds` must be an object; got {type(thresholds).__name__}")
        kind = data.get("kind", "union")
        if not isinstance(kind, str):
            raise ValueError(f"a head mask's `kind` must be a string; got {type(kind).__name__}")
        return cls(data["positional"], data["syntactic"], data["mask"], kind, dict(thresholds))

    def save(self, path: str | Path) -> None:
        """Write the mask as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "HeadMask":
        """Read a mask written by :meth:`save`; ``ValueError`` naming the file for anything
        that is not one (not UTF-8, not JSON, not a head mask)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a head mask: {error}") from None
