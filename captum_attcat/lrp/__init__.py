"""Layer-wise relevance propagation for transformers: rules and the engine that applies them.

Example::

    >>> from captum_attcat.lrp import LRPRules, EpsilonRule
    >>> from captum_attcat import TransAtt
    >>> TransAtt(model, rules=LRPRules(linear=EpsilonRule(1e-6))).attribute(input_ids, target=1)
"""

from .engine import (
    OPERATIONS,
    Propagation,
    activation_modules,
    elementwise,
    lrp_forward,
    normalization_modules,
    register_operation,
    routing_modules,
)
from .rules import (
    AddRule,
    AlphaBetaRule,
    ElementwiseRule,
    EpsilonRule,
    IdentityRule,
    LinearRule,
    LRPRules,
    NormalizedAddRule,
    ProductRule,
    SplitAlphaBetaRule,
    ZAddRule,
    safe_divide,
)

__all__ = [
    "AddRule",
    "AlphaBetaRule",
    "ElementwiseRule",
    "EpsilonRule",
    "IdentityRule",
    "LRPRules",
    "LinearRule",
    "NormalizedAddRule",
    "ProductRule",
    "Propagation",
    "OPERATIONS",
    "activation_modules",
    "elementwise",
    "lrp_forward",
    "normalization_modules",
    "register_operation",
    "routing_modules",
    "SplitAlphaBetaRule",
    "ZAddRule",
    "safe_divide",
]
