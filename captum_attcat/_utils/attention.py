"""One architecture-independent place to see (and rewrite) attention.

Hugging Face models dispatch attention through ``transformers.AttentionInterface``.
This module registers an implementation named :data:`ATTN_IMPLEMENTATION` that
hands every attention call to whichever :class:`AttentionHandler` is active, so
explanation methods can record the probabilities, keep their gradients or
replace the computation (LRP rules) for every model family that uses the
interface. While a model is switched to it, the attention output is computed by
the implementation the model was loaded with (``sdpa`` or ``eager``; others fall
back to eager) and the mask keeps that implementation's format, so a method that
only *reads* probabilities leaves the model's numbers and speed as they were;
the probabilities are computed on the side from the same queries, keys and mask.

Example::

    >>> recorder = AttentionRecorder(attention_modules)
    >>> with use_attention_handler(recorder), attention_implementation(configs):
    ...     model(input_ids, attention_mask)
    >>> recorder.probabilities[0].shape      # (batch, heads, queries, keys)
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import Module
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .hooks import CallOrder

ATTN_IMPLEMENTATION = "captum_attcat"

# id(config) -> the implementation it was loaded with, while switched to ATTN_IMPLEMENTATION
_LOADED: ContextVar[dict[int, Any]] = ContextVar("captum_attcat_loaded_implementation", default={})


def loaded_implementation(module: Module | None = None, config: Any = None) -> str:
    """``"sdpa"`` or ``"eager"``: how the model of ``module`` (or ``config``) computes
    attention outside explanation calls (anything else counts as ``"eager"``)."""
    if config is None:
        config = getattr(module, "config", None)
    name = _LOADED.get().get(id(config))
    return "sdpa" if name == "sdpa" else "eager"


def additive_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = attend) as the eager additive float mask; others unchanged."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return attention_mask
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(attention_mask, zero, torch.finfo(dtype).min)


def eager_attention(
    module: Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    probabilities_hook=None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Eager scaled dot-product attention, ``softmax(Q K^T * scaling + mask) V`` (with the
    soft-capping and sinks of :func:`attention_probabilities` when given).

    ``query`` is ``(batch, heads, queries, head_dim)``; ``key``/``value`` may have
    fewer heads (grouped-query attention), they are repeated to match. The mask
    is additive (eager format) or boolean (sdpa format, True = attend).
    ``probabilities_hook(module, probs) -> probs`` sees the probabilities
    before they multiply the values. Returns the output as
    ``(batch, queries, heads, head_dim)`` and the probabilities.
    """
    key, value = _repeat_kv(query, key), _repeat_kv(query, value)
    probs = attention_probabilities(query, key, attention_mask, scaling, softcap, sinks)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    if probabilities_hook is not None:
        probs = probabilities_hook(module, probs)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def _repeat_kv(query: Tensor, states: Tensor) -> Tensor:
    groups = query.shape[1] // states.shape[1]
    return states.repeat_interleave(groups, dim=1) if groups > 1 else states


def attention_probabilities(
    query: Tensor, key: Tensor, attention_mask: Tensor | None, scaling: float | None = None,
    softcap: float | None = None, sinks: Tensor | None = None,
) -> Tensor:
    """``softmax(Q K^T * scaling + mask)`` over keys, ``(batch, heads, queries, keys)``,
    computed in float32 or the query's dtype if wider.

    ``softcap`` (Gemma-2) caps the scores as ``softcap * tanh(scores / softcap)`` before the
    mask; ``sinks`` (gpt-oss, one logit per head) join the softmax as one more key that is
    then dropped, so a row sums to less than 1.
    """
    key = _repeat_kv(query, key)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    attention_mask = additive_mask(attention_mask, scores.dtype)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    # float32 for half precision (as most eager implementations), the model's own dtype otherwise
    dtype = torch.promote_types(scores.dtype, torch.float32)
    if sinks is None:
        return torch.softmax(scores, dim=-1, dtype=dtype).to(query.dtype)
    sink = sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1, dtype=dtype)[..., :-1].to(query.dtype)


