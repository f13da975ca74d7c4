"""Method registry: ``@register_method`` classes, ``create_method``, ``list_methods``.

A method is a small frozen config dataclass plus one file whose ``setup`` / ``step`` /
``result`` read top to bottom; :func:`ddcli.methods.base.run_method` drives any of them with
seeding, progress, checkpoints, resume and Ctrl-C handling.
"""

from __future__ import annotations

import fnmatch

from ddcli.errors import InputError
from ddcli.methods.base import Method, MethodConfig
from ddcli.registry import METHODS

_METHODS = METHODS  # (ddcli.registry: it outlives an interrupted import of this package)


def register_method(cls: type[Method]) -> type[Method]:
    return _METHODS.add(cls.name, cls)


def list_methods(pattern: str = "*") -> list[str]:
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        raise InputError(f"unknown method {name!r}; choose from {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, preset: str | None = None, **overrides) -> Method:
    """Build method ``name`` from its defaults, an optional named preset, and overrides."""
    cls = get_method(name)
    return cls(cls.Config.build(preset=preset, **overrides))


from ddcli.methods import csdm, dm, lgm, otgen, sfm, tgdd  # noqa: E402,F401  (registers them)

__all__ = ["Method", "MethodConfig", "create_method", "get_method", "list_methods",
           "register_method"]
