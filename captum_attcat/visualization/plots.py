"""Plots: per-block scores as a heatmap, a head mask as a (blocks x heads) grid.

Example::

    >>> layer_heatmap(per_block[0], tokens).savefig("layers.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from .records import scale_scores

if TYPE_CHECKING:  # matplotlib is imported only by the plotting functions
    from matplotlib.figure import Figure



def layer_heatmap(
    layer_scores: Tensor,
    tokens: Sequence[str],
    title: str | None = None,
    normalize: str = "row",
    cmap: str = "RdYlGn",
) -> "Figure":
    r"""Heatmap of per-block scores: one row per block plus a last row for their sum.

    Like Fig. 4 of the AttCAT paper: each row shows where block ``l``'s
    contribution to the explanation lies; the bottom row is the final
    explanation (the sum over blocks). Colours are signed (green positive, red
    negative, centred at 0).

    Args:
        layer_scores: ``(blocks, seq)`` scores of one example, e.g.
            ``AttCAT(model).attribute(ids, target=1, return_layer_scores=True)[0]``.
        tokens: the ``seq`` token labels of the x axis.
        title: the figure title.
        normalize: ``"row"`` scales every row by its own largest magnitude (so
            every block's pattern is visible), ``"global"`` scales the blocks by
            their common largest magnitude (and the sum by its own).
        cmap: a diverging matplotlib colour map.

    Returns:
        A matplotlib ``Figure`` (``fig.savefig("layers.png")`` writes the PNG).

    Example::

        >>> per_block = AttCAT(model).attribute(ids, target=1, return_layer_scores=True)
        >>> fig = layer_heatmap(per_block[0], tokenizer.convert_ids_to_tokens(ids[0]))
        >>> fig.savefig("attcat_layers.png", dpi=150)
    """
    from matplotlib.figure import Figure

    scores = torch.as_tensor(layer_scores).detach().to(torch.float32).cpu()
    if scores.dim() == 3 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.dim() != 2:
        raise ValueError(f"expected per-block scores of shape (blocks, seq); got {tuple(scores.shape)}")
    if len(tokens) != scores.shape[1]:
        raise ValueError(f"{len(tokens)} tokens for scores over {scores.shape[1]} positions")
    if normalize not in ("row", "global"):
        raise ValueError(f"`normalize` must be 'row' or 'global'; got {normalize!r}")
    if not torch.isfinite(scores).all():
        raise ValueError("the scores contain NaN or inf values")
    blocks = scores.shape[0]
    total = scores.sum(0, keepdim=True)
    if normalize == "row":
        rows = scale_scores(scores)
    else:
        peak = scores.abs().max()
        rows = scores / peak if peak > 0 else scores
    grid = torch.cat([rows, scale_scores(total)]).numpy()

    width = max(4.0, 0.45 * len(tokens) + 1.6)
    fig = Figure(figsize=(width, 0.42 * (blocks + 1) + 1.4))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.axhline(blocks - 0.5, color="black", linewidth=2)
    ax.set_yticks(range(blocks + 1), [f"block {i + 1}" for i in range(blocks)] + ["sum"])
    ax.set_xticks(range(len(tokens)), list(tokens), rotation=60, ha="right", fontsize=9)
    ax.set_title(title or "Per-block scores (each row scaled to [-1, 1])")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return fig


def plot_head_mask(
    mask: Any = None,
    positional: Any = None,
    syntactic: Any = None,
    title: str | None = None,
) -> "Figure":
    r"""Plot a (blocks x heads) head mask, positional and syntactic heads apart.

    Pass either ``mask`` (one boolean array, or an object with ``positional`` and
    ``syntactic`` boolean arrays, such as a Mask-LRP head mask) or the two arrays
    directly. Cells are coloured by kind: none, positional, syntactic, both.

    Args:
        mask: a ``(blocks, heads)`` boolean array / tensor, or an object with
            ``positional`` and ``syntactic`` attributes.
        positional: ``(blocks, heads)`` booleans, the positional heads.
        syntactic: ``(blocks, heads)`` booleans, the syntactic heads.
        title: the figure title.

    Returns:
        A matplotlib ``Figure``.

    Example::

        >>> import numpy as np
        >>> pos = np.zeros((6, 12), bool); pos[0, 3] = True
        >>> syn = np.zeros((6, 12), bool); syn[4, 7] = True
        >>> plot_head_mask(positional=pos, syntactic=syn).savefig("heads.png")
    """
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if mask is not None and (positional is not None or syntactic is not None):
        raise ValueError("pass either `mask` or `positional`/`syntactic`, not both")
    if mask is not None and hasattr(mask, "positional") and hasattr(mask, "syntactic"):
        positional, syntactic = mask.positional, mask.syntactic
        mask = None

    def as_bool(array: Any, name: str) -> Any:
        if isinstance(array, Tensor):
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"`{name}` must be a (blocks, heads) array; got shape {array.shape}")
        return array.astype(bool)

    if mask is not None:
        kinds = as_bool(mask, "mask").astype(int) * 3
        labels = ["not selected", "", "", "selected"]
    else:
        if positional is None and syntactic is None:
            raise ValueError("pass a head mask, or `positional` and/or `syntactic` arrays")
        pos = as_bool(positional, "positional") if positional is not None else None
        syn = as_bool(syntactic, "syntactic") if syntactic is not None else None
        if pos is None:
            pos = np.zeros_like(syn)
        if syn is None:
            syn = np.zeros_like(pos)
        if pos.shape != syn.shape:
            raise ValueError(f"`positional` {pos.shape} and `syntactic` {syn.shape} differ in shape")
        kinds = pos.astype(int) + 2 * syn.astype(int)
        labels = ["neither", "positional", "syntactic", "both"]
    colors = ["#f2f2f2", "#4c72b0", "#dd8452", "#8c4fa0"]
    blocks, heads = kinds.shape
    fig = Figure(figsize=(max(3.5, 0.42 * heads + 1.8), max(2.5, 0.42 * blocks + 1.3)))
    ax = fig.add_subplot()
    ax.imshow(kinds, cmap=ListedColormap(colors), vmin=-0.5, vmax=3.5, interpolation="nearest")
    ax.set_xticks(range(heads), [str(h + 1) for h in range(heads)])
    ax.set_yticks(range(blocks), [str(b + 1) for b in range(blocks)])
    ax.set_xticks(np.arange(-0.5, heads), minor=True)
    ax.set_yticks(np.arange(-0.5, blocks), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_title(title or "Important heads")
    present = sorted(set(kinds.flatten().tolist()) | ({0, 3} if mask is not None else {0, 1, 2, 3}))
    ax.legend(
        handles=[Patch(facecolor=colors[k], edgecolor="#999", label=labels[k]) for k in present if labels[k]],
        loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
    )
    fig.tight_layout()
    return fig
