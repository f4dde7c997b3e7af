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


def check_gradients_possible() -> None:
    """Raise inside ``torch.inference_mode()``, where no gradient can be taken."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "cannot explain inside torch.inference_mode(): the methods take gradients or walk the "
            "autograd graph; call `attribute` outside it (torch.no_grad() around it is fine)"
        )


def check_token_inputs(inputs: Any, vocab_size: int | None = None, max_length: int | None = None,
                       hidden_size: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Validate token ids ``(batch, seq)`` (int64 or int32) or input embeddings
    ``(batch, seq, hidden)`` (``hidden_size`` wide, in the model's ``dtype``, when known)."""
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a tensor of token ids or embeddings, got {type(inputs).__name__}")
    if inputs.is_inference():  # made under inference_mode: an ordinary copy can enter autograd
        inputs = inputs.clone()
    if inputs.is_floating_point():
        if inputs.dim() != 3:
            raise ValueError(
                f"floating `inputs` are read as embeddings (batch, seq, hidden); got shape {tuple(inputs.shape)}"
            )
        if hidden_size is not None and inputs.shape[2] != hidden_size:
            raise ValueError(
                f"`inputs` (embeddings) are {inputs.shape[2]} wide but the model's embeddings are {hidden_size} wide"
            )
        if dtype is not None and inputs.dtype != dtype:
            raise TypeError(f"`inputs` (embeddings) are {inputs.dtype} but the model is {dtype}: cast them with "
                            f".to({dtype})")
        if not torch.isfinite(inputs).all():
            raise ValueError("`inputs` (embeddings) contain NaN or inf values")
    else:
        if inputs.dim() != 2:
            raise ValueError(
                f"`inputs` must be integer token ids of shape (batch, seq); got {inputs.dtype} "
                f"of shape {tuple(inputs.shape)}"
            )
        if inputs.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"`inputs` token ids must be int64 or int32; got {inputs.dtype} (use .long())")
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


def check_pixel_values(inputs: Any, channels: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Validate an image batch ``(batch, channels, height, width)`` for a vision model (``channels``
    and ``dtype`` the model's, when known)."""
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a tensor of pixel values, got {type(inputs).__name__}")
    if inputs.is_inference():
        inputs = inputs.clone()
    if not inputs.is_floating_point() or inputs.dim() != 4:
        raise ValueError(f"the model reads images: `inputs` must be floating pixel values (batch, channels, height, "
                         f"width); got {inputs.dtype} of shape {tuple(inputs.shape)}")
    if channels is not None and inputs.shape[1] != channels:
        raise ValueError(f"`inputs` have {inputs.shape[1]} channels but the model reads {channels}")
    if dtype is not None and inputs.dtype != dtype:
        raise TypeError(f"`inputs` (pixel values) are {inputs.dtype} but the model is {dtype}: cast them with "
                        f".to({dtype})")
    if inputs.shape[0] == 0:
        raise ValueError("`inputs` is an empty batch")
    if not torch.isfinite(inputs).all():
        raise ValueError("`inputs` (pixel values) contain NaN or inf values")
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
    mask = check_token_mask(additional_forward_args[0], inputs, "attention mask (additional_forward_args[0])")
    empty = (mask.sum(1) == 0).nonzero()
    if len(empty):
        raise ValueError(f"example {int(empty[0])} has no real token: its attention mask is all 0")
    return mask


def check_target(target: Any, scores: Tensor) -> None:
    """Raise if ``target`` (Captum's TargetType) is missing, of a form that cannot select one
    score per example, or outside ``scores``' classes."""
    classes = scores.shape[1] if scores.dim() > 1 else None
    if target is None:
        if classes is not None and scores[0].numel() > 1:
            raise ValueError(
                f"`target` is required: the model returns {classes} scores per example; "
                "pass the class to explain (an int, or one per example)"
            )
        return
    if scores.dim() == 3:
        _check_position_target(target, scores)
        return
    if scores.dim() != 2:
        return  # other multi-dimensional outputs: leave tuple targets to Captum's selection
    expected = "an int, a list of ints or an integer tensor with one class per example"
    batch = scores.shape[0]
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool or target.dim() > 1:
            raise TypeError(f"`target` must be {expected}; got a {target.dtype} tensor of shape {tuple(target.shape)}")
        values = target.flatten().tolist()
        if len(values) not in (1, batch):
            raise ValueError(f"`target` has {len(values)} entries for a batch of {batch} examples")
    elif isinstance(target, int) and not isinstance(target, bool):
        values = [target]
    elif isinstance(target, list) and target and all(isinstance(t, int) and not isinstance(t, bool) for t in target):
        values = target
        if len(values) != batch:
            raise ValueError(f"`target` has {len(values)} entries for a batch of {batch} examples"
                             + (" (a list holds one class per example; pass an int for all)" if len(values) == 1 else ""))
    else:
        shown = f"{type(target).__name__} {target!r}" if not hasattr(target, "shape") else type(target).__name__
        raise TypeError(f"`target` must be {expected}; got {shown[:80]}")
    bad = [t for t in values if not 0 <= t < classes]
    if bad:
        raise ValueError(f"`target` {bad[0]} is out of range: the model has {classes} classes")


def _check_position_target(target: Any, scores: Tensor) -> None:
    """Targets of per-token scores ``(batch, seq, n)``: a ``(position, index)`` tuple, or a list
    of them with one per example."""
    batch, seq, n = scores.shape
    expected = (f"the model's scores are per token, (batch, seq, n) = {tuple(scores.shape)}: pass a "
                "(position, index) tuple, e.g. (start, 0) / (end, 1) for a question-answering model's "
                "start / end logit or (position, token_id) for a language model's next token, a list of "
                "such tuples (one per example), or AnswerSpan(start, end)")

    def is_pair(t: Any) -> bool:
        return isinstance(t, tuple) and len(t) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in t)

    if is_pair(target):
        pairs = [target]
    elif isinstance(target, list) and target and all(is_pair(t) for t in target):
        pairs = target
        if len(pairs) != batch:
            raise ValueError(f"`target` has {len(pairs)} (position, index) pairs for a batch of {batch} examples")
    else:
        shown = type(target).__name__ if hasattr(target, "shape") else f"{type(target).__name__} {target!r}"
        raise TypeError(f"`target` {shown[:80]} cannot select one score per example: {expected}")
    for position, index in pairs:
        if not 0 <= position < seq:
            raise ValueError(f"`target` position {position} is outside the sequence of {seq} tokens")
        if not 0 <= index < n:
            raise ValueError(f"`target` index {index} is out of range: the model has {n} scores per token")
