"""ddcli: dataset distillation from the command line, and from Python.

``import ddcli`` is light (no torch); the public API loads on first use:

* :func:`ddcli.load_bundle` reads a bundle (a :class:`ddcli.Bundle`), :func:`ddcli.save_bundle`
  writes one;
* :class:`ddcli.BundleDataset` serves a bundle to a ``torch.utils.data.DataLoader``;
* :func:`ddcli.distill` and :func:`ddcli.evaluate` do what the commands do and return what
  they report.

See ``docs/python-api.md``.
"""

__version__ = "0.3.0.dev0"

_LAZY = {
    "load_bundle": "ddcli.bundle",
    "save_bundle": "ddcli.bundle",
    "Bundle": "ddcli.bundle",
    "BundleDataset": "ddcli.api",
    "distill": "ddcli.api",
    "evaluate": "ddcli.api",
}

#: submodules reachable as attributes after a bare ``import ddcli`` (``ddcli.errors.InputError``
#: in a script's ``except`` or ``pytest.raises``)
_SUBMODULES = ("errors",)

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY or name in _SUBMODULES:
        import importlib

        module = importlib.import_module(_LAZY.get(name, f"ddcli.{name}"))
        value = module if name in _SUBMODULES else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
