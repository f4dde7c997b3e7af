"""The registry of explanation methods, so tools can list every method that exists.

Example::

    >>> from captum_attcat import METHODS
    >>> sorted(METHODS)[:2]
    ['AttCAT', 'CAT']
    >>> explainer = METHODS["AttCAT"](model)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

METHODS: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator adding an attribution class to :data:`METHODS` under ``name``."""

    def register(cls: T) -> T:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = cls
        return cls

    return register


def missing_arguments(cls: type, given: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The required constructor arguments of method ``cls`` (its ``required_arguments``) that
    ``given`` lacks (or has as ``None``): argument -> what to pass.

    Example::

        >>> missing_arguments(METHODS["MaskLRP"], {})
        {'head_mask': 'a HeadMask ...'}
    """
    given = given or {}
    return {name: what for name, what in getattr(cls, "required_arguments", {}).items() if given.get(name) is None}
