"""Capture the hidden states that enter or leave each transformer block.

Captum's layer utilities hook every positional input of a layer and require all
of them to be tensors; Hugging Face blocks also receive ``None`` masks and
keyword arguments. :class:`BlockStates` hooks only the hidden states (the first
positional tensor, or the ``hidden_states`` keyword), keeps the original tensor
for gradients and hands a clone to the block, exactly as Captum's
``compute_layer_gradients_and_eval`` does, so in-place operations inside a
block cannot corrupt what was captured.

Example::

    >>> with BlockStates(model.bert.encoder.layer, inputs=True) as states:
    ...     logits = model(input_ids).logits
    >>> grads = torch.autograd.grad(logits[:, 1].sum(), states.tensors)
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor
from torch.nn import Module


class Tap(Module):
    """An identity module a recorded tensor passes through, so that Captum's layer utilities
    (``compute_layer_gradients_and_eval``) can hook it as a layer output: a block's hidden-states
    argument, which arrives among ``None`` masks, caches and keywords, becomes the plain output of a
    module. ``value`` is what passed (a fresh leaf
    requiring grad when nothing upstream does); with ``clone=True`` the module hands on a clone,
    as Captum's hook does, so in-place operations downstream cannot change what was recorded.

    Example::

        >>> tap = Tap(clone=True)
        >>> out = tap(torch.ones(2))
        >>> tap.value.requires_grad, out is tap.value
        (True, False)
    """

    def __init__(self, clone: bool = False) -> None:
        super().__init__()
        self.clone = clone
        self.value: Tensor | None = None

    def forward(self, tensor: Tensor) -> Tensor:
        if not tensor.requires_grad:  # nothing upstream needs grad: start a fresh leaf
            tensor = tensor.detach().requires_grad_()
        self.value = tensor
        return tensor.clone() if self.clone else tensor


class CallOrder:
    """Which entry each call of a module fills, when a module is listed at several entries (ALBERT's
    shared layer, applied once per block): its k-th call fills its k-th entry.

    Example::

        >>> order = CallOrder({layer: [0, 1]})
        >>> order.next(layer), order.next(layer), order.next(layer)
        (0, 1, None)
    """

    def __init__(self, entries: dict[Module, list[int]]) -> None:
        self.entries = entries
        self._calls: dict[Module, int] = {}

    def reset(self) -> None:
        """Start counting calls again (a new forward pass)."""
        self._calls = {}

    def next(self, module: Module) -> int | None:
        """The entry of ``module``'s current call; None for a module not listed, or for calls after
        its listed ones."""
        entries = self.entries.get(module)
        if not entries:
            return None
        calls = self._calls.get(module, 0)
        self._calls[module] = calls + 1
        return entries[calls] if calls < len(entries) else None


class BlockStates:
    """Context manager recording block input (``inputs=True``) or output hidden states.

    ``tensors[l]`` is block ``l``'s hidden state ``(batch, seq, hidden)``; it
    requires grad, so gradients of any later output can be taken with respect
    to it (with ``fresh=True`` it is always a new leaf, so that nothing upstream is
    part of the graph). A module listed several times (a layer applied several times, as
    ALBERT's shared layer) fills its entries in the order of its calls. Hooks are removed
    on exit, whatever happens.
    """

    def __init__(self, blocks: Sequence[Module], inputs: bool = True, fresh: bool = False,
                 taps: Sequence[Tap] | None = None) -> None:
        self.blocks = list(blocks)
        #: one :class:`Tap` per block that the recorded states pass through instead (they hand on
        #: what the block receives)
        self.taps = list(taps) if taps is not None else None
        self.inputs = inputs
        #: always start a fresh leaf at each recorded state (cut the graph upstream)
        self.fresh = fresh
        self.tensors: list[Tensor | None] = [None] * len(self.blocks)
        self._handles: list = []
        entries: dict[Module, list[int]] = {}
        for index, block in enumerate(self.blocks):
            entries.setdefault(block, []).append(index)
        #: the entry of each call (None for a shared layer's later applications when only its first
        #: is recorded)
        self._order = CallOrder(entries)

    def _keep(self, index: int, hidden: Tensor) -> Tensor:
        if self.taps is not None:
            passed = self.taps[index](hidden)
            self.tensors[index] = self.taps[index].value
            return passed
        if self.fresh or not hidden.requires_grad:  # nothing upstream needs grad: start a fresh leaf
            hidden = hidden.detach().requires_grad_()
        self.tensors[index] = hidden
        return hidden.clone()

    def _pre_hook(self):
        def hook(module: Module, args: tuple, kwargs: dict[str, Any]):
            index = self._order.next(module)
            if index is None:
                return None
            if args and isinstance(args[0], Tensor):
                return (self._keep(index, args[0]), *args[1:]), kwargs
            if isinstance(kwargs.get("hidden_states"), Tensor):
                kwargs = dict(kwargs, hidden_states=self._keep(index, kwargs["hidden_states"]))
                return args, kwargs
            raise ValueError(
                f"block {index} ({type(module).__name__}) received no hidden-states tensor: "
                "expected it as the first positional argument or as `hidden_states=`"
            )

        return hook

    def _post_hook(self):
        def hook(module: Module, args: tuple, output):
            index = self._order.next(module)
            if index is None:
                return None
            if isinstance(output, Tensor):
                return self._keep(index, output)
            if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
                return type(output)((self._keep(index, output[0]), *output[1:]))
            raise ValueError(
                f"block {index} ({type(module).__name__}) returned {type(output).__name__}; "
                "expected a hidden-states tensor or a tuple starting with one"
            )

        return hook

    def __enter__(self) -> "BlockStates":
        self._order.reset()
        try:
            for block in self._order.entries:
                if self.inputs:
                    handle = block.register_forward_pre_hook(self._pre_hook(), with_kwargs=True)
                else:
                    handle = block.register_forward_hook(self._post_hook())
                self._handles.append(handle)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def captured(self) -> list[Tensor]:
        """The captured tensors; raises if a block never ran."""
        missing = [i for i, t in enumerate(self.tensors) if t is None]
        if missing:
            raise RuntimeError(
                f"blocks {missing} never ran during the forward pass: the given layers are "
                "not used by the forward function"
            )
        return list(self.tensors)  # type: ignore[arg-type]
