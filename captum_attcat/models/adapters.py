"""Where the blocks and the attention of a model are, and how to call it.

:class:`TransformerAdapter` is all an explanation method needs to know about a
model: a forward function returning one score tensor, the transformer blocks in
order, the attention module of each block, and (for Hugging Face models) the
config used to validate inputs.

For a Hugging Face ``PreTrainedModel`` the blocks and attention modules are
found from the model's own declaration of what it can record
(``_can_record_outputs``: ``"hidden_states"`` names the block class,
``"attentions"`` the self-attention class), the same table transformers uses
for ``output_hidden_states``/``output_attentions``. This covers BERT,
RoBERTa/XLM-R, DistilBERT, ELECTRA and every other family built that way.

Example::

    >>> adapter = TransformerAdapter.from_model(model)
    >>> len(adapter.blocks), type(adapter.attention_modules[0]).__name__
    (2, 'BertSelfAttention')
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.nn import Module

from .._utils.attention import attention_configs
from .._utils.state import model_lock

# model types whose position ids start after the padding index (RoBERTa style)
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}


def logits_of(output: Any) -> Tensor:
    """The score tensor of a model output: itself, ``.logits``, the start and end logits of a
    question-answering model stacked as ``(batch, seq, 2)`` (index 0 start, 1 end), or the first
    element of a tuple.

    Example::

        >>> logits_of(qa_model(input_ids=ids)).shape   # doctest: +SKIP
        torch.Size([1, 12, 2])
    """
    if isinstance(output, Tensor):
        return output
    start, end = getattr(output, "start_logits", None), getattr(output, "end_logits", None)
    if isinstance(start, Tensor) and isinstance(end, Tensor):
        return torch.stack([start, end], dim=-1)
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"the forward function returned {type(output).__name__}; expected a tensor of "
        "scores, an output with `.logits` (or `.start_logits` and `.end_logits`), or a tuple "
        "starting with a tensor"
    )


def _is_hf_model(obj: Any) -> bool:
    return isinstance(obj, Module) and hasattr(obj, "config") and callable(getattr(obj, "get_input_embeddings", None))


def _record_spec(spec: Any) -> tuple[type, str | None]:
    """(module class, name filter) from a ``_can_record_outputs`` entry."""
    target = getattr(spec, "target_class", spec)
    return target, getattr(spec, "layer_name", None)


def _modules_matching(model: Module, spec: Any) -> list[Module]:
    target, layer_name = _record_spec(spec)
    if not isinstance(target, type):
        return []
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, target) and (layer_name is None or layer_name in f".{name}")
    ]


def unwrapped(model: Any) -> Any:
    """The module inside ``torch.compile``, ``DataParallel`` and ``DistributedDataParallel``
    wrappers (any depth); anything else as it is.

    Example::

        >>> unwrapped(torch.compile(model)) is model
        True
    """
    while True:
        if isinstance(getattr(model, "_orig_mod", None), Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def uses_attention_interface(module: Module) -> bool:
    """Whether ``module`` computes attention through transformers' ``AttentionInterface`` (its
    forward looks up ``ALL_ATTENTION_FUNCTIONS``), which the library can switch to its own
    recording implementation; otherwise the model's own code runs and is read through
    ``output_attentions``."""
    forward = inspect.unwrap(type(module).forward)
    return "ALL_ATTENTION_FUNCTIONS" in getattr(getattr(forward, "__code__", None), "co_names", ())


def layer_count(config: Any) -> int | None:
    """The number of transformer blocks a config declares."""
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _explicit_hint(model: Module, why: str) -> str:
    return (
        f"cannot find the transformer blocks and attention of {type(model).__name__}: {why}. Pass them "
        "explicitly: Method(model, layers=[block, ...], attention_modules=[attn, ...]), with attention "
        "modules that return the probabilities (batch, heads, queries, keys) or a tuple ending with them"
    )


def _attention_of(block: Module) -> list[Module]:
    """The innermost modules of ``block`` whose class name says attention (self-attention, not
    cross-attention): ``BertSelfAttention`` inside ``BertAttention``."""
    found = [(name, m) for name, m in block.named_modules()
             if "attention" in type(m).__name__.lower() and "cross" not in (name + type(m).__name__).lower()]
    return [m for name, m in found
            if not any(other is not m and "attention" in type(other).__name__.lower() for other in m.modules())]


def _applications(model: Module, blocks: list[Module], expected: int | None) -> list[Module]:
    """Blocks in the order the forward applies them: ALBERT applies its layer groups
    ``num_hidden_layers`` times in all (``num_hidden_groups`` groups of the found layers)."""
    groups = getattr(model.config, "num_hidden_groups", None)
    if not isinstance(groups, int) or expected is None or len(blocks) == expected or len(blocks) % groups:
        return blocks
    per_group = len(blocks) // groups
    return [blocks[g * per_group + j] for i in range(expected) for g in [i * groups // expected]
            for j in range(per_group)]


def find_blocks(model: Module) -> tuple[list[Module], list[Module]]:
    """``(blocks, attention modules)`` of a Hugging Face model, one entry per application.

    From ``_can_record_outputs`` (``"hidden_states"`` -> block class, ``"attentions"`` -> attention
    class, or a list of recorders of which one matches every block) where the model declares it;
    otherwise the model's list of ``config.num_hidden_layers`` identical layers and, in each, its
    innermost self-attention module. Raises, saying what was searched, when neither fits.

    Example::

        >>> blocks, attention = find_blocks(deberta)      # no _can_record_outputs  # doctest: +SKIP
        >>> type(attention[0]).__name__
        'DisentangledSelfAttention'
    """
    expected = layer_count(model.config)
    spec = getattr(type(model), "_can_record_outputs", None) or {}
    if spec.get("hidden_states") is not None:
        blocks = _applications(model, _modules_matching(model, spec["hidden_states"]), expected)
        entries = spec.get("attentions")
        for entry in entries if isinstance(entries, (list, tuple)) else [entries]:
            attention = _applications(model, _modules_matching(model, entry), expected)
            if blocks and len(attention) == len(blocks) and (expected is None or len(blocks) % expected == 0):
                return blocks, attention
        raise ValueError(_explicit_hint(
            model, f"searched for modules of class {_record_spec(spec['hidden_states'])[0].__name__} (blocks, "
                   f"found {len(blocks)}) and of the classes its `_can_record_outputs` gives for 'attentions', "
                   f"expecting {expected} of each"))
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == expected
             and len({type(layer) for layer in m}) == 1]
    if len(lists) != 1:
        raise ValueError(_explicit_hint(
            model, f"searched its module tree for one list of {expected} identical layers "
                   f"(config.num_hidden_layers) and found {len(lists)}"))
    blocks = list(lists[0])
    attention = [_attention_of(block) for block in blocks]
    if any(len(found) != 1 for found in attention):
        raise ValueError(_explicit_hint(
            model, f"searched each {type(blocks[0]).__name__} for one innermost self-attention module and found "
                   f"{[type(m).__name__ for m in attention[0]]}"))
    return blocks, [found[0] for found in attention]


def hf_call(model: Module, output_attentions: bool = False) -> Callable[..., Any]:
    """``call(inputs, *args) -> model output`` for a Hugging Face model (``output_attentions=True``
    asks the model for its attention probabilities, for models whose own attention code returns
    them only then).

    Floating ``inputs`` are passed as ``inputs_embeds``, token ids as
    ``input_ids``, and images as ``pixel_values`` to a vision model. The additional arguments are, in order, the attention mask and
    the parameters that follow ``attention_mask`` in the model's ``forward``
    (``token_type_ids``, ``position_ids``, ... for BERT), passed by name, so the
    convention holds for models whose second parameter is not the mask (GPT-2).
    """
    parameters = list(inspect.signature(model.forward).parameters)
    names = parameters[parameters.index("attention_mask"):] if "attention_mask" in parameters else []
    reads_pixels = getattr(model, "main_input_name", None) == "pixel_values"

    def call(inputs: Tensor, *args: Any) -> Any:
        if len(args) > len(names):
            raise TypeError(
                f"{type(model).__name__} takes at most {len(names)} additional forward arguments "
                f"({', '.join(names)}); got {len(args)}"
            )
        kwargs = dict(zip(names, args))
        _check_token_types(kwargs.get("token_type_ids"), inputs, model.config)
        if output_attentions:
            kwargs["output_attentions"] = True
        if reads_pixels:
            return model(pixel_values=inputs, **kwargs)
        if inputs.is_floating_point():
            return model(inputs_embeds=inputs, **kwargs)
        return model(input_ids=inputs, **kwargs)

    return call


def _check_token_types(token_type_ids: Any, inputs: Tensor, config: Any) -> None:
    """Segment ids of the shape of the inputs, inside the model's type vocabulary."""
    if token_type_ids is None:
        return
    where = "`token_type_ids` (additional_forward_args[1])"
    if not isinstance(token_type_ids, Tensor) or token_type_ids.is_floating_point() or token_type_ids.dtype == torch.bool:
        raise TypeError(f"{where} must be an integer tensor of shape (batch, seq); got "
                        f"{getattr(token_type_ids, 'dtype', type(token_type_ids).__name__)}")
    if tuple(token_type_ids.shape) != tuple(inputs.shape[:2]):
        raise ValueError(f"{where} has shape {tuple(token_type_ids.shape)} but the inputs have (batch, seq) = "
                         f"{tuple(inputs.shape[:2])}")
    types = getattr(config, "type_vocab_size", None)
    if types is not None and token_type_ids.numel():
        low, high = int(token_type_ids.min()), int(token_type_ids.max())
        if low < 0 or high >= types:
            raise ValueError(f"{where} must lie in [0, {types}) (the model's token types); found "
                             f"{low if low < 0 else high}")


