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
- ``product``: a matrix product of two relevance-carrying tensors
  (``Q K^T`` and ``A V`` in attention).

All relevance is computed in float32 (or wider) and returned in the input's dtype.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

#: the stabiliser of the reference code
STABILIZER = 1e-9


def safe_divide(numerator: Tensor, denominator: Tensor, stabilizer: float = STABILIZER) -> Tensor:
    """``numerator / (denominator ± stabilizer)`` (the sign of the denominator),
    and exactly 0 where the denominator is 0."""
    signed_stabilizer = torch.copysign(torch.tensor(stabilizer, dtype=denominator.dtype), denominator)
    quotient = numerator / (denominator + signed_stabilizer)
    return quotient.masked_fill_(denominator == 0, 0)


def _divide_nonnegative(numerator: Tensor, denominator: Tensor, stabilizer: float) -> Tensor:
    """:func:`safe_divide` for a fresh denominator known to be >= 0 (overwritten)."""
    kept = torch.where(denominator > 0, numerator, 0.0)
    return kept.div_(denominator.add_(stabilizer))


def _wide(tensor: Tensor) -> Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


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
    :math:`S^\pm = R / z^\pm` (stabilised, 0 where :math:`z^\pm = 0`). The
    default :math:`\alpha = 1, \beta = 0` is the reference rule; it conserves
    relevance wherever :math:`z^+ \ne 0`.

    The rule keeps ``[W, |W|]`` of each weight it has seen (recomputed when the
    weight changes in place, dropped when the weight is freed): one product per
    backward instead of two, and no ``|W|`` per call.

    Example::

        >>> AlphaBetaRule(alpha=2.0, beta=1.0)
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, stabilizer: float = STABILIZER) -> None:
        if alpha - beta != 1:
            raise ValueError(f"alpha - beta must be 1 to conserve relevance; got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.stabilizer = alpha, beta, stabilizer
        self._spreads: dict[int, tuple[weakref.ref, int, Tensor]] = {}

    def _spread(self, weight: Tensor) -> Tensor:
        """``[W, |W|]`` ``(out, 2 in)`` in float32 or wider, cached per weight tensor."""
        key = id(weight)
        cached = self._spreads.get(key)
        if cached is not None and cached[0]() is weight and cached[1] == weight._version:
            return cached[2]
        wide = _wide(weight.detach())
        spread = torch.cat([wide, wide.abs()], dim=1)
        if cached is None:
            weakref.finalize(weight, self._spreads.pop, key, None)
        self._spreads[key] = (weakref.ref(weight), weight._version, spread)
        return spread

    def relevance(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, relevance: Tensor) -> Tensor:
        spread = self._spread(weight)
        in_features = weight.shape[1]
        x, relevance = _wide(x), _wide(relevance)
        abs_x, abs_w = x.abs(), spread[:, in_features:]
        # x W^T = z+ + z-  and  |x| |W|^T = z+ - z-: one product more than the
        # forward gives both; twice_pos = 2 z+, twice_neg = 2 z-
        unsigned = F.linear(abs_x, abs_w, None if bias is None else -_wide(bias))  # |x| |W|^T - b
        signed = _wide(output)  # x W^T + b
        # x+ (S W+) + x- (S W-) = (x (S W) + |x| (S |W|)) / 2, and with the signs swapped for z-;
        # with S' = S / 2 (relevance over 2 z) the halving disappears
        result = None
        for factor, sign in ((self.alpha, 1.0), (-self.beta, -1.0)):
            if factor == 0:
                continue
            if sign > 0:
                twice = signed + unsigned if self.beta else unsigned.add_(signed)  # 2 z+ >= 0
                s = _divide_nonnegative(relevance, twice, 2 * self.stabilizer)
            else:
                bias_twice = 0 if bias is None else 2 * _wide(bias)
                s = safe_divide(relevance, signed - unsigned - bias_twice, 2 * self.stabilizer)  # 2 z- <= 0
            both = s @ spread  # (S W, S |W|)
            part = both[..., :in_features].mul_(x).addcmul_(abs_x, both[..., in_features:], value=sign)
            part = part if factor == 1 else part.mul_(factor)
            result = part if result is None else result.add_(part)
        return result if result is not None else torch.zeros_like(x)

    def __repr__(self) -> str:
        return f"AlphaBetaRule(alpha={self.alpha:g}, beta={self.beta:g})"


class EpsilonRule(LinearRule):
    r"""LRP-:math:`\epsilon`: :math:`R_x = x \odot ((R / (z + \epsilon\,\mathrm{sign}(z))) W)`,
    :math:`z = x W^T + b` (bias included, as in Captum's ``EpsilonRule``).

    Example::

        >>> LRPRules(linear=EpsilonRule(1e-6))
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.epsilon = epsilon

    def relevance(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, relevance: Tensor) -> Tensor:
        s = safe_divide(_wide(relevance), _wide(output), self.epsilon)
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
    """

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = stabilizer

    def relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        relevance = _wide(relevance)
        s = safe_divide(relevance, _wide(output), self.stabilizer)
        ra = (_wide(a) * s).sum_to_size(a.shape)
        rb = (_wide(b) * s).sum_to_size(b.shape)
        total = _per_example(relevance)
        sa, sb = _per_example(ra), _per_example(rb)
        share = sa.abs() + sb.abs()
        fa = safe_divide(sa.abs(), share, self.stabilizer) * total
        fb = safe_divide(sb.abs(), share, self.stabilizer) * total
        return ra * _expand(safe_divide(fa, sa, self.stabilizer), ra), rb * _expand(
            safe_divide(fb, sb, self.stabilizer), rb
        )

    def __repr__(self) -> str:
        return "NormalizedAddRule()"


class ProductRule:
    r"""Matrix product ``z = a @ b`` of two relevance-carrying tensors: the
    z-rule to each operand, :math:`R_a = a \odot ((R/z) b^T)` and
    :math:`R_b = b \odot (a^T (R/z))`, each multiplied by ``share``
    (0.5, "halved", in the reference code, so that the two together conserve
    relevance).

    Example::

        >>> LRPRules(product=ProductRule(share=0.5))
    """

    def __init__(self, share: float = 0.5, stabilizer: float = STABILIZER) -> None:
        self.share, self.stabilizer = share, stabilizer

    def relevance(self, a: Tensor, b: Tensor, output: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        wa, wb = _wide(a), _wide(b)
        s = safe_divide(_wide(relevance), _wide(output), self.stabilizer)
        if self.share != 1:
            s = s.mul_(self.share)
        ra = (s @ wb.transpose(-1, -2)).sum_to_size(a.shape).mul_(wa)
        rb = (wa.transpose(-1, -2) @ s).sum_to_size(b.shape).mul_(wb)
        return ra, rb

    def __repr__(self) -> str:
        return f"ProductRule(share={self.share:g})"


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
        elementwise: rule of LayerNorm, activations, softmax, dropout and
            scaling by constants (default: identity).
        add: rule of sums of two relevance-carrying tensors (default: the
            normalised z-rule, per example).
        product: rule of matrix products of two relevance-carrying tensors
            (default: the z-rule, halved for each operand).
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

    def linear_rule_for(self, weight: Tensor) -> LinearRule:
        """The rule of the linear layer whose weight is ``weight``."""
        for module, rule in self.modules.items():
            if module.weight is weight:
                return rule
        return self.linear
