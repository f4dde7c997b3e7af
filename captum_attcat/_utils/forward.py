"""A forward pass that only reads the attention probabilities.

Example::

    >>> adapter = TransformerAdapter.from_model(model)
    >>> output, maps = attention_maps(adapter, input_ids, attention_mask)
    >>> maps[0].shape                     # (batch, heads, queries, keys), block 0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .attention import AttentionRecorder, use_attention_handler
from .state import explanation_mode


def attention_maps(adapter: Any, inputs: Tensor, *args: Any) -> tuple[Any, list[Tensor]]:
    """The output of ``adapter.call(inputs, *args)`` and every block's attention
    probabilities, without gradients, the model in eval mode and restored afterwards."""
    recorder = AttentionRecorder(adapter.attention_modules)
    handles = []
    with adapter.lock():
        try:
            with explanation_mode(adapter.roots, adapter.attention_configs), torch.no_grad(), \
                    use_attention_handler(recorder):
                handles = recorder.hook_outputs(adapter.hooked_attention)
                output = adapter.call(inputs, *args)
        finally:
            for handle in handles:
                handle.remove()
    return output, recorder.captured()
