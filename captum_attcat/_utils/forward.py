"""A forward pass that only reads the attention probabilities.

Example::

    >>> adapter = TransformerAdapter.from_model(model)
    >>> output, maps = attention_maps(adapter, input_ids, attention_mask)
    >>> maps[0].shape                     # (batch, heads, queries, keys), block 0
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from .attention import AttentionRecorder, use_attention_handler
from .hooks import BlockStates
from .state import explanation_mode


def attention_maps(adapter: Any, inputs: Tensor, *args: Any, attention: bool = True,
                   states: BlockStates | None = None) -> tuple[Any, list[Tensor]]:
    """The output of ``adapter.call(inputs, *args)`` and every block's attention probabilities
    (none with ``attention=False``: the model's own implementation then runs untouched), without
    gradients, the model in eval mode and restored afterwards; ``states`` (a :class:`BlockStates`)
    records block hidden states during the same pass."""
    recorder = AttentionRecorder(adapter.attention_modules)
    handles = []
    with adapter.lock():
        try:
            with explanation_mode(adapter.roots, adapter.attention_configs), torch.no_grad(), \
                    use_attention_handler(recorder) if attention else nullcontext():
                if attention:
                    handles = recorder.hook_outputs(adapter.hooked_attention)
                with states if states is not None else nullcontext():
                    output = adapter.call(inputs, *args)
        finally:
            for handle in handles:
                handle.remove()
    return output, recorder.captured() if attention else []
