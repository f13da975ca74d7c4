"""What exists, from the registries: methods, models, protocols and backbones, each with its
defaults and presets (``ddcli list``)."""

from __future__ import annotations

import dataclasses
import re
import sys

from ddcli.configs import field_docs

KINDS = ("methods", "models", "protocols", "backbones")


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    m = re.match(r"(.+?\.)(\s|$)", text)
    return (m.group(1) if m else text).strip()


def _jsonable(v):
    if isinstance(v, tuple):
        return list(v)
    return v


def methods() -> list[dict]:
    from ddcli.methods import get_method, list_methods

    out = []
    for name in list_methods():
        cls = get_method(name)
        cfg = cls.Config
        defaults = {f.name: _jsonable(f.default) for f in dataclasses.fields(cfg)
                    if f.name not in cfg.internal}  # (recorded, but no option sets them)
        docs = field_docs(cfg)
        own = (cfg.__dict__.get("__doc__") or "").strip()
        summary = own if own.lower().startswith(f"{name}:") else \
            sys.modules[cls.__module__].__doc__
        out.append({
            "name": name,
            "summary": _first_sentence(summary),
            "defaults": defaults,
            "presets": {k: {n: _jsonable(v) for n, v in p.items()}
                        for k, p in cfg.presets.items()},
            "choices": {k: list(v) for k, v in cfg.choices.items()},
            "help": {k: docs[k] for k in defaults if k in docs},
        })
    return out


def models() -> list[dict]:
    from ddcli.models import _MODELS, list_models

    return [{"name": n, "summary": _first_sentence(_MODELS[n].__doc__)} for n in list_models()]


def protocols() -> list[dict]:
    from ddcli.protocols import get_protocol, list_protocols, protocol_summary

    out = []
    for n in list_protocols():
        d = get_protocol(n).to_dict()
        out.append({"name": n, "summary": protocol_summary(d), "reference": d["reference"],
                    "defaults": {k: v for k, v in d.items() if k not in ("name", "reference")}})
    return out


def backbones() -> list[dict]:
    from ddcli.backbones import backbone_kinds

    return backbone_kinds()


def listing(kind: str | None = None) -> dict[str, list[dict]]:
    kinds = KINDS if kind is None else (kind,)
    fns = {"methods": methods, "models": models, "protocols": protocols,
           "backbones": backbones}
    return {k: fns[k]() for k in kinds}
