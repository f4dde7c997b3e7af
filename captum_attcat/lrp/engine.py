"""The LRP engine: one forward pass whose backward gives gradients *or* relevance.

During :func:`lrp_forward`, a ``torch.overrides.TorchFunctionMode`` sees every
torch operation the model runs. Each operation on tensors that carry
relevance (tensors computed from the explained input, i.e. that require
grad; parameters are frozen for the pass) is replaced by a
``torch.autograd.Function`` computing the same output, whose backward applies
either the ordinary chain rule or the LRP rule chosen in :class:`LRPRules`:

- ``linear`` (every ``nn.Linear``, and ``torch.addmm`` as GPT-2's ``Conv1D``
  uses it), ``elementwise`` (LayerNorm, GELU, ReLU, tanh, softmax, dropout,
  scaling by a constant, and whole activation modules, whatever operations
  their code uses), ``add`` (residual sums), ``product`` (``Q K^T`` and
  ``A V``, whichever attention code computes them);
- operations that only move values around (views, transposes, indexing,
  copies, casts) keep their own backward, which moves relevance alike
  (a tensor used twice receives the sum of the relevance of both uses);
- any other operation on relevance-carrying tensors raises, naming it.

So the engine needs no per-architecture code: ``torch.autograd.grad`` of the
explained logits in :meth:`Propagation.relevance` mode yields the relevance of
any tensor of the forward pass (attention probabilities, block inputs), and in
gradient mode the ordinary gradients, on the same graph.

Example::

    >>> propagation = Propagation(LRPRules())
    >>> with lrp_forward(propagation):
    ...     logits = model(inputs_embeds=embeddings.requires_grad_()).logits
    >>> grads = propagation.gradients(logits[:, 1].sum(), [embeddings], retain_graph=True)
    >>> relevance = propagation.relevance(logits[:, 1].sum(), [embeddings])
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import threading
import weakref
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.nn import Module
from torch.overrides import TorchFunctionMode

from .rules import LRPRules


class Propagation:
    """Rules plus the switch that decides what the backward of the graph computes."""

    def __init__(self, rules: LRPRules | None = None, gradients: bool = True, implicit: bool = False) -> None:
        self.rules = rules if rules is not None else LRPRules()
        #: the gradient x input form (AttnLRP): operations build plain autograd graphs whose
        #: gradients are modified where the rules say so (identity rule: ``y / x``; products: each
        #: operand's halved; LayerNorm: its standard deviation held constant), and the relevance of a
        #: tensor is the tensor times that gradient; ``rules`` are then not used
        self.implicit = implicit
        #: whether :meth:`gradients` will be asked for (elementwise operations then
        #: keep their own small graph instead of recomputing in the backward)
        self.keep_gradients = gradients
        self.relevance_mode = False
        #: rules for the products whose left operand is a given tensor (by identity),
        #: e.g. the ``A V`` product of one block's attention
        self.product_rules: dict[int, Any] = {}
        #: id -> weak reference of the routing weights of mixture-of-experts layers (see :func:`routing_modules`)
        self.routing: dict[int, Any] = {}
        #: whether to remember what moved tensors were made from (needed when rules are given to tensors
        #: after the operations that use them ran: attention read by hooks, routing weights)
        self.follow_copies = False
        #: id of a tensor made by moving values -> weak references to it and to the tensor it came from
        self.made_from: dict[int, tuple[Any, Any]] = {}
        #: > 0 while an operation handled as a whole (an activation module) runs its own code
        self.suspended = 0
        #: whether the explained input has entered (operations before it are constants)
        self.started = True
        self._transposed: dict[int, tuple[Any, Tensor]] = {}

    def transposed(self, weight: Tensor) -> Tensor:
        """``weight.t()``, the same view object for the whole pass while ``weight`` lives (rules cache
        per weight; the id of a freed weight, such as one expert's slice, may name another later)."""
        entry = self._transposed.get(id(weight))
        if entry is None or entry[0]() is not weight:
            entry = self._transposed[id(weight)] = (weakref.ref(weight), weight.t())
        return entry[1]

    def _origins(self, tensor: Tensor | None) -> Iterator[Tensor]:
        """``tensor``, then the tensors it was reshaped or indexed from (a few steps back)."""
        for _ in range(8):
            if tensor is None:
                return
            yield tensor
            entry = self.made_from.get(id(tensor))
            if entry is None or entry[0]() is not tensor:  # (an id reused by another tensor is no link)
                return
            tensor = entry[1]()

    def is_routing(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` holds (a reshaped or indexed copy of) mixture-of-experts routing weights."""
        return any((ref := self.routing.get(id(t))) is not None and ref() is t for t in self._origins(tensor))

    def product_rule(self, left: Tensor) -> Any:
        """The rule of a product whose left operand is ``left``: one given to it, or to the tensor
        it was reshaped from (a few steps back), else the default product rule."""
        for tensor in self._origins(left):
            rule = self.product_rules.get(id(tensor))
            if rule is not None:
                return rule
        return self.rules.product

    def gradients(self, output: Tensor, inputs: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor]:
        """Ordinary gradients of ``output`` (summed) w.r.t. ``inputs``."""
        if self.implicit:
            raise RuntimeError("a pass in gradient x input form has modified gradients only; run another pass "
                               "for ordinary gradients")
        return self._backward(False, output, inputs, retain_graph)

    def relevance(self, output: Tensor, inputs: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor]:
        """LRP relevance at ``inputs``, starting from relevance 1.0 at each entry of ``output``
        (in gradient x input form: each input times its modified gradient)."""
        if self.implicit:
            grads = self._backward(False, output, inputs, retain_graph)
            return [x.detach() * g for x, g in zip(inputs, grads)]
        return self._backward(True, output, inputs, retain_graph)

    def _backward(self, relevance: bool, output: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> list[Tensor]:
        self.relevance_mode = relevance
        try:
            grads = torch.autograd.grad(
                output, list(inputs), torch.ones_like(output), retain_graph=retain_graph, allow_unused=True
            )
        finally:
            self.relevance_mode = False
        return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


@contextlib.contextmanager
def _suspended(propagation: Propagation) -> Iterator[None]:
    propagation.suspended += 1
    try:
        yield
    finally:
        propagation.suspended -= 1


def _vjp(fn: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor, propagation: Propagation) -> Tensor:
    """The chain rule through ``fn`` at ``x``, recomputing ``fn`` (cheap elementwise ops)."""
    with torch.enable_grad(), _suspended(propagation):
        leaf = x.detach().requires_grad_()
        (result,) = torch.autograd.grad(fn(leaf), leaf, grad)
    return result


def _keep_output(ctx: Any, output: Tensor) -> None:
    """Keep ``output``'s values for the backward without freezing it: a later in-place write on it
    (a model scaling its attention scores with ``/=``) shows in its version counter, which the
    detached alias shares, and the backward then recomputes the values from the saved inputs."""
    ctx.output, ctx.output_version = output.detach(), output._version


def _kept_output(ctx: Any, recompute: Callable[[], Tensor]) -> Tensor:
    return ctx.output if ctx.output._version == ctx.output_version else recompute()


def _recomputed(fn: Callable[[Tensor], Tensor], x: Tensor, propagation: "Propagation") -> Tensor:
    with torch.no_grad(), _suspended(propagation):
        return fn(x)


class _Linear(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, rule, propagation):  # type: ignore[override]
        output = F.linear(x, weight, bias)  # for addmm(b, x, W): weight = W.t(), a view
        ctx.save_for_backward(x, weight, bias)
        _keep_output(ctx, output)
        ctx.rule, ctx.propagation = rule, propagation
        return output

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        output = _kept_output(ctx, lambda: F.linear(x, weight, bias))
        shape = x.shape
        # a gradient found dense says the relevance will be too: skip the look (working on
        # every row is always right, only slower)
        rows = None if getattr(ctx, "dense", False) else _live_rows(grad)
        ctx.dense = rows is None
        if rows is not None:  # e.g. above a pooler that reads [CLS] only: work on those rows
            x, output, grad = (t.reshape(-1, t.shape[-1])[rows] for t in (x, output, grad))
        if ctx.propagation.relevance_mode:
            result = ctx.rule.relevance(x, weight, bias, output, grad).to(x.dtype)
        else:
            result = grad.matmul(weight.to(grad.dtype)).to(x.dtype)
        if rows is not None:
            full = result.new_zeros(shape.numel() // shape[-1], shape[-1])
            result = full.index_copy_(0, rows, result).reshape(shape)
        return result, None, None, None, None


def _live_rows(grad: Tensor) -> Tensor | None:
    """Indices of the rows (all leading dimensions flattened) of ``grad`` that are not all
    zero, when they are at most half of them; None otherwise (use the whole tensor).

    Linear rules and the chain rule work row by row and give 0 for a zero row, so only
    the live rows need the weight-sized products.
    """
    lead = grad.shape[:-1]
    if lead.numel() < 2:
        return None
    # a cheap look at 16 scattered rows first: mostly live means use the whole tensor
    # (a row is live when the sum of its absolute values is not 0)
    flat_index, index = _sample_rows(tuple(lead), grad.device)
    sample = grad.reshape(-1, grad.shape[-1]).index_select(0, flat_index) if grad.is_contiguous() else grad[index]
    if 2 * int(torch.count_nonzero(torch.linalg.vector_norm(sample, 1, dim=-1))) > _SAMPLE:
        return None
    live = torch.linalg.vector_norm(grad.reshape(-1, grad.shape[-1]), 1, dim=-1)  # no tensor of grad's size
    rows = live.nonzero()[:, 0]
    return None if 2 * rows.shape[0] > live.shape[0] else rows


_SAMPLE = 16


@functools.lru_cache(maxsize=64)
def _sample_rows(lead: tuple[int, ...], device: torch.device) -> tuple[Tensor, tuple[Tensor, ...]]:
    """16 rows spread over a tensor with leading dimensions ``lead`` (a prime stride, so
    that they do not fall on the same position of every example), as flat indices and as
    one index per dimension."""
    flat = torch.arange(1, _SAMPLE + 1, device=device) * 7919 % math.prod(lead)
    return flat, torch.unravel_index(flat, lead)


class _Elementwise(Function):
    """An operation of one relevance-carrying tensor ``x``: its output ``y`` passes
    through. With gradients kept, ``y`` was computed from ``x`` with its own graph,
    which the chain rule follows; relevance goes to ``x`` by the elementwise rule."""

    @staticmethod
    def forward(ctx, x, y, fn, propagation):  # type: ignore[override]
        ctx.fn, ctx.propagation, ctx.has_graph = fn, propagation, y.requires_grad
        ctx.save_for_backward(x)
        output = y.detach()
        _keep_output(ctx, output)
        return output

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if ctx.propagation.relevance_mode:
            y = _kept_output(ctx, lambda: _recomputed(ctx.fn, x, ctx.propagation))
            return ctx.propagation.rules.elementwise.relevance(x, y, grad).to(x.dtype), None, None, None
        if ctx.has_graph:
            return None, grad, None, None
        return _vjp(ctx.fn, x, grad, ctx.propagation).to(x.dtype), None, None, None


def elementwise(x: Tensor, fn: Callable[[Tensor], Tensor], propagation: Propagation, own_gradient: bool = False
                ) -> Tensor:
    """``fn(x)`` as one elementwise operation of the relevance-carrying ``x`` (``fn`` may run
    several torch operations): the chain rule for gradients, the elementwise rule for relevance.
    In gradient x input form (``propagation.implicit``) the identity rule, unless ``own_gradient``:
    operations whose own gradient is their rule there (scaling by a constant, negation, softmax)."""
    if propagation.implicit:
        with _suspended(propagation):
            if own_gradient:
                return fn(x)
            with torch.no_grad():
                y = fn(x)
        return _IdentityImplicit.apply(x, y)
    with _suspended(propagation):
        if propagation.keep_gradients:  # ``fn``'s own graph gives the chain rule
            y = fn(x)
        else:
            with torch.no_grad():
                y = fn(x)
    return _Elementwise.apply(x, y, fn, propagation)


class _IdentityImplicit(Function):
    """``y = f(x)`` whose gradient is ``y / x`` (0 where ``x`` is 0): gradient x input then hands each
    entry the relevance of its output, AttnLRP's identity rule for elementwise non-linearities."""

    @staticmethod
    def forward(ctx, x, y):  # type: ignore[override]
        ctx.save_for_backward(x)
        output = y.detach()
        _keep_output(ctx, output)
        return output

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if ctx.output._version != ctx.output_version:
            raise RuntimeError("the output of an elementwise operation was changed in place before the backward")
        wide = torch.promote_types(x.dtype, torch.float32)
        # y / x, and 0 where x is 0 (0 / 0 and y / 0 are not finite)
        ratio = torch.nan_to_num_(ctx.output.to(wide) / x.to(wide), nan=0.0, posinf=0.0, neginf=0.0)
        return ratio.mul_(grad).to(x.dtype), None


class _Halved(Function):
    """The identity, whose gradient is halved: the operand of a product of two relevance-carrying
    tensors in gradient x input form (AttnLRP's uniform rule: each operand receives half)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad * 0.5


class _CenteredNorm(Function):
    """LayerNorm whose standard deviation is a constant for the gradient: in gradient x input form
    the normalisation passes relevance by the identity rule and the centring and the affine map as
    linear layers, as AttnLRP's reference code computes it."""

    @staticmethod
    def forward(ctx, x, y, inverse_std, dims, weight):  # type: ignore[override]
        ctx.save_for_backward(inverse_std, weight)
        ctx.dims = dims
        return y.detach()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        inverse_std, weight = ctx.saved_tensors
        scaled = grad if weight is None else grad * weight
        return (scaled - scaled.mean(ctx.dims, keepdim=True)).mul_(inverse_std), None, None, None, None


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, rule: Any, propagation: Propagation) -> Tensor:
    """``x W^T + b`` by the linear rule, or with its own gradient in gradient x input form."""
    if propagation.implicit:
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias, rule, propagation)


def _add(a: Tensor, b: Tensor, propagation: Propagation) -> Tensor:
    """``a + b`` of two relevance-carrying tensors by the add rule (own gradient in gradient x input form)."""
    return torch.add(a, b) if propagation.implicit else _Add.apply(a, b, propagation)


def _product(a: Tensor, b: Tensor, propagation: Propagation, elementwise: bool = False) -> Tensor:
    """``a @ b`` (``a * b`` if ``elementwise``) by the product rule; in gradient x input form each
    relevance-carrying operand's gradient halved when both carry (one constant operand: a linear map)."""
    if not propagation.implicit:
        return _Product.apply(a, b, propagation, elementwise)
    if _carries(a) and _carries(b):
        a, b = _Halved.apply(a), _Halved.apply(b)
    return torch.mul(a, b) if elementwise else torch.matmul(a, b)


class _Add(Function):
    @staticmethod
    def forward(ctx, a, b, propagation):  # type: ignore[override]
        output = torch.add(a, b)
        ctx.save_for_backward(a, b)
        _keep_output(ctx, output)
        ctx.propagation = propagation
        return output

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a, b = ctx.saved_tensors
        if ctx.propagation.relevance_mode:
            output = _kept_output(ctx, lambda: torch.add(a, b))
            ra, rb = ctx.propagation.rules.add.relevance(a, b, output, grad)
        else:
            ra, rb = grad.sum_to_size(a.shape), grad.sum_to_size(b.shape)
        return ra.to(a.dtype), rb.to(b.dtype), None


class _Product(Function):
    """``a @ b`` (``elementwise=False``) or ``a * b`` (broadcasting) of two relevance-carrying tensors."""

    @staticmethod
    def forward(ctx, a, b, propagation, elementwise=False):  # type: ignore[override]
        # one operand constant (a pooling head's learned query): the other receives all the relevance
        ctx.one_sided = not (_carries(a) and _carries(b))
        ctx.multiply = torch.mul if elementwise else torch.matmul
        output = ctx.multiply(a, b)
        ctx.save_for_backward(a, b)
        _keep_output(ctx, output)
        ctx.propagation, ctx.elementwise = propagation, elementwise
        return output

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a, b = ctx.saved_tensors
        if ctx.propagation.relevance_mode:
            output = _kept_output(ctx, lambda: ctx.multiply(a, b))
            if ctx.elementwise:
                ra, rb = ctx.propagation.rules.product.elementwise_relevance(a, b, output, grad)
            elif ctx.one_sided:  # the z-rule to the relevance-carrying operand alone
                rule = ctx.propagation.rules.product
                ra, rb = (r / rule.share if rule.share else r for r in rule.relevance(a, b, output, grad))
            else:  # looked up now, so a rule given to ``a`` after the product ran (an attention
                # module's output read by a forward hook) applies too
                ra, rb = ctx.propagation.product_rule(a).relevance(a, b, output, grad)
        elif ctx.elementwise:
            ra, rb = (grad * b).sum_to_size(a.shape), (grad * a).sum_to_size(b.shape)
        else:
            ra = (grad @ b.transpose(-1, -2).to(grad.dtype)).sum_to_size(a.shape)
            rb = (a.transpose(-1, -2).to(grad.dtype) @ grad).sum_to_size(b.shape)
        return ra.to(a.dtype), rb.to(b.dtype), None, None


def _carries(value: Any) -> bool:
    """Whether ``value`` carries relevance: a tensor computed in the pass from the explained
    input (which requires grad). Parameters never do, frozen or not."""
    return isinstance(value, Tensor) and value.requires_grad and not isinstance(value, torch.nn.Parameter)


Handler = Callable[[Propagation, Any, tuple, dict], Any]

#: operation -> how the engine runs it when relevance-carrying tensors may be among its arguments;
#: an operation missing here raises when it meets one (see :func:`register_operation`)
OPERATIONS: dict[Any, Handler] = {}


def register_operation(*funcs: Any) -> Callable[[Handler], Handler]:
    """Decorator making ``handler(propagation, func, args, kwargs) -> output`` run each of ``funcs``
    (torch functions or ``Tensor`` methods) during an LRP pass: adding a rule for a new operation
    is one entry. A handler returns the output, built from the engine's autograd functions
    where relevance must take another path than the gradient.

    Example::

        >>> @register_operation(torch.neg, Tensor.neg, Tensor.__neg__)
        ... def negation(propagation, func, args, kwargs):
        ...     return elementwise(args[0], func, propagation)
    """
    def register(handler: Handler) -> Handler:
        for func in funcs:
            OPERATIONS[func] = handler
        return handler

    return register


def _moves(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """Views, indexing, copies, casts, concatenation: their own backward moves relevance as it
    moves values (a tensor used twice receives the sum of the relevance of both uses). A reshaped
    relevance-carrying tensor remembers what it was made from, so that a product rule given to the
    original (attention probabilities a model returns after multiplying a reshaped copy) applies."""
    output = func(*args, **kwargs)
    if not propagation.follow_copies:
        return output
    source = args[0] if args else None
    if isinstance(output, Tensor) and isinstance(source, Tensor) and output.requires_grad and output is not source:
        propagation.made_from[id(output)] = (weakref.ref(output), weakref.ref(source))
    return output


register_operation(
    Tensor.view, Tensor.view_as, Tensor.reshape, Tensor.reshape_as, torch.reshape, Tensor.transpose,
    torch.transpose, Tensor.permute, torch.permute, Tensor.contiguous, Tensor.__getitem__, Tensor.select,
    torch.select, Tensor.narrow, torch.narrow, Tensor.unsqueeze, torch.unsqueeze, Tensor.squeeze,
    torch.squeeze, Tensor.flatten, torch.flatten, Tensor.unflatten, Tensor.expand, Tensor.expand_as,
    Tensor.repeat_interleave, torch.repeat_interleave, Tensor.clone, torch.clone, Tensor.to, Tensor.type,
    Tensor.float, Tensor.double, Tensor.half, Tensor.bfloat16, Tensor.split, torch.split, Tensor.chunk,
    torch.chunk, Tensor.unbind, torch.unbind, torch.cat, torch.concat, torch.stack, Tensor.detach,
    Tensor.requires_grad_, Tensor.t, Tensor.movedim, torch.movedim, Tensor.__setitem__, Tensor.masked_fill,
    Tensor.index_select, torch.index_select, Tensor.gather, torch.gather, torch.where, Tensor.where, F.unfold,
    F.pad,
)(_moves)


@register_operation(F.linear)
def _linear_layer(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``x W^T + b`` with relevance in ``x``: the linear rule (every ``nn.Linear``)."""
    x = args[0]
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not _carries(x):
        return func(*args, **kwargs)
    return _linear(x, weight, bias, propagation.rules.linear_rule_for(weight), propagation)


@register_operation(F.conv1d, torch.conv1d)
def _convolution(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """A 1-d convolution of a relevance-carrying input with constant weights (ConvBERT's separable
    convolutions): a linear layer applied to every window of the input, so the linear rule applies
    (groups as a block-diagonal weight); overlapping windows give each input position the sum of
    its shares."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    values = {**dict(zip(names, args)), **kwargs}
    x, weight, bias = values["input"], values["weight"], values.get("bias")
    stride, padding, dilation, groups = (values.get(n, d) for n, d in (("stride", 1), ("padding", 0),
                                                                         ("dilation", 1), ("groups", 1)))
    stride, padding, dilation = (v[0] if isinstance(v, (list, tuple)) else v for v in (stride, padding, dilation))
    if not _carries(x) or _carries(weight) or _carries(bias) or isinstance(padding, str) or x.dim() != 3:
        return _refuse_or_run(propagation, func, args, kwargs)
    out_channels, per_group, width = weight.shape
    # (batch, channels * width, positions): every window of the input, as F.unfold lays it out
    windows = F.unfold(x.unsqueeze(-1), (width, 1), dilation=(dilation, 1), padding=(padding, 0), stride=(stride, 1))
    dense = weight.new_zeros(out_channels, x.shape[1] * width)
    outputs_per_group = out_channels // groups
    for g in range(groups):
        rows, columns = slice(g * outputs_per_group, (g + 1) * outputs_per_group), slice(
            g * per_group * width, (g + 1) * per_group * width)
        dense[rows, columns] = weight[rows].reshape(outputs_per_group, per_group * width)
    rule = propagation.rules.linear_rule_for(weight)
    return _linear(windows.transpose(1, 2), dense, bias, rule, propagation).transpose(1, 2)


@register_operation(torch.addmm, Tensor.addmm)
def _addmm_layer(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``input + mat1 @ mat2`` with relevance in ``mat1``: GPT-2's ``Conv1D``, a linear layer."""
    if not _carries(args[1] if len(args) > 1 else kwargs.get("mat1")):
        return _refuse_or_run(propagation, func, args, kwargs)
    return _addmm(propagation, *args, **kwargs)


@register_operation(
    F.layer_norm, torch.layer_norm, F.rms_norm, F.gelu, F.relu, torch.relu, Tensor.relu, F.silu, torch.tanh,
    Tensor.tanh, F.tanh, torch.softmax, Tensor.softmax, F.softmax, F.dropout,
    torch.neg, Tensor.neg, Tensor.__neg__, torch.erf, Tensor.erf, torch.sigmoid, Tensor.sigmoid, F.sigmoid,
    torch.clamp, Tensor.clamp, torch.clip, Tensor.clip,
)
def _one_tensor(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """An operation of one relevance-carrying tensor (normalisation, activation, softmax, dropout,
    negation as in rotary embeddings' ``rotate_half``, ``erf`` in a GELU written out, ``sigmoid``,
    ``clamp`` with constant bounds as gpt-oss's experts clip): the elementwise
    rule. A GELU written as ``x * 0.5 * (1 + erf(x / sqrt(2)))`` thus hands each entry of ``x`` the
    relevance of its output (half through each factor), as the GELU module would."""
    if func is F.dropout and not (args[2] if len(args) > 2 else kwargs.get("training", True)):
        return func(*args, **kwargs)  # identity in eval mode: nothing to intercept
    if args and _carries(args[0]):
        rest = args[1:]
        if any(_carries(v) for v in _flat(rest, kwargs)):  # e.g. clamp to a relevance-carrying bound
            raise NotImplementedError(_no_rule(func, "relevance-carrying arguments besides its input"))
        if propagation.implicit and func in (F.layer_norm, torch.layer_norm):
            return _centered_norm(propagation, func, args, kwargs)
        return elementwise(args[0], lambda x: func(x, *rest, **kwargs), propagation,
                           own_gradient=func in _OWN_GRADIENT)
    return _refuse_or_run(propagation, func, args, kwargs)


#: one-tensor operations whose own gradient is their rule in gradient x input form: softmax (AttnLRP's
#: softmax rule), dropout, negation
_OWN_GRADIENT = {torch.softmax, Tensor.softmax, F.softmax, F.dropout, torch.neg, Tensor.neg, Tensor.__neg__}


def _centered_norm(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Tensor:
    """``F.layer_norm`` in gradient x input form (see :class:`_CenteredNorm`): the output and the
    inverse standard deviation from the same kernel (``torch.native_layer_norm``)."""
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    values = {**dict(zip(names, args)), **kwargs}
    x, shape = values["input"], values["normalized_shape"]
    shape = [shape] if isinstance(shape, int) else list(shape)
    weight, bias, eps = values.get("weight"), values.get("bias"), values.get("eps", 1e-5)
    with _suspended(propagation), torch.no_grad():
        y, _, inverse_std = torch.native_layer_norm(x, shape, weight, bias, eps)
    return _CenteredNorm.apply(x, y, inverse_std, tuple(range(-len(shape), 0)), weight)


def _operands(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    return args[0], args[1] if len(args) > 1 else kwargs.get("other")


@register_operation(torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__)
def _sum(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``a + b``: the add rule when both carry relevance (residual connections); plus a constant,
    the chain rule passes relevance unchanged."""
    a, b = _operands(args, kwargs)
    if _carries(a) and _carries(b):
        if "alpha" in kwargs or kwargs.get("out") is not None:
            raise NotImplementedError(_no_rule(func, "two relevance-carrying operands and `alpha`/`out`"))
        return _add(a, b, propagation)
    return func(*args, **kwargs)


@register_operation(torch.sub, Tensor.sub, Tensor.__sub__, Tensor.__rsub__, torch.rsub, torch.subtract,
                    Tensor.subtract)
def _difference(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``a - b`` as ``a + (-b)``: the add rule when both carry relevance (gpt-oss's rotary
    embeddings), negation passing relevance unchanged; minus a constant passes it unchanged."""
    a, b = _operands(args, kwargs)
    if func in (Tensor.__rsub__, torch.rsub):  # other - self
        a, b = b, a
    carry_a, carry_b = _carries(a), _carries(b)
    if "alpha" in kwargs or kwargs.get("out") is not None:
        if carry_a or carry_b:
            raise NotImplementedError(_no_rule(func, "relevance-carrying operands and `alpha`/`out`"))
        return func(*args, **kwargs)
    if carry_b:
        negated = elementwise(b, torch.neg, propagation, own_gradient=True)
        return _add(a, negated, propagation) if carry_a else negated + a
    return func(*args, **kwargs)  # minus a constant (or nothing carrying): the chain rule passes it on


_DIVISIONS = (torch.div, Tensor.div, Tensor.__truediv__, torch.divide, Tensor.divide)


@register_operation(torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, torch.multiply, Tensor.multiply,
                    *_DIVISIONS)
def _scaling(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``a * b`` or ``a / b``. By a constant: the elementwise rule (relevance passes through).
    Two relevance-carrying factors (the gated MLP's ``act(gate(x)) * up(x)``): the product rule
    elementwise, which gives each factor half of the relevance (the halved z-rule of the reference
    code, and AttnLRP's uniform rule)."""
    a, b = _operands(args, kwargs)
    carry_a, carry_b = _carries(a), _carries(b)
    if carry_a and carry_b and func not in _DIVISIONS and kwargs.get("out") is None:
        # an expert's output times its routing weight: the weight is a constant for relevance (the
        # router hands no relevance on), and its gradient is kept
        if propagation.is_routing(b):
            return elementwise(a, lambda t: func(t, b.detach() if propagation.implicit else b), propagation, True)
        if propagation.is_routing(a):
            return elementwise(b, lambda t: func(a.detach() if propagation.implicit else a, t), propagation, True)
    if carry_a and carry_b:
        if func in _DIVISIONS or kwargs.get("out") is not None:
            raise NotImplementedError(_no_rule(func, "two relevance-carrying operands"))
        return _product(a, b, propagation, elementwise=True)
    if carry_b and func in _DIVISIONS:
        raise NotImplementedError(_no_rule(func, "a relevance-carrying divisor"))
    if carry_a or carry_b:
        x, constant = (a, b) if carry_a else (b, a)
        extra = {k: v for k, v in kwargs.items() if k != "other"}
        op = (lambda t: func(t, constant, **extra)) if carry_a else (lambda t: func(constant, t, **extra))
        return elementwise(x, op, propagation, own_gradient=True)
    return func(*args, **kwargs)


@register_operation(torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm)
def _matrix_product(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``a @ b`` of two relevance-carrying tensors (``Q K^T``, ``A V``): the product rule."""
    a, b = _operands(args, kwargs)
    carry_a, carry_b = _carries(a), _carries(b)
    if carry_a and carry_b and a.dim() >= 2 and b.dim() >= 2:
        return _product(a, b, propagation)
    if carry_a and not carry_b and isinstance(b, Tensor) and b.dim() == 2 and func in (torch.matmul, Tensor.matmul,
                                                                                        Tensor.__matmul__):
        # ``x @ W.T`` (Falcon's linear layers): a linear layer whose weight is ``W``
        weight = _weight_of(b, propagation)
        return _linear(a, weight, None, propagation.rules.linear_rule_for(weight), propagation)
    if carry_a or carry_b:
        raise NotImplementedError(_no_rule(func, "relevance-carrying operands"))
    return func(*args, **kwargs)


@register_operation(torch.baddbmm, Tensor.baddbmm)
def _product_plus_constant(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``beta * input + alpha * (batch1 @ batch2)`` with a constant ``input`` (BLOOM's ALiBi
    scores): the product rule, then scaling and a constant, which pass relevance unchanged."""
    names = ("input", "batch1", "batch2")
    values = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if _carries(values["input"]) or not (_carries(values["batch1"]) and _carries(values["batch2"])) or \
            len(args) > 3 or kwargs.get("out") is not None:
        return _refuse_or_run(propagation, func, args, kwargs)
    product = _product(values["batch1"], values["batch2"], propagation)
    if alpha != 1:
        product = elementwise(product, lambda t: t * alpha, propagation, own_gradient=True)
    return product + beta * values["input"]  # plain autograd here: a constant passes relevance on


@register_operation(torch.mean, Tensor.mean)
def _average(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """A mean over one dimension of a relevance-carrying tensor (BEiT's and DINOv2's mean over
    patch tokens): a linear layer whose weights are all ``1 / n``, so the linear rule applies."""
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    extra = set(kwargs) - {"dim", "keepdim"}
    if not _carries(x) or isinstance(dim, (list, tuple)) and len(dim) != 1 or dim is None or extra or len(args) > 3:
        return _refuse_or_run(propagation, func, args, kwargs)
    dim = (dim[0] if isinstance(dim, (list, tuple)) else dim) % x.dim()
    moved = x.movedim(dim, -1)
    weight = torch.full((1, x.shape[dim]), 1.0 / x.shape[dim], dtype=x.dtype, device=x.device)
    averaged = _linear(moved, weight, None, propagation.rules.linear, propagation).squeeze(-1)
    return averaged.unsqueeze(dim) if keepdim else averaged


_MHA_ARGUMENTS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                  "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
                  "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
                  "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


@register_operation(F.multi_head_attention_forward)
def _multi_head_attention(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``nn.MultiheadAttention`` (SigLIP's pooling head) written out with the engine's rules: its
    projections are linear layers, ``Q K^T`` and ``A V`` products (a constant learned query's product
    hands all the relevance to the keys), softmax elementwise. Masks, added key/value biases and
    separate projection weights are refused."""
    values = {**dict(zip(_MHA_ARGUMENTS, args)), **kwargs}
    query, key, value = values["query"], values["key"], values["value"]
    if not any(_carries(t) for t in (query, key, value)):
        return func(*args, **kwargs)
    unsupported = [name for name in ("bias_k", "bias_v", "key_padding_mask", "attn_mask", "static_k", "static_v")
                   if values.get(name) is not None]
    unsupported += [name for name in ("add_zero_attn", "use_separate_proj_weight", "is_causal") if values.get(name)]
    if values.get("training") and values.get("dropout_p"):
        unsupported.append("dropout_p")
    if unsupported or query.dim() != 3:
        raise NotImplementedError(_no_rule(func, "relevance-carrying inputs and " + (
            ", ".join(f"`{n}`" for n in unsupported) or "unbatched inputs")))
    heads, width = values["num_heads"], query.shape[-1]
    weights = values["in_proj_weight"].chunk(3)
    biases = values["in_proj_bias"].chunk(3) if values["in_proj_bias"] is not None else (None, None, None)

    def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _linear_layer(propagation, F.linear, (x, weight, bias), {})

    def by_head(t: Tensor) -> Tensor:  # (length, batch, width) -> (batch * heads, length, width / heads)
        return t.reshape(t.shape[0], t.shape[1] * heads, width // heads).transpose(0, 1)

    def product(a: Tensor, b: Tensor) -> Tensor:
        return _product(a, b, propagation) if _carries(a) or _carries(b) else torch.bmm(a, b)

    q, k, v = (by_head(linear(t, w, b)) for t, w, b in zip((query, key, value), weights, biases))
    scale = (width // heads) ** -0.5
    q = elementwise(q, lambda t: t * scale, propagation, own_gradient=True) if _carries(q) else q * scale
    scores = product(q, k.transpose(1, 2))
    probs = elementwise(scores, lambda t: torch.softmax(t, dim=-1), propagation, own_gradient=True) \
        if _carries(scores) else \
        torch.softmax(scores, dim=-1)
    merged = product(probs, v).transpose(0, 1).reshape(query.shape[0], query.shape[1], width)
    output = linear(merged, values["out_proj_weight"], values["out_proj_bias"])
    if not values.get("need_weights", True):
        return output, None
    per_head = probs.reshape(query.shape[1], heads, query.shape[0], key.shape[0])
    return output, per_head.mean(1) if values.get("average_attn_weights", True) else per_head


def _weight_of(matrix: Tensor, propagation: Propagation) -> Tensor:
    """The ``(out, in)`` weight of ``x @ matrix``: the parameter itself when ``matrix`` is its
    transpose (so rules cache it, and ``LRPRules(modules=...)`` finds it), else a transposed view."""
    base = matrix._base
    if isinstance(base, torch.nn.Parameter) and base.dim() == 2 and matrix.shape == base.shape[::-1] and \
            matrix.stride() == base.stride()[::-1] and matrix.storage_offset() == base.storage_offset():
        return base
    return propagation.transposed(matrix)


def _written_in_place(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """An in-place write with relevance-carrying operands (``scores /= sqrt(d)`` in Falcon,
    ``scores += bias`` in MPNet): the operation out of place on a copy of the target, by its own
    rule, then copied into the target, whose history becomes the result's (rules that saved the
    target's old values see the write and recompute them)."""
    name = getattr(func, "__name__", "")
    plain = getattr(Tensor, name[:-1], None) if name.endswith("_") else None
    handler = OPERATIONS.get(plain)
    target = args[0] if args else None
    if handler is None or not isinstance(target, Tensor) or not target.is_floating_point():
        raise NotImplementedError(
            f"`{_name(func)}` changes a relevance-carrying tensor in place and the LRP engine has no rule for "
            f"its out-of-place form; write the model's code out of place (e.g. `y = y + x`, `inplace=False`)"
        )
    result = handler(propagation, plain, (target.clone(), *args[1:]), kwargs)
    try:
        return target.copy_(result)
    except RuntimeError as error:  # autograd forbids writing into a view a rule's function returned
        if "modified inplace" not in str(error):
            raise
        raise NotImplementedError(
            f"`{_name(func)}` changes the output of a linear layer in place, which autograd forbids for the "
            "engine's rules; write the model's code out of place (e.g. `y = y + x`)"
        ) from error


def _refuse_or_run(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """Run ``func``; raise, naming it, if relevance-carrying inputs give relevance-carrying outputs."""
    output = func(*args, **kwargs)
    # property reads (``.T``, ``.mT``) are views, like the operations that move values
    property_read = getattr(func, "__name__", "") == "__get__"
    carried = any(_carries(o) for o in _flat((output,), {}))  # tuple outputs too (max, sort, std_mean)
    if carried and not property_read and any(_carries(v) for v in _flat(args, kwargs)):
        raise NotImplementedError(_no_rule(func, "relevance-carrying inputs"))
    return output


class _LRPMode(TorchFunctionMode):
    def __init__(self, propagation: Propagation) -> None:
        super().__init__()
        self.propagation = propagation

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        propagation = self.propagation
        if propagation.suspended or not propagation.started:
            return func(*args, **kwargs)
        handler = OPERATIONS.get(func)
        if handler is _moves:
            return _moves(propagation, func, args, kwargs)
        if func in _ACCUMULATING:
            return _accumulate(propagation, func, args, kwargs)
        if _in_place(func) and any(_carries(v) for v in _flat(args, kwargs)):
            return _written_in_place(propagation, func, args, kwargs)
        if not torch.is_grad_enabled():
            output = func(*args, **kwargs)
            if any(isinstance(o, Tensor) and o.is_floating_point() for o in _flat((output,), {})) and \
                    any(_carries(v) for v in _flat(args, kwargs)):
                raise NotImplementedError(
                    f"`{_name(func)}` runs under torch.no_grad() on a relevance-carrying tensor: its result "
                    "would be a constant and the relevance through it lost; the model's forward must not "
                    "disable gradients between the explained input and the output"
                )
            return output
        return (handler or _refuse_or_run)(propagation, func, args, kwargs)


def _addmm(propagation: Propagation, input: Any, mat1: Tensor, mat2: Any, *, beta: float = 1, alpha: float = 1
           ) -> Tensor:
    """``input + mat1 @ mat2`` with relevance in ``mat1``: GPT-2's ``Conv1D``, a linear layer."""
    if beta != 1 or alpha != 1 or _carries(input) or _carries(mat2):
        raise NotImplementedError(_no_rule(torch.addmm, "a relevance-carrying operand other than mat1, or scaling"))
    rule = propagation.rules.linear_rule_for(mat2)
    return _linear(mat1, propagation.transposed(mat2), input, rule, propagation)


#: adding rows into a tensor (mixture-of-experts layers gather their experts' outputs so)
_ACCUMULATING = {Tensor.index_add_, Tensor.index_add, torch.index_add}


def _accumulate(propagation: Propagation, func: Any, args: tuple, kwargs: dict) -> Any:
    """``target.index_add_(dim, index, source)``: the rows of ``source`` moved to ``index`` (each row
    at most once), then added to ``target`` by the add rule when both carry relevance (a token's
    second expert added to its first); in place, ``target`` takes the sum's history."""
    names = ("input", "dim", "index", "source")
    values = {**dict(zip(names, args)), **kwargs}
    target, dim, index, source = (values.get(n) for n in names)
    if set(values) - set(names) - {"alpha"} or values.get("alpha", 1) != 1 or not _carries(source):
        return _refuse_or_run(propagation, func, args, kwargs) if func is not Tensor.index_add_ else \
            func(*args, **kwargs)
    if torch.unique(index).numel() != index.numel():
        raise NotImplementedError(_no_rule(func, "an index naming a row twice"))
    scattered = torch.zeros_like(target, dtype=source.dtype).index_add(dim, index, source)
    total = _add(target.clone(), scattered, propagation) if _carries(target) else scattered + target
    if func is Tensor.index_add_:
        return target.copy_(total)  # ``target``'s history becomes the sum's
    return total


_IN_PLACE_OPERATORS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__", "__imatmul__"}


@functools.lru_cache(maxsize=None)
def _in_place(func: Any) -> bool:
    """Whether ``func`` writes into its first argument (``add_``, ``masked_fill_``, ``+=``, ...);
    asked for every operation of a pass, so the answer is kept per function."""
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.startswith("_")) or name in _IN_PLACE_OPERATORS


def _name(func: Any) -> str:
    try:
        return torch.overrides.resolve_name(func) or repr(func)
    except Exception:  # pragma: no cover - resolve_name knows every torch function
        return repr(func)


def _flat(args: tuple, kwargs: dict) -> Iterator[Any]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value


def _no_rule(func: Any, what: str) -> str:
    return (
        f"the LRP engine has no rule for `{_name(func)}` with {what}; the model computes something "
        "other than linear layers, normalisations, activations, residual sums and attention "
        "products between the explained input and the output"
    )


def activation_modules(roots: Sequence[Module]) -> list[Module]:
    """The activation modules under ``roots``: torch's (``nn.GELU``, ``nn.ReLU``, ...), those of
    ``transformers.activations`` (e.g. GPT-2's tanh-GELU, written as several ops), and a model's own
    classes named as activations (BLOOM's ``BloomGelu``).

    Example::

        >>> [type(m).__name__ for m in activation_modules([gpt2])][:1]  # doctest: +SKIP
        ['NewGELUActivation']
    """
    return [module for root in roots for module in root.modules() if _is_activation(module)]


def _is_activation(module: Module) -> bool:
    kind = type(module)
    known = kind.__module__ in ("torch.nn.modules.activation", "transformers.activations")
    # a model's own activation class (BLOOM's ``BloomGelu``)
    named = kind.__module__.startswith("transformers.models.") and re.search(
        r"(gelu|silu|swish|relu|activation)$", kind.__name__.lower()) is not None
    return (known or named) and not isinstance(module, (torch.nn.MultiheadAttention, torch.nn.Softmax2d))


@contextlib.contextmanager
def _activations_made_during(propagation: Propagation, known: Sequence[Module]) -> Iterator[None]:
    """Activation modules created while the model runs (BigBird's head calls
    ``ACT2FN[name](x)``, a new module each time) are one elementwise operation too: global module
    hooks, acting only in this thread and on modules not patched already."""
    thread, patched, running = threading.get_ident(), {id(m) for m in known}, []

    def before(module: Module, args: tuple) -> None:
        if threading.get_ident() == thread and id(module) not in patched and len(args) == 1 and \
                _carries(args[0]) and not propagation.suspended and _is_activation(module):
            propagation.suspended += 1
            running.append((module, args[0]))

    def after(module: Module, args: tuple, output: Any) -> Any:
        if threading.get_ident() != thread or not running or running[-1][0] is not module:
            return None
        _, x = running.pop()
        propagation.suspended -= 1
        if not isinstance(output, Tensor):
            return None
        if propagation.implicit:
            return _IdentityImplicit.apply(x, output)
        return _Elementwise.apply(x, output, module.forward, propagation)

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(before),
               torch.nn.modules.module.register_module_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def normalization_modules(roots: Sequence[Module]) -> list[Module]:
    """The hand-written normalisation modules under ``roots``: classes named ``...Norm`` defined
    outside torch (Llama's ``LlamaRMSNorm``, T5's ``T5LayerNorm``, Cohere's LayerNorm), whose code
    computes the norm with ``pow``/``mean``/``rsqrt``. Each is one elementwise operation during an
    LRP pass (identity, like LayerNorm).

    Example::

        >>> {type(m).__name__ for m in normalization_modules([llama])}  # doctest: +SKIP
        {'LlamaRMSNorm'}
    """
    return [module for root in roots for module in root.modules() if _is_normalization(module)]


def _is_normalization(module: Module) -> bool:
    return type(module).__name__.endswith("Norm") and not type(module).__module__.startswith("torch.")


def routing_modules(roots: Sequence[Module]) -> list[Module]:
    """The routers of mixture-of-experts layers under ``roots`` (classes named ``...Router``, e.g.
    Mixtral's ``MixtralTopKRouter``). During an LRP pass a router runs as the model wrote it (top-k,
    softmax, sums: no rule needed) and its output weights are constants for relevance: an expert's
    output times its weight hands all its relevance to the expert, none to the router; gradients
    still flow through the weights.

    Example::

        >>> [type(m).__name__ for m in routing_modules([mixtral])][:1]  # doctest: +SKIP
        ['MixtralTopKRouter']
    """
    return [module for root in roots for module in root.modules() if _is_router(module)]


def _is_router(module: Module) -> bool:
    return type(module).__name__.endswith("Router")


def pass_modules(modules: Sequence[Module]) -> tuple[list[Module], list[Module]]:
    """Of ``modules`` (every module of a model, walked once): those that run as one elementwise
    operation (:func:`activation_modules`, then :func:`normalization_modules`) and the routers
    (:func:`routing_modules`), as :func:`lrp_forward` takes them.

    Example::

        >>> whole, routers = pass_modules(list(model.modules()))  # doctest: +SKIP
    """
    whole = [m for m in modules if _is_activation(m)] + [m for m in modules if _is_normalization(m)]
    return whole, [m for m in modules if _is_router(m)]


def _as_router(forward: Callable[..., Any], propagation: Propagation) -> Callable[..., Any]:
    def route(*args: Any, **kwargs: Any) -> Any:
        with _suspended(propagation):
            output = forward(*args, **kwargs)
        for value in _flat((output,), {}):
            if isinstance(value, Tensor) and value.is_floating_point() and value.requires_grad:
                propagation.routing[id(value)] = weakref.ref(value)
        return output

    return route


@contextlib.contextmanager
def lrp_forward(propagation: Propagation, activations: Sequence[Module] = (), start: Module | None = None,
                routers: Sequence[Module] = ()) -> Iterator[Propagation]:
    """Run a forward pass whose graph can be walked back for gradients or relevance.

    Tensors carrying relevance are those computed in the pass from the explained input,
    which must require grad; parameters never carry it. With ``start`` (the first transformer block), the engine
    looks at operations only from that module's call on: what comes before (embeddings,
    position tables) is a constant of the pass, whatever it requires. Each module of
    ``activations`` (see :func:`activation_modules`) is one elementwise operation, whatever
    operations its code uses; each of ``routers`` (see :func:`routing_modules`) gives routing weights.
    """
    replaced: list[tuple[Module, Any]] = []
    handle = None
    try:
        if start is not None:
            propagation.started = False

            def begin(module: Module, args: Any) -> None:
                propagation.started = True

            handle = start.register_forward_pre_hook(begin)
        for module in activations:
            replaced.append((module, module.__dict__.get("forward")))
            module.forward = _as_elementwise(module.forward, propagation, getattr(module, "inplace", False) is True)
        for module in routers:
            replaced.append((module, module.__dict__.get("forward")))
            module.forward = _as_router(module.forward, propagation)
        propagation.follow_copies = propagation.follow_copies or bool(routers)
        with _activations_made_during(propagation, activations), _LRPMode(propagation):
            yield propagation
    finally:
        if handle is not None:
            handle.remove()
        for module, own in reversed(replaced):
            if own is None:
                del module.forward
            else:
                module.forward = own
        propagation.suspended = 0
        propagation.started = True


def _as_elementwise(forward: Callable[..., Any], propagation: Propagation, in_place: bool = False
                    ) -> Callable[..., Any]:
    """``forward`` as one elementwise operation; an in-place module (``nn.ReLU(inplace=True)``)
    works on a copy, so the tensor the graph saved stays as it was."""
    def as_one_operation(x: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not _carries(x):
            return forward(x, *args, **kwargs)
        return elementwise(x, (lambda t: forward(t.clone())) if in_place else forward, propagation)

    return as_one_operation
