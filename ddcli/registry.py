"""The registries of methods and models, in a module of their own.

Each package (:mod:`ddcli.methods`, :mod:`ddcli.models`) fills its registry by importing its
submodules. When that import is interrupted (a Ctrl-C in a notebook's first call), Python drops
the package but keeps the submodules that had finished; importing the package again ran it with
a new, empty registry that those submodules never filled again ("unknown method 'dm'" until the
kernel restarted). A registry here outlives such a failed import, so the second import finds
the first one's entries and adds the rest.
"""

from __future__ import annotations

from typing import Any


class Registry(dict):
    """Names to entries; an entry registered again from the same place (the module of an
    interrupted import, run again) replaces itself, another one under a taken name is refused."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: Any) -> Any:
        old = self.get(name)
        if old is not None and _origin(old) != _origin(entry):
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = entry
        return entry


def _origin(entry: Any) -> tuple[str, str]:
    return getattr(entry, "__module__", ""), getattr(entry, "__qualname__", repr(entry))


METHODS = Registry("method")
MODELS = Registry("model")
