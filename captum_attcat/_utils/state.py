"""Leave the model exactly as it was given, whatever happens during a call, and let one
call at a time change a model's state.

Explanations switch a model's attention implementation, put it in eval mode and (for
LRP) freeze its parameters for the duration of a call. Calls on one model from several
threads (a threaded web server, say) therefore take the model's lock in turn, and give
exactly what they give alone; calls on different models run side by side.

Example::

    >>> with explanation_mode([model], attention_configs([model])):
    ...     ...  # model is in eval mode and uses the library's attention here
    >>> model.training, model.config._attn_implementation   # as before
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Iterator, Sequence

from torch.nn import Module

from .attention import attention_implementation


# id(object) -> its lock, for as long as the object lives
_LOCKS: dict[int, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()


def _lock_of(owner: Any) -> threading.RLock:
    lock = _LOCKS.get(id(owner))
    if lock is None:
        lock = _LOCKS[id(owner)] = threading.RLock()
        weakref.finalize(owner, _LOCKS.pop, id(owner), None)
    return lock


@contextlib.contextmanager
def model_lock(owners: Sequence[Any]) -> Iterator[None]:
    """Hold the (re-entrant) lock of every object in ``owners`` (root modules, and the
    Hugging Face configs their attention reads, which an explicit-form explainer on the same
    model shares), taken in one global order so that two calls cannot deadlock."""
    with _LOCKS_LOCK:
        locks = [_lock_of(owner) for owner in sorted({id(o): o for o in owners}.values(), key=id)]
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


@contextlib.contextmanager
def explanation_mode(modules: Sequence[Module], configs: Sequence[Any]) -> Iterator[None]:
    """Eval mode for ``modules`` and the library's attention implementation for ``configs``.

    On exit (normal or not) every submodule's train/eval flag, every
    parameter's ``requires_grad`` flag and every config's attention
    implementation are put back as they were. The models' locks
    (:func:`model_lock`) are held throughout.
    """
    with model_lock([*modules, *configs]):
        with _switched(modules, configs):
            yield


def every_module(roots: Sequence[Module]) -> list[Module]:
    """Every module under ``roots``, each once (a module shared by two roots, or reused inside one,
    is listed at its first place).

    Example::

        >>> len(every_module([model])) == len(list(model.modules()))  # doctest: +SKIP
        True
    """
    return list({id(m): m for root in roots for m in root.modules()}.values())


@contextlib.contextmanager
def _switched(modules: Sequence[Module], configs: Sequence[Any]) -> Iterator[None]:
    every = every_module(modules)
    training = [m for m in every if m.training]
    flags = [(p, p.requires_grad) for m in every for p in m._parameters.values() if p is not None]
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
