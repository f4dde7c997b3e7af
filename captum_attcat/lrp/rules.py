"""Relevance rules: how each kind of operation hands relevance to its inputs.

Layer-wise relevance propagation (LRP) starts with relevance 1.0 at the
explained logit and walks the network backwards; every operation splits the
relevance ``R`` of its output among its inputs by a rule. The rules below are
the ones of Chefer et al. (2021b), as DESIGN.md section 5 fixes them, and their
usual alternatives. Each is a small object, in the spirit of Captum's
``PropagationRule``; :class:`LRPRules` says which rule each kind of operation
uses, so a user can swap one, e.g. epsilon-LRP for every linear layer::

    >>> rules = LRPRules(linear=EpsilonRule(1e-6))
    >>> TransformerLRP(model, rules=rules)

or for one module only::

    >>> LRPRules(modules={model.classifier: EpsilonRule()})

Kinds of operation (the engine in :mod:`captum_attcat.lrp.engine` finds them):

- ``linear``: ``torch.nn.functional.linear`` (every ``nn.Linear``);
- ``elementwise``: operations of one relevance-carrying tensor: LayerNorm,
  GELU, ReLU, tanh, softmax, dropout, multiplication or division by a constant;
- ``add``: a sum of two relevance-carrying tensors (residual connections);
- ``product``: a product of two relevance-carrying tensors: matrix products
  (``Q K^T`` and ``A V`` in attention) and elementwise ones (the gate of a gated MLP,
  ``act(gate(x)) * up(x)`` in Llama-style models).

All relevance is computed in float32 (or wider) and returned in the input's dtype.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

#: the stabiliser of the reference code
STABILIZER = 1e-9


def safe_divide(numerator: Tensor, denominator: Tensor, stabilizer: float = STABILIZER,
                signed: bool = False) -> Tensor:
    """``numerator / (denominator + stabilizer)`` whatever the sign of the denominator, as
    the reference code divides, and exactly 0 where the denominator is 0 (or where the
    stabilised one is). ``signed=True`` stabilises away from zero instead,
    ``denominator ± stabilizer`` with the denominator's sign.

    Example::

        >>> safe_divide(torch.tensor([1.0, 1.0]), torch.tensor([0.0, -2.0]))
        tensor([ 0.0000, -0.5000])
    """
    if signed:
        stabilized = denominator.abs().add_(stabilizer).copysign_(denominator)
    else:
        stabilized = denominator + stabilizer
    zero = (denominator == 0) if signed else (denominator == 0) | (stabilized == 0)
    if numerator.shape == stabilized.shape and numerator.dtype == stabilized.dtype:
        quotient = torch.div(numerator, stabilized, out=stabilized)
    else:
        quotient = numerator / stabilized
    return quotient.masked_fill_(zero, 0)


def _c_memcmp() -> Callable[[int, int, int], int] | None:
    """The C library's ``memcmp`` (the fastest exact comparison of two CPU buffers), or None."""
    try:
        library = ctypes.CDLL(None) if sys.platform != "win32" else ctypes.cdll.msvcrt
        memcmp = library.memcmp
    except (OSError, AttributeError):  # pragma: no cover - every libc has memcmp
        return None
    memcmp.restype = ctypes.c_int
    memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return memcmp


_MEMCMP = _c_memcmp()


