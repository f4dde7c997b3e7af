"""The registry of explanation methods, so tools can list every method that exists.

Example::

    >>> from captum_attcat import METHODS
    >>> sorted(METHODS)[:2]
    ['AttCAT', 'CAT']
    >>> explainer = METHODS["AttCAT"](model)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, TypeVar

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


def arguments_by_method(given: Mapping[str, Mapping[str, Any]], names: Iterable[str] | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Per method (default: every registered one), the constructor arguments its ``required_arguments``
    find in ``given`` (argument -> the keyword arguments it stands for), so a tool supplies arguments by
    kind and never names a method; pass the result as ``init_kwargs``. What ``given`` lacks stays missing
    (see :func:`missing_arguments`).

    Example::

        >>> given = {"head_mask": {"head_mask": mask},
        ...          "references": {"references": ids, "reference_args": (attention_mask,)}}
        >>> arguments_by_method(given)["MaskLRP"]
        {'head_mask': mask}
    """
    names = sorted(METHODS) if names is None else list(names)
    return {name: {key: value for argument in getattr(METHODS[name], "required_arguments", {})
                   for key, value in given.get(argument, {}).items()} for name in names}


def methods_to_build(names: Iterable[str] | None = None,
                     init_kwargs: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The methods a tool builds by name with ``init_kwargs``: ``names`` (default: every registered one,
    sorted) and, left out, those whose required constructor arguments ``init_kwargs`` lacks (method ->
    argument -> what to pass). Built without such an argument a method would be another one under its
    name, so a method named explicitly that lacks one raises a ``ValueError`` naming it; an unknown
    name raises a ``KeyError``.

    Example::

        >>> methods_to_build(None, {})[1]["MaskLRP"]
        {'head_mask': 'a HeadMask ...'}
    """
    chosen = sorted(METHODS) if names is None else list(names)
    unknown = [n for n in chosen if n not in METHODS]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    init_kwargs = init_kwargs or {}
    missing = {n: needs for n in chosen if (needs := missing_arguments(METHODS[n], init_kwargs.get(n)))}
    if missing and names is not None:
        name, needs = next(iter(missing.items()))
        argument, what = next(iter(needs.items()))
        raise ValueError(f"{name} needs `{argument}` in init_kwargs[{name!r}]: {what}")
    return [n for n in chosen if n not in missing], missing