class AttentionHandler:
    """Computes attention for the modules it watches.

    Subclasses override :meth:`attention` (to rewrite the computation, e.g. with
    LRP rules: it receives the mask in the loaded implementation's format, which
    :func:`eager_attention` accepts) or just :meth:`on_probabilities` (to read
    the probabilities). ``attention_modules`` are the modules of each block, in
    block order; a call made by one of them, or by any of its submodules, is
    attributed to that block.

    By default the output comes from the implementation the model was loaded
    with; when :attr:`probabilities_need_graph` is true it comes from
    :func:`eager_attention`, so the probabilities are part of the graph.
    """

    #: whether the probabilities handed to :meth:`on_probabilities` must carry gradients
    probabilities_need_graph: bool = False

    def __init__(self, attention_modules: Sequence[Module]) -> None:
        #: the blocks of each module (several for a module applied several times, in call order)
        self.block_of: dict[Module, list[int]] = {}
        owners: dict[Module, Module] = {}
        for index, owner in enumerate(attention_modules):
            for sub in owner.modules():
                if owners.setdefault(sub, owner) is owner:  # a call belongs to the first module holding it
                    self.block_of.setdefault(sub, []).append(index)
        self._order = CallOrder(self.block_of)

    def block(self, module: Module) -> int | None:
        """The block of ``module``'s current call, counting its calls (None if not watched; a call
        after the listed ones is its last block's again)."""
        index = self._order.next(module)
        return self.block_of[module][-1] if index is None and self.block_of.get(module) else index

    def attention(
        self,
        module: Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None,
        dropout: float,
        softcap: float | None = None,
        sinks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        if self.probabilities_need_graph or loaded_implementation(module) != "sdpa" or softcap is not None \
                or sinks is not None:
            return eager_attention(module, query, key, value, attention_mask, scaling, dropout, self._hook,
                                   softcap, sinks)
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
        if module not in self.block_of:
            return output, None
        with torch.no_grad():
            probs = attention_probabilities(query, key, attention_mask, scaling)
        return output, self._hook(module, probs)

    def _hook(self, module: Module, probs: Tensor) -> Tensor:
        block = self.block(module)
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
        self.probabilities_need_graph = keep_graph
        self.probabilities: list[Tensor | None] = [None] * len(attention_modules)

    def on_probabilities(self, block: int, probs: Tensor) -> Tensor:
        self.probabilities[block] = probs if self.probabilities_need_graph else probs.detach()
        return probs

    def captured(self) -> list[Tensor]:
        """The recorded probabilities of every block; raises if a block was not seen."""
        missing = [i for i, p in enumerate(self.probabilities) if p is None]
        if missing:
            raise RuntimeError(
                f"no attention probabilities were seen for blocks {missing}: the attention modules "
                "did not run, or do not compute attention through transformers' AttentionInterface"
            )
        return list(self.probabilities)  # type: ignore[arg-type]

    def hook_outputs(self, attention_modules: Sequence[Module]) -> list:
        """Forward hooks for modules outside the interface: their output *is* the
        probabilities, or a tuple whose last element is (the Hugging Face
        ``(output, weights)`` convention). Returns the hook handles."""

        def make_hook():
            def hook(module: Module, args, output):
                block = self.block(module)
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

        return [m.register_forward_hook(make_hook()) for m in dict.fromkeys(attention_modules)]


_ACTIVE_HANDLER: ContextVar[AttentionHandler | None] = ContextVar(
    "captum_attcat_attention_handler", default=None
)


#: keywords models pass to their attention implementation that do not change what eager
#: attention computes: call information, options of other kernels, and ``sliding_window``, which
#: the mask already encodes (the mask interface builds it from the same config)
_IGNORED_KEYWORDS = {
    "position_ids", "use_cache", "cache_position", "encoder_hidden_states", "deterministic", "sliding_window",
    "output_attentions", "output_hidden_states", "return_dict", "past_key_values", "past_key_value", "layer_idx",
}


def _dispatch_attention(
    module: Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    s_aux: Tensor | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in _IGNORED_KEYWORDS)
    if unknown:
        raise NotImplementedError(
            f"{type(module).__name__} passes {', '.join(f'`{k}`' for k in unknown)} to its attention "
            "implementation, which the library's recording attention does not know: the explained forward "
            "would not be the model's own. Pass the blocks and attention modules explicitly "
            "(`layers=`, `attention_modules=` returning the probabilities), or ask for support of this keyword"
        )
    handler = _ACTIVE_HANDLER.get() or _PASS_THROUGH
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if attention_mask is None and causal and query.shape[2] > 1:
        # sdpa leaves a causal mask implicit; make it explicit so every handler sees it
        queries, keys = query.shape[2], key.shape[2]
        attention_mask = torch.ones(queries, keys, dtype=torch.bool, device=query.device).tril(keys - queries)[None, None]
    if softcap is None and s_aux is None:  # handlers written for the plain signature keep working
        return handler.attention(module, query, key, value, attention_mask, scaling, dropout)
    return handler.attention(module, query, key, value, attention_mask, scaling, dropout, softcap=softcap,
                             sinks=s_aux)


def _dispatch_mask(*args: Any, config: Any = None, **kwargs: Any) -> Any:
    """The mask in the format of the implementation the model was loaded with."""
    make_mask = sdpa_mask if loaded_implementation(config=config) == "sdpa" else eager_mask
    return make_mask(*args, config=config, **kwargs)


_PASS_THROUGH = AttentionHandler([])
AttentionInterface.register(ATTN_IMPLEMENTATION, _dispatch_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _dispatch_mask)


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
    token = _LOADED.set({**_LOADED.get(), **{id(c): v for c, v in zip(configs, saved)}})
    try:
        for config in configs:
            config._attn_implementation_internal = name
        yield
    finally:
        for config, value in zip(configs, saved):
            config._attn_implementation_internal = value
        _LOADED.reset(token)