@dataclass
class TransformerAdapter:
    """A model as explanation methods see it.

    Attributes:
        call: ``call(inputs, *additional_forward_args) -> output`` runs the model;
            token ids or (floating) input embeddings as ``inputs``.
        blocks: the transformer blocks, first to last.
        attention_modules: the attention module of each block (same order); may be
            empty in the explicit form for methods that need no attention.
        root: the model as a whole, when known (its mode and attention
            implementation are switched during a call and restored).
        config: the Hugging Face config, when known (vocabulary size, maximum
            length and number of classes are checked against it).
    """

    call: Callable[..., Any]
    blocks: list[Module]
    attention_modules: list[Module]
    root: Module | None = None
    config: Any = None

    @classmethod
    def from_model(cls, model: Any) -> "TransformerAdapter":
        """Find blocks and attention modules of a Hugging Face model (a ``torch.compile``
        or ``DataParallel`` wrapper is looked through: explanations run the eager module,
        with the same weights, since they hook and rewrite its operations).

        The blocks come from the model's ``_can_record_outputs`` when it declares them, else
        from its module tree (:func:`find_blocks`); a layer applied several times (ALBERT's
        shared layer) is one block per application.
        """
        model = unwrapped(model)
        if not (isinstance(model, Module) and hasattr(model, "config")):
            raise TypeError(
                f"cannot find the transformer blocks of {type(model).__name__}: it is not a Hugging Face "
                "PreTrainedModel. For any other model pass them explicitly: "
                "Method(forward_func, layers=[block, ...], attention_modules=[attn, ...])"
            )
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError(_explicit_hint(
                model, "it is an encoder-decoder model, whose output reads the decoder (which attends to the "
                       "encoder through cross-attention), and the methods explain one stack of blocks"))
        blocks, attention = find_blocks(model)
        interface = all(uses_attention_interface(m) for m in attention)
        loaded = getattr(model.config, "_attn_implementation", None)
        if not interface and loaded not in (None, "eager"):
            raise ValueError(
                f"{type(model).__name__} computes attention in its own code, which returns the probabilities "
                f"only on its eager path; loaded with attn_implementation={loaded!r} it takes another path, so "
                "the explained forward would not be the model's own. Load it with attn_implementation=\"eager\" "
                "(from_pretrained(..., attn_implementation=\"eager\"))"
            )
        # a model with its own attention code returns the probabilities only when asked
        return cls(hf_call(model, output_attentions=not interface), blocks, attention, root=model,
                   config=model.config)

    @classmethod
    def explicit(
        cls,
        forward_func: Callable[..., Any],
        layers: Sequence[Module] | None,
        attention_modules: Sequence[Module] | None,
    ) -> "TransformerAdapter":
        """Use the given blocks and attention modules of any model (Captum's explicit form)."""
        if layers is None:
            raise ValueError(
                "pass `layers` (the transformer blocks, in order) with `attention_modules` "
                "(one per block), or neither for a Hugging Face model"
            )
        layers, attention_modules = list(layers), list(attention_modules or [])
        if not layers or (attention_modules and len(layers) != len(attention_modules)):
            raise ValueError(
                f"`layers` must be non-empty and `attention_modules` hold one module per layer; "
                f"got {len(layers)} layers and {len(attention_modules)} attention modules"
            )
        for name, modules in (("layers", layers), ("attention_modules", attention_modules)):
            for module in modules:
                if not isinstance(module, Module):
                    raise TypeError(f"`{name}` must hold torch.nn.Module objects, got {type(module).__name__}")
        root = forward_func if isinstance(forward_func, Module) else getattr(forward_func, "__self__", None)
        root = root if isinstance(root, Module) else None
        call = hf_call(forward_func) if _is_hf_model(forward_func) else forward_func
        return cls(call, layers, attention_modules, root=root, config=getattr(root, "config", None))

    def __post_init__(self) -> None:
        #: ``forward(inputs, *args) -> scores``: the score tensor of :attr:`call`'s output
        self.forward: Callable[..., Tensor] = lambda inputs, *args: logits_of(self.call(inputs, *args))
        #: modules switched to eval mode during a call: the model, or the given modules
        self.roots: list[Module] = [self.root] if self.root is not None else self.blocks + self.attention_modules
        #: the Hugging Face configs switched to the library's attention implementation: only where
        #: the blocks compute attention through the interface (a model with its own code, such as
        #: Falcon, would take another code path once switched)
        interface = any(uses_attention_interface(m) for block in self.blocks for m in block.modules())
        self.attention_configs = attention_configs(self.roots) if interface else []
        #: attention modules outside transformers' AttentionInterface (read through forward hooks), once each
        self.hooked_attention = list(dict.fromkeys(m for m in self.attention_modules if not uses_attention_interface(m)))

    def lock(self) -> Any:
        """A context holding the lock of the explained model (:func:`model_lock` of its
        roots and attention configs): held for the whole of every pass that changes the
        model's state, so threads sharing the model take turns."""
        return model_lock([*self.roots, *self.attention_configs])

    @property
    def causal(self) -> bool:
        """Whether the attention is causal (a decoder such as GPT-2): then the classification
        head reads the last real token, and methods that read one query row read that one."""
        return any(getattr(module, "is_causal", False) is True for module in self.attention_modules)

    @property
    def input_embeddings(self) -> Tensor | None:
        """The weight of the model's input embedding table, if known (its width and dtype are
        what embeddings given as inputs must have)."""
        get = getattr(self.root, "get_input_embeddings", None)
        try:
            table = get() if callable(get) else None
        except NotImplementedError:  # (CLIP's image classifier has no token embeddings)
            table = None
        weight = getattr(table, "weight", None)
        return weight if isinstance(weight, Tensor) else None

    @property
    def reads_pixels(self) -> bool:
        """Whether the model reads images (``pixel_values``): its sequence is then [CLS] (and any other
        special tokens) + patches, scored per patch."""
        return getattr(self.root, "main_input_name", None) == "pixel_values"

    @property
    def vocab_size(self) -> int | None:
        return getattr(self.config, "vocab_size", None)

    @property
    def max_length(self) -> int | None:
        """Longest token sequence the position embeddings allow, if known."""
        positions = getattr(self.config, "max_position_embeddings", None)
        if positions is None:
            return None
        if getattr(self.config, "model_type", None) in _POSITION_OFFSET_TYPES:
            positions -= (getattr(self.config, "pad_token_id", None) or 0) + 1
        return positions
