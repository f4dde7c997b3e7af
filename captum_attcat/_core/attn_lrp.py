"""AttnLRP (Achtibat et al., ICML 2024): LRP for attention at about the cost of one gradient.

The rules: LRP-epsilon on linear layers and sums (bias included), the identity rule through
elementwise non-linearities and RMSNorm, LayerNorm's standard deviation held constant (its
centring and affine map are linear), the uniform rule on products of two relevance-carrying
tensors (``Q K^T``, ``A V``, a gated MLP's product: each operand receives half) and the softmax
rule :math:`R_x = x \\odot (R_s - s \\sum R_s)`. All of them are computed in gradient x input form,
as the authors' LXT package does: one forward under the LRP engine whose graph has these
gradients, one backward, and the relevance of the first block's input is that input times its
gradient, summed over hidden units. Operations the engine has no rule for are refused by name.

Example::

    >>> from captum_attcat import AttnLRP
    >>> scores = AttnLRP(model).attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch.nn import Module

from .lrp_methods import TransformerLRP
from ..registry import register_method


@register_method("AttnLRP")
class AttnLRP(TransformerLRP):
    r"""AttnLRP: relevance at the encoder input (the first block's input), summed over hidden
    units, by the rules of Achtibat et al. (2024) in gradient x input form.

    Args:
        forward_func: a Hugging Face model, or a forward function with ``layers``
            and ``attention_modules`` (see :class:`~captum_attcat.TransformerAttribution`).
        layers: the transformer blocks (explicit form).
        attention_modules: one attention module per block (explicit form).

    Example::

        >>> AttnLRP(model).attribute(input_ids, target=1, additional_forward_args=(attention_mask,))
    """

    implicit = True
    floor_budget = 1.3

    def __init__(self, forward_func: Module | Callable[..., Any], layers: Sequence[Module] | None = None,
                 attention_modules: Sequence[Module] | None = None) -> None:
        super().__init__(forward_func, layers, attention_modules)
