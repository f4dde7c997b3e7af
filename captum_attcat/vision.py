"""Token scores of a vision transformer as a map over the image's patches, and that map drawn on the image.

A ViT-style model (ViT, DeiT, BEiT, DINOv2) reads ``pixel_values`` ``(batch, channels, height,
width)`` as a sequence of special tokens ([CLS]; DeiT's distillation token; DINOv2's registers)
followed by one token per patch, row by row. Every method returns a score per token,
``(batch, special + patches)``; :func:`patch_map` keeps the patches as ``(batch, rows, columns)``.

Example::

    >>> scores = AttCAT(vit).attribute(pixel_values, target=label)     # (batch, 1 + 14 * 14)
    >>> grid = patch_map(scores, vit)                                   # (batch, 14, 14)
    >>> overlay_patch_map(pixel_values[0], grid[0])                     # a matplotlib Axes
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def patch_grid(model: Any, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(rows, columns)`` of patches the model cuts an image of ``image_size`` (default: the
    config's ``image_size``) into."""
    config = getattr(model, "config", model)
    size = _pair(image_size if image_size is not None else getattr(config, "image_size", None) or 0)
    patch = _pair(getattr(config, "patch_size", None) or 0)
    if not all(size) or not all(patch):
        raise ValueError(f"{type(config).__name__} gives no image_size/patch_size to lay the patches out; pass "
                         "`grid=(rows, columns)`")
    return size[0] // patch[0], size[1] // patch[1]


def patch_map(scores: Tensor, model: Any = None, grid: tuple[int, int] | None = None) -> Tensor:
    """The patch scores of ``scores`` ``(batch, special + patches)`` as ``(batch, rows, columns)``:
    the leading special tokens are dropped, the rest laid out row by row.

    ``grid`` is ``(rows, columns)``; by default it comes from the model's config
    (``image_size // patch_size``).

    Example::

        >>> patch_map(torch.arange(5.0)[None], grid=(2, 2))
        tensor([[[1., 2.],
                 [3., 4.]]])
    """
    if grid is None:
        if model is None:
            raise ValueError("pass the model (or `grid=(rows, columns)`) to lay the patches out")
        grid = patch_grid(model)
    rows, columns = grid
    if scores.dim() != 2 or scores.shape[1] < rows * columns:
        raise ValueError(f"scores of shape {tuple(scores.shape)} cannot hold a {rows} x {columns} grid of patches "
                         "after the special tokens")
    return scores[:, scores.shape[1] - rows * columns:].reshape(scores.shape[0], rows, columns)


def overlay_patch_map(image: Tensor, grid_scores: Tensor, ax: Any = None, alpha: float = 0.5,
                      cmap: str = "RdBu_r") -> Any:
    """Draw ``image`` ``(channels, height, width)`` with ``grid_scores`` ``(rows, columns)`` on top
    (each patch's score over its pixels, a colour scale centred on 0); returns the matplotlib Axes.

    Example::

        >>> ax = overlay_patch_map(pixel_values[0], patch_map(scores, vit)[0])
        >>> ax.figure.savefig("vit.png")
    """
    import matplotlib.pyplot as plt

    if image.dim() != 3 or grid_scores.dim() != 2:
        raise ValueError(f"expected an image (channels, height, width) and scores (rows, columns); got shapes "
                         f"{tuple(image.shape)} and {tuple(grid_scores.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    picture = image.detach().float().cpu()
    low, high = picture.min(), picture.max()
    picture = ((picture - low) / (high - low).clamp(min=1e-12)).permute(1, 2, 0)
    if picture.shape[-1] == 1:
        picture = picture[..., 0]
    ax.imshow(picture.numpy(), cmap="gray" if picture.dim() == 2 else None)
    values = grid_scores.detach().float().cpu()
    bound = float(values.abs().max()) or 1.0
    height, width = image.shape[1:]
    ax.imshow(values.numpy(), cmap=cmap, vmin=-bound, vmax=bound, alpha=alpha, interpolation="nearest",
              extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.set_axis_off()
    return ax


__all__ = ["overlay_patch_map", "patch_grid", "patch_map"]
