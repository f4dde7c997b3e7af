"""Checks that turn bad input into an exception naming the problem.

Example::

    >>> check_token_inputs(torch.tensor([[101, 99999]]), vocab_size=30522, max_length=512)
    Traceback (most recent call last):
    ValueError: token ids must lie in [0, 30522) (the model's vocabulary); found 99999
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_token_inputs(inputs: Any, vocab_size: int | None = None, max_length: int | None = None) -> Tensor:
    """Validate token ids ``(batch, seq)`` or input embeddings ``(batch, seq, hidden)``."""
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a tensor of token ids or embeddings, got {type(inputs).__name__}")
    if inputs.is_floating_point():
        if inputs.dim() != 3:
            raise ValueError(
                f"floating `inputs` are read as embeddings (batch, seq, hidden); got shape {tuple(inputs.shape)}"
            )
        if not torch.isfinite(inputs).all():
            raise ValueError("`inputs` (embeddings) contain NaN or inf values")
    else:
        if inputs.dtype in (torch.bool, torch.complex64, torch.complex128) or inputs.dim() != 2:
            raise ValueError(
                f"`inputs` must be integer token ids of shape (batch, seq); got {inputs.dtype} "
                f"of shape {tuple(inputs.shape)}"
            )
        if inputs.numel() and vocab_size is not None:
            low, high = int(inputs.min()), int(inputs.max())
            if low < 0 or high >= vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"token ids must lie in [0, {vocab_size}) (the model's vocabulary); found {bad}"
                )
    if inputs.shape[0] == 0:
        raise ValueError("`inputs` is an empty batch")
    if inputs.shape[1] == 0:
        raise ValueError("`inputs` is an empty sequence (length 0)")
    if max_length is not None and inputs.shape[1] > max_length:
        raise ValueError(
            f"sequence of length {inputs.shape[1]} is longer than the model allows ({max_length} positions)"
        )
    return inputs


def check_token_mask(mask: Any, inputs: Tensor, name: str) -> Tensor:
    """A ``(batch, seq)`` 0/1 mask matching ``inputs``; returned as float."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"`{name}` must be a tensor of shape (batch, seq), got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(inputs.shape[:2]):
        raise ValueError(
            f"`{name}` has shape {tuple(mask.shape)} but the inputs have (batch, seq) = {tuple(inputs.shape[:2])}"
        )
    if mask.is_floating_point() and not torch.isfinite(mask).all():
        raise ValueError(f"`{name}` contains NaN or inf values")
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"`{name}` must hold only 0 and 1")
    return mask.to(torch.float32)


def attention_mask_of(inputs: Tensor, additional_forward_args: tuple | None) -> Tensor | None:
    """The attention mask, by the Hugging Face convention the first additional
    forward argument, validated against ``inputs``; ``None`` if not given."""
    if not additional_forward_args or additional_forward_args[0] is None:
        return None
    return check_token_mask(additional_forward_args[0], inputs, "attention mask (additional_forward_args[0])")


def check_target(target: Any, scores: Tensor) -> None:
    """Raise if ``target`` (Captum's TargetType) is missing or outside ``scores``' classes."""
    classes = scores.shape[1] if scores.dim() > 1 else None
    if target is None:
        if classes is not None and scores[0].numel() > 1:
            raise ValueError(
                f"`target` is required: the model returns {classes} scores per example; "
                "pass the class to explain (an int, or one per example)"
            )
        return
    if scores.dim() != 2:
        return  # multi-dimensional outputs: leave tuple targets to Captum's selection
    if isinstance(target, Tensor):
        values = target.flatten().tolist()
    elif isinstance(target, int):
        values = [target]
    elif isinstance(target, list) and all(isinstance(t, int) for t in target):
        values = target
    else:
        return
    if isinstance(target, (list, Tensor)) and len(values) not in (1, scores.shape[0]):
        raise ValueError(
            f"`target` has {len(values)} entries for a batch of {scores.shape[0]} examples"
        )
    bad = [t for t in values if not 0 <= t < classes]
    if bad:
        raise ValueError(f"`target` {bad[0]} is out of range: the model has {classes} classes")
