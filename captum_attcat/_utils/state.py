"""Leave the model exactly as it was given, whatever happens during a call.

Example::

    >>> with explanation_mode([model]):
    ...     ...  # model is in eval mode and uses the recording attention here
    >>> model.training, model.config._attn_implementation   # as before
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from torch.nn import Module

from .attention import attention_configs, attention_implementation


@contextlib.contextmanager
def explanation_mode(modules: Sequence[Module]) -> Iterator[None]:
    """Eval mode and the library's attention implementation for ``modules``.

    On exit (normal or not) every submodule's train/eval flag, every
    parameter's ``requires_grad`` flag and every Hugging Face config's
    attention implementation are put back as they were.
    """
    every = {id(m): m for root in modules for m in root.modules()}
    modes = [(m, m.training) for m in every.values()]
    flags = [(p, p.requires_grad) for m in every.values() for p in m.parameters(recurse=False)]
    try:
        with attention_implementation(attention_configs(modules)):
            for root in modules:
                root.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
