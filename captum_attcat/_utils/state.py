"""Leave the model exactly as it was given, whatever happens during a call.

Example::

    >>> with explanation_mode([model], attention_configs([model])):
    ...     ...  # model is in eval mode and uses the library's attention here
    >>> model.training, model.config._attn_implementation   # as before
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from torch.nn import Module

from .attention import attention_implementation


@contextlib.contextmanager
def explanation_mode(modules: Sequence[Module], configs: Sequence[Any]) -> Iterator[None]:
    """Eval mode for ``modules`` and the library's attention implementation for ``configs``.

    On exit (normal or not) every submodule's train/eval flag, every
    parameter's ``requires_grad`` flag and every config's attention
    implementation are put back as they were.
    """
    every = list({id(m): m for root in modules for m in root.modules()}.values())
    training = [m for m in every if m.training]
    flags = [(p, p.requires_grad) for m in every for p in m.parameters(recurse=False)]
    try:
        with attention_implementation(configs):
            for module in training:
                module.training = False
            yield
    finally:
        for module in training:
            module.training = True
        for parameter, requires_grad in flags:
            if parameter.requires_grad != requires_grad:
                parameter.requires_grad_(requires_grad)
