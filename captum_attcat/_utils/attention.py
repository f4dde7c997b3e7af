"""One architecture-independent place to see (and later rewrite) attention.

Hugging Face models dispatch attention through ``transformers.AttentionInterface``.
This module registers an implementation named :data:`ATTN_IMPLEMENTATION` that
computes ordinary eager attention, but hands the probabilities to whichever
:class:`AttentionHandler` is active, so explanation methods can record them,
keep their gradients or replace the computation (LRP rules) for every model
family that uses the interface. The matching mask format (the eager additive
float mask) is registered too, so padding is masked exactly as in eager mode.

Example::

    >>> recorder = AttentionRecorder(attention_modules)
    >>> with use_attention_handler(recorder), attention_implementation(configs):
    ...     model(input_ids, attention_mask)
    >>> recorder.probabilities[0].shape      # (batch, heads, queries, keys)
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import Module
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTN_IMPLEMENTATION = "captum_attcat"


def eager_attention(
    module: Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    probabilities_hook=None,
) -> tuple[Tensor, Tensor]:
    """Eager scaled dot-product attention, ``softmax(Q K^T * scaling + mask) V``.

    ``query`` is ``(batch, heads, queries, head_dim)``; ``key``/``value`` may have
    fewer heads (grouped-query attention), they are repeated to match.
    ``probabilities_hook(module, probs) -> probs`` sees the probabilities
    before they multiply the values. Returns the output as
    ``(batch, queries, heads, head_dim)`` and the probabilities.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    if probabilities_hook is not None:
        probs = probabilities_hook(module, probs)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


class AttentionHandler:
    """Computes attention for the modules it watches; the base class is eager attention.

    Subclasses override :meth:`attention` (or just :meth:`on_probabilities`).
    ``attention_modules`` are the modules of each block, in block order; a call
    made by one of them, or by any of its submodules, is attributed to that block.
    """

    def __init__(self, attention_modules: Sequence[Module]) -> None:
        self.block_of: dict[Module, int] = {}
        for index, owner in enumerate(attention_modules):
            for sub in owner.modules():
                self.block_of.setdefault(sub, index)

    def attention(
        self,
        module: Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None,
        dropout: float,
    ) -> tuple[Tensor, Tensor]:
        return eager_attention(
            module, query, key, value, attention_mask, scaling, dropout, self._hook
        )

    def _hook(self, module: Module, probs: Tensor) -> Tensor:
        block = self.block_of.get(module)
        if block is None:
            return probs
        return self.on_probabilities(block, probs)

    def on_probabilities(self, block: int, probs: Tensor) -> Tensor:
        """Called with block ``block``'s probabilities; returns what multiplies V."""
        return probs


class AttentionRecorder(AttentionHandler):
    """Records each block's attention probabilities ``(batch, heads, queries, keys)``.

    With ``keep_graph=True`` the recorded tensors stay in the autograd graph, so
    gradients with respect to them can be taken; otherwise they are detached.
    """

    def __init__(self, attention_modules: Sequence[Module], keep_graph: bool = False) -> None:
        super().__init__(attention_modules)
        self.keep_graph = keep_graph
        self.probabilities: list[Tensor | None] = [None] * len(attention_modules)

    def on_probabilities(self, block: int, probs: Tensor) -> Tensor:
        self.probabilities[block] = probs if self.keep_graph else probs.detach()
        return probs

    def hook_outputs(self, attention_modules: Sequence[Module]) -> list:
        """Forward hooks for modules outside the interface: their output *is* the
        probabilities, or a tuple whose last element is (the Hugging Face
        ``(output, weights)`` convention). Returns the hook handles."""

        def make_hook(block: int):
            def hook(module: Module, args, output):
                probs = output[-1] if isinstance(output, (tuple, list)) else output
                if not isinstance(probs, Tensor) or probs.dim() != 4:
                    raise ValueError(
                        f"attention module {type(module).__name__} (block {block}) did not "
                        "return attention probabilities of shape (batch, heads, queries, keys); "
                        f"got {type(probs).__name__}"
                        + (f" of shape {tuple(probs.shape)}" if isinstance(probs, Tensor) else "")
                    )
                self.on_probabilities(block, probs)

            return hook

        return [m.register_forward_hook(make_hook(i)) for i, m in enumerate(attention_modules)]


_ACTIVE_HANDLER: ContextVar[AttentionHandler | None] = ContextVar(
    "captum_attcat_attention_handler", default=None
)


def _dispatch_attention(
    module: Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    handler = _ACTIVE_HANDLER.get()
    if handler is None:
        return eager_attention(module, query, key, value, attention_mask, scaling, dropout)
    return handler.attention(module, query, key, value, attention_mask, scaling, dropout)


AttentionInterface.register(ATTN_IMPLEMENTATION, _dispatch_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


@contextlib.contextmanager
def use_attention_handler(handler: AttentionHandler) -> Iterator[AttentionHandler]:
    """Make ``handler`` compute the attention of :data:`ATTN_IMPLEMENTATION` calls."""
    token = _ACTIVE_HANDLER.set(handler)
    try:
        yield handler
    finally:
        _ACTIVE_HANDLER.reset(token)


def attention_configs(modules: Iterable[Module]) -> list:
    """The distinct Hugging Face configs that decide how ``modules`` compute attention."""
    configs: dict[int, object] = {}
    for owner in modules:
        for sub in owner.modules():
            config = getattr(sub, "config", None)
            if config is not None and hasattr(config, "_attn_implementation_internal"):
                configs.setdefault(id(config), config)
    return list(configs.values())


@contextlib.contextmanager
def attention_implementation(configs: Iterable, name: str = ATTN_IMPLEMENTATION) -> Iterator[None]:
    """Switch ``configs`` to attention implementation ``name``, then back exactly."""
    configs = list(configs)
    saved = [config._attn_implementation_internal for config in configs]
    try:
        for config in configs:
            config._attn_implementation_internal = name
        yield
    finally:
        for config, value in zip(configs, saved):
            config._attn_implementation_internal = value