def _dense_span(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill ``numel * element_size`` bytes from its data pointer
    (contiguous, or a transposed contiguous matrix such as ``W.t()``)."""
    return tensor.is_contiguous() or (tensor.dim() == 2 and tensor.t().is_contiguous())


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bits (NaNs and signed zeros included), read once:
    on the CPU by the C library's ``memcmp`` of their buffers (NumPy's comparison of integer
    views for other layouts), elsewhere by ``torch.equal`` of integer views.

    Example::

        >>> same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
        False
    """
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if bits is None or a.is_complex():
        return torch.equal(a, b)
    if a.device.type == "cpu" and _MEMCMP is not None and a.stride() == b.stride() and _dense_span(a):
        return a.numel() == 0 or _MEMCMP(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0
    a, b = a.view(bits), b.view(bits)
    if a.device.type == "cpu":
        return bool(np.array_equal(a.numpy(), b.numpy()))
    return torch.equal(a, b)


_WIDE = (torch.float32, torch.float64)


def _wide(tensor: Tensor) -> Tensor:
    return tensor if tensor.dtype in _WIDE else tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _live_columns(relevance: Tensor) -> Tensor | None:
    """Indices of the output units (last dimension) of ``relevance`` that receive any, when at most
    half of them do (MaskLRP's masked heads hand nothing to their queries, keys and values); None
    otherwise. One row is looked at first: a row with most units live says the rest will be too."""
    flat = relevance.reshape(-1, relevance.shape[-1])
    units = flat.shape[-1]
    if flat.shape[0] == 0 or units < 2 or 2 * int(torch.count_nonzero(flat[0])) > units:
        return None
    live = flat.ne(0).any(0).nonzero()[:, 0]
    return None if 2 * live.shape[0] > units else live


class LinearRule:
    """How ``y = x W^T + b`` passes the relevance of ``y`` to ``x``.

    Rules work row by row (one token's features at a time) and give 0 to a row whose
    relevance is 0; the engine may hand them only the rows that receive relevance.
    """

    def relevance(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, relevance: Tensor) -> Tensor:
        """Relevance of ``x`` (same shape) given that of ``output``."""
        raise NotImplementedError


class AlphaBetaRule(LinearRule):
    r"""LRP-:math:`\alpha\beta` on sign-split inputs and weights, bias ignored.

    With :math:`z^+ = x^+ W^{+T} + x^- W^{-T}` (the positive contributions) and
    :math:`z^- = x^+ W^{-T} + x^- W^{+T}`,
    :math:`R_x = \alpha [x^+ (S^+ W^+) + x^- (S^+ W^-)] - \beta [x^+ (S^- W^-) + x^- (S^- W^+)]`,
    :math:`S^\pm = R / (z^\pm + \epsilon)` (``signed=True``: :math:`z^\pm \pm \epsilon`). The default
    :math:`\alpha = 1, \beta = 0` is the reference rule; it conserves relevance
    wherever :math:`z^+ \ne 0`. A unit without positive contributions
    (:math:`z^+ = 0`) passes nothing on: every product it would weigh is 0.

    The rule keeps ``2 [W+, W-]`` and ``|W|`` of each weight it has seen, with a copy of
    the weight: they are used only while the weight equals that copy bit for bit (so a
    weight changed in any way, through ``.data`` too, is always seen); they are freed with
    the rule (an explainer's), and those of a freed weight at the rule's next new weight.
    :math:`z^\pm` then costs one product more than the forward pass, since
    :math:`x W^T \pm |x| |W|^T = 2 z^\pm`, and :math:`(S W^+, S W^-)` one product:
    :math:`(S / 2) (2 W^\pm)` is the same float, as scaling by 2 is exact.

    Example::

        >>> AlphaBetaRule(alpha=2.0, beta=1.0)
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, stabilizer: float = STABILIZER,
                 signed: bool = False) -> None:
        if alpha - beta != 1:
            raise ValueError(f"alpha - beta must be 1 to conserve relevance; got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.stabilizer, self.signed = alpha, beta, stabilizer, signed
        self._splits: dict[int, tuple[weakref.ref, Tensor, tuple[Tensor, Tensor]]] = {}
        self._lock = threading.Lock()

    def _split(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``[2 W+, 2 W-]`` ``(out, 2 in)`` (contiguous, as the product wants it) and ``|W|`` ``(out, in)`` in float32 or wider, cached per
        weight tensor and recomputed whenever the weight's bits differ from the cached copy."""
        key = id(weight)
        with self._lock:
            cached = self._splits.get(key)
        values = weight.detach()
        if cached is not None and cached[0]() is weight and same_bits(values, cached[1]):
            return cached[2]
        wide = _wide(values)
        split = (torch.cat([wide.clamp(min=0).mul_(2), wide.clamp(max=0).mul_(2)], dim=1), wide.abs())
        with self._lock:  # entries of freed weights go now; the rest goes with the rule (nothing global holds it)
            for stale in [k for k, entry in self._splits.items() if entry[0]() is None]:
                del self._splits[stale]
            self._splits[key] = (weakref.ref(weight), values.clone(), split)
        return split

    def relevance(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, relevance: Tensor) -> Tensor:
        twice_signs, abs_w = self._split(weight)
        n = weight.shape[1]
        x, relevance, signed = _wide(x), _wide(relevance), _wide(output)
        bias = None if bias is None else _wide(bias)
        columns = _live_columns(relevance)
        if columns is not None:  # output units without relevance pass none on: leave them out
            twice_signs, abs_w = twice_signs.index_select(0, columns), abs_w.index_select(0, columns)
            relevance, signed = relevance.index_select(-1, columns), signed.index_select(-1, columns)
            bias = None if bias is None else bias.index_select(0, columns)
        magnitude = x.abs()
        # (factor, what x+ takes, what x- takes), from S / 2 = R / (2 z + 2 eps) (z- - eps if signed):
        # S+ W+ and S+ W- for alpha, S- W- and S- W+ for beta
        terms = []
        twice_eps = 2 * self.stabilizer
        if self.beta:
            # (x W^T + b) + (|x| |W|^T - b) = 2 z+  and  (x W^T + b) - (|x| |W|^T - b) - 2 b = 2 z-
            unsigned = F.linear(magnitude, abs_w, None if bias is None else -bias)
            twice_neg = (signed - unsigned - (0 if bias is None else 2 * bias)).clamp_(max=0)
            both = safe_divide(relevance, twice_neg, twice_eps, self.signed) @ twice_signs
            terms.append((-self.beta, both[..., n:], both[..., :n]))
            if self.alpha:
                twice_pos = unsigned.add_(signed).clamp_(min=0).add_(twice_eps)
        elif self.alpha:
            # max(2 z+, 0) + 2 eps = max(2 z+ + 2 eps, 2 eps), with 2 eps - b as the product's bias
            shift = signed.new_full(signed.shape[-1:], twice_eps) if bias is None else bias.neg().add_(twice_eps)
            twice_pos = F.linear(magnitude, abs_w, shift).add_(signed).clamp_(min=twice_eps)
        if self.alpha:
            both = torch.div(relevance, twice_pos, out=twice_pos) @ twice_signs
            terms.append((self.alpha, both[..., :n], both[..., n:]))
        if not terms:
            return torch.zeros_like(x)
        # x+ and x- in turn in |x|'s buffer
        pos_x = torch.clamp(x, min=0, out=magnitude)
        parts = [for_pos.mul_(pos_x) for _, for_pos, _ in terms]
        neg_x = torch.clamp(x, max=0, out=magnitude)
        result = None
        for (factor, _, for_neg), part in zip(terms, parts):
            part = part.addcmul_(for_neg, neg_x)
            part = part if factor == 1 else part.mul_(factor)
            result = part if result is None else result.add_(part)
        return result

    def __repr__(self) -> str:
        signed = ", signed=True" if self.signed else ""
        return f"AlphaBetaRule(alpha={self.alpha:g}, beta={self.beta:g}{signed})"


class SplitAlphaBetaRule(LinearRule):
    r"""The older alpha-beta rule of Chefer et al.'s code (their "orig" LRP layers): the
    contributions of :math:`x^+` and of :math:`x^-` are each divided by their own sum,
    :math:`R_x = \alpha [x^+ ((R / z_1) W^+) + x^- ((R / z_2) W^-)] - \beta [\dots]`,
    :math:`z_1 = x^+ W^{+T}`, :math:`z_2 = x^- W^{-T}`, bias ignored. It does not
    conserve relevance (each half passes all of it on); kept to reproduce their vectors.

    Example::

        >>> LRPRules.original()  # this rule, the plain z-rule on sums, halved products
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, stabilizer: float = STABILIZER) -> None:
        if alpha - beta != 1:
            raise ValueError(f"alpha - beta must be 1; got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.stabilizer = alpha, beta, stabilizer

    def relevance(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, relevance: Tensor) -> Tensor:
        x, weight, relevance = _wide(x), _wide(weight.detach()), _wide(relevance)
        halves = (x.clamp(min=0), x.clamp(max=0))
        signs = (weight.clamp(min=0), weight.clamp(max=0))
        result = torch.zeros_like(x)
        for factor, weights in ((self.alpha, signs), (-self.beta, signs[::-1])):
            if factor:
                for half, w in zip(halves, weights):
                    result += factor * half * (safe_divide(relevance, F.linear(half, w), self.stabilizer) @ w)
        return result

    def __repr__(self) -> str:
        return f"SplitAlphaBetaRule(alpha={self.alpha:g}, beta={self.beta:g})"


class EpsilonRule(LinearRule):
    r"""LRP-:math:`\epsilon`: :math:`R_x = x \odot ((R / (z + \epsilon\,\mathrm{sign}(z))) W)`,
    :math:`z = x W^T + b` (bias included, as in Captum's ``EpsilonRule``).

    Example::

        >>> LRPRules(linear=EpsilonRule(1e-6))
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.epsilon = epsilon

    def relevance(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, relevance: Tensor) -> Tensor:
        s = safe_divide(_wide(relevance), _wide(output), self.epsilon, signed=True)
        return _wide(x) * (s @ _wide(weight))

    def __repr__(self) -> str:
        return f"EpsilonRule(epsilon={self.epsilon:g})"


class ElementwiseRule:
    """How an operation of one relevance-carrying tensor passes relevance on."""

    def relevance(self, x: Tensor, output: Tensor, relevance: Tensor) -> Tensor:
        raise NotImplementedError


class IdentityRule(ElementwiseRule):
    """Relevance passes through unchanged (LayerNorm, GELU, ReLU, tanh, softmax,
    dropout, scaling by a constant), as in the reference code."""

    def relevance(self, x: Tensor, output: Tensor, relevance: Tensor) -> Tensor:
        if relevance.shape != x.shape:
            relevance = relevance.sum_to_size(x.shape)
        return relevance

    def __repr__(self) -> str:
        return "IdentityRule()"


class AddRule:
    """How ``z = a + b`` (both carrying relevance) splits the relevance of ``z``."""

    def relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class NormalizedAddRule(AddRule):
    r"""The z-rule on each operand, then rescaled per example so that operand
    ``a`` receives :math:`|\Sigma R_a| / (|\Sigma R_a| + |\Sigma R_b|)` of the
    example's total relevance (and ``b`` the rest): the total is conserved.

    The reference code normalises over the whole batch; here every example
    (first dimension) is normalised alone, so results do not depend on the batch.
    Every division adds the stabiliser as the reference does (``signed=True``: away
    from zero, with the denominator's sign).
    """

    def __init__(self, stabilizer: float = STABILIZER, signed: bool = False) -> None:
        self.stabilizer, self.signed = stabilizer, signed

    def relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        relevance = _wide(relevance)
        s = safe_divide(relevance, _wide(output), self.stabilizer, self.signed)
        ra = (_wide(a) * s).sum_to_size(a.shape)
        rb = (_wide(b) * s).sum_to_size(b.shape)
        sums = torch.stack(torch.broadcast_tensors(_per_example(ra), _per_example(rb)))  # (2, batch)
        shares = sums.abs()
        # the shares' sum needs no mask: where it is 0, so is every share
        targets = shares / shares.sum(0).add_(self.stabilizer) * _per_example(relevance)
        fa, fb = safe_divide(targets, sums, self.stabilizer, self.signed)
        return _rescaled(ra, fa), _rescaled(rb, fb)

    def __repr__(self) -> str:
        return "NormalizedAddRule(signed=True)" if self.signed else "NormalizedAddRule()"


class ZAddRule(AddRule):
    r"""The plain z-rule on both operands, :math:`R_a = a \odot R / z`,
    :math:`R_b = b \odot R / z`, without rescaling (Chefer et al.'s older rules; the
    total is conserved only where no element mixes signs).

    Example::

        >>> LRPRules(add=ZAddRule())
    """

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = stabilizer

    def relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        s = safe_divide(_wide(relevance), _wide(output), self.stabilizer)
        return (_wide(a) * s).sum_to_size(a.shape), (_wide(b) * s).sum_to_size(b.shape)

    def __repr__(self) -> str:
        return "ZAddRule()"


class ProductRule:
    r"""Matrix product ``z = a @ b`` of two relevance-carrying tensors: the
    z-rule to each operand, :math:`R_a = a \odot ((R/z) b^T)` and
    :math:`R_b = b \odot (a^T (R/z))`, each multiplied by ``share``
    (0.5, "halved", in the reference code, so that the two together conserve
    relevance). :math:`R/z` adds the stabiliser as the reference does
    (``signed=True``: away from zero).

    Example::

        >>> LRPRules(product=ProductRule(share=0.5))
    """

    def __init__(self, share: float = 0.5, stabilizer: float = STABILIZER, signed: bool = False) -> None:
        self.share, self.stabilizer, self.signed = share, stabilizer, signed

    def relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        wa, wb = _wide(a), _wide(b)
        s = safe_divide(_wide(relevance), _wide(output), self.stabilizer, self.signed)
        if self.share != 1:
            s = s.mul_(self.share)
        ra = (s @ wb.transpose(-1, -2)).sum_to_size(a.shape).mul_(wa)
        rb = (wa.transpose(-1, -2) @ s).sum_to_size(b.shape).mul_(wb)
        return ra, rb

    def elementwise_relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        r"""The same rule for an elementwise product ``z = a * b`` (broadcasting), such as a gated
        MLP's ``act(gate(x)) * up(x)``: :math:`R_a = a \odot b \odot R/z`, so each factor receives
        ``share`` of the relevance (exactly, where :math:`z \ne 0`; 0 where it is 0). With the
        default ``share=0.5`` this is also AttnLRP's uniform rule."""
        s = safe_divide(_wide(relevance), _wide(output), self.stabilizer, self.signed)
        if self.share != 1:
            s = s.mul_(self.share)
        both = s.mul_(_wide(a)).mul_(_wide(b)) if s.shape == output.shape else s * _wide(a) * _wide(b)
        return both.sum_to_size(a.shape), both.sum_to_size(b.shape)

    def __repr__(self) -> str:
        signed = ", signed=True" if self.signed else ""
        return f"ProductRule(share={self.share:g}{signed})"


def _rescaled(relevance: Tensor, per_example: Tensor) -> Tensor:
    """``relevance`` (fresh) times a factor per example, in place unless it broadcasts."""
    factor = _expand(per_example, relevance)
    if relevance.dim() > 1 and relevance.shape[0] != per_example.shape[0]:
        return relevance * factor  # e.g. one operand shared by the whole batch
    return relevance.mul_(factor)


def _per_example(tensor: Tensor) -> Tensor:
    return tensor.reshape(tensor.shape[0], -1).sum(1) if tensor.dim() > 1 else tensor.sum().reshape(1)


def _expand(per_example: Tensor, like: Tensor) -> Tensor:
    if like.dim() <= 1:
        return per_example
    return per_example.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class LRPRules:
    """Which rule each kind of operation uses; the defaults are the reference rules.

    Attributes:
        linear: rule of every linear layer (default LRP-alpha1-beta0, bias ignored).
        elementwise: rule of LayerNorm, RMSNorm, activations, softmax, dropout, negation
            and scaling by constants (default: identity).
        add: rule of sums of two relevance-carrying tensors (default: the
            normalised z-rule, per example).
        product: rule of matrix and elementwise products of two relevance-carrying
            tensors (default: the z-rule, halved for each operand).
        modules: per-module linear rules overriding ``linear``
            (e.g. ``{model.classifier: EpsilonRule()}``).

    Example::

        >>> PartialLRP(model, rules=LRPRules(linear=EpsilonRule(1e-6)))
    """

    linear: LinearRule = field(default_factory=AlphaBetaRule)
    elementwise: ElementwiseRule = field(default_factory=IdentityRule)
    add: AddRule = field(default_factory=NormalizedAddRule)
    product: ProductRule = field(default_factory=ProductRule)
    modules: Mapping[Module, LinearRule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("linear", LinearRule), ("elementwise", ElementwiseRule), ("add", AddRule),
                           ("product", ProductRule)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"`{name}` must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        for module, rule in self.modules.items():
            if not isinstance(getattr(module, "weight", None), Tensor) or not isinstance(rule, LinearRule):
                raise TypeError(
                    "`modules` maps modules with a `weight` (linear layers) to LinearRule objects; "
                    f"got {type(module).__name__} -> {type(rule).__name__}"
                )

    @classmethod
    def original(cls) -> "LRPRules":
        """The older rule set of Chefer et al.'s code (their ``BERT_orig_lrp``):
        :class:`SplitAlphaBetaRule` on linear layers, :class:`ZAddRule` on sums, halved
        products. It does not conserve relevance; the reference vectors keyed
        ``(orig-rules)`` come from it.

        Example::

            >>> TransformerLRP(model, rules=LRPRules.original())
        """
        return cls(linear=SplitAlphaBetaRule(), add=ZAddRule())

    def linear_rule_for(self, weight: Tensor) -> LinearRule:
        """The rule of the linear layer whose weight is ``weight``."""
        for module, rule in self.modules.items():
            if module.weight is weight:
                return rule
        return self.linear
