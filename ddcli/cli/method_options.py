"""``distill``'s method options, generated from the method configs (:mod:`ddcli.configs`).

One option per config field (``batch_real`` -> ``--batch-real``), grouped into rich help panels
by the methods that take it, with its help from the config's docstring and every method's
default and built-in-sample preset listed; choices are validated by the CLI
(case-insensitive). An option left out stays ``None``, so the method's own default (or preset)
applies. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer

from ddcli.configs import CONFIGS, MethodConfig, field_docs, flag

PANEL_METHOD = "Method"
PANEL_DM = "DM family (dm, csdm, sdm, tgdd)"
PANEL_CSDM = "CSDM / SDM"
PANEL_TGDD = "TGDD"
PANEL_SFM = "SFM / LGM"
PANEL_OTGEN = "otgen"
#: the methods a panel is about (an option taken by all of them needs no "methods:" prefix)
PANEL_METHODS = {PANEL_DM: ("dm", "csdm", "sdm", "tgdd"), PANEL_CSDM: ("csdm", "sdm"),
                 PANEL_TGDD: ("tgdd",), PANEL_SFM: ("sfm", "lgm"), PANEL_OTGEN: ("otgen",)}

#: the order of methods in help texts (families together)
ORDER = ("dm", "csdm", "sdm", "tgdd", "sfm", "lgm", "otgen")
FAMILY = {"dm": "dm", "csdm": "dm", "sdm": "dm", "tgdd": "dm", "sfm": "bb", "lgm": "bb",
          "otgen": "gen"}
#: the preset the built-in sample uses
SAMPLE_PRESET = "sample-cpu"


@dataclasses.dataclass(frozen=True)
class MethodOption:
    name: str  # the field
    methods: tuple[str, ...]  # the methods that take it, in ORDER
    kind: str  # "int", "float", "str", "bool", "ints" (a comma-separated tuple)
    choices: tuple[str, ...] | None
    text: str  # what it is (the config's docstring)
    defaults: str  # every method's default, "" when all are "by ..." (None)
    sample: str  # the built-in sample preset's values, "" when it sets none
    panel: str
    prefix: str  # "csdm/sdm: " when not every method of its panel takes it

    @property
    def help(self) -> str:
        out = f"{self.prefix}{self.text}."
        if self.choices:
            out += f" One of: {', '.join(self.choices)}."
        if self.defaults:
            out += f" Default: {self.defaults}"
            out += f"; built-in sample: {self.sample}." if self.sample else "."
        return out



def _capital(text: str) -> str:
    """``text`` with an ASCII first letter capitalised (a Greek symbol, α or β₁, stays as it
    is: upper-casing it made "Α of the largest class")."""
    return text[:1].upper() + text[1:] if text[:1].isascii() else text

def _kind(cfg: type[MethodConfig], f: dataclasses.Field) -> str:
    t = str(f.type).replace(" ", "")
    for k in ("bool", "int", "float", "str"):
        if t in (k, f"{k}|None"):
            return k
    if t.startswith("tuple[int"):
        return "ints"
    raise TypeError(f"{cfg.__name__}.{f.name}: no command-line type for {f.type!r}")


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    return str(v)


def _by_value(methods: tuple[str, ...], value_of: Callable[[str], Any],
              every: tuple[str, ...]) -> str:
    """``dm/csdm 1, tgdd 0.01`` — methods sharing a value named together; the value alone
    when all of ``every`` share it."""
    groups: dict[str, list[str]] = {}
    for m in methods:
        v = value_of(m)
        if v is not None:
            groups.setdefault(_show(v), []).append(m)
    if len(groups) == 1 and set(next(iter(groups.values()))) == set(every):
        return next(iter(groups))
    return ", ".join(f"{'/'.join(ms)} {v}" for v, ms in groups.items())


def _panel(methods: tuple[str, ...]) -> str:
    fams = {FAMILY[m] for m in methods}
    if len(fams) > 1:
        return PANEL_METHOD
    fam = fams.pop()
    if fam == "bb":
        return PANEL_SFM
    if fam == "gen":
        return PANEL_OTGEN
    if set(methods) == {"csdm", "sdm"}:
        return PANEL_CSDM
    if set(methods) == {"tgdd"}:
        return PANEL_TGDD
    return PANEL_DM


@functools.cache
def method_options() -> tuple[MethodOption, ...]:
    """Every command-line field of every method, in the order of their first definition
    (computed once: distill, experts and prior all read it at start-up)."""
    users: dict[str, list[str]] = {}
    first: dict[str, tuple[type[MethodConfig], dataclasses.Field]] = {}
    for m in ORDER:
        cfg = CONFIGS[m]
        for f in dataclasses.fields(cfg):
            if f.name in cfg.internal:
                continue
            users.setdefault(f.name, []).append(m)
            first.setdefault(f.name, (cfg, f))
    shared_docs = field_docs(MethodConfig)
    out = []
    for name, ms in users.items():
        methods = tuple(ms)
        cfg, f = first[name]
        kinds = {_kind(CONFIGS[m], next(x for x in dataclasses.fields(CONFIGS[m])
                                        if x.name == name)) for m in methods}
        if len(kinds) > 1:
            raise TypeError(f"--{name}: the methods disagree on its type ({kinds})")
        choice_sets = {CONFIGS[m].choices.get(name) for m in methods}
        if len(choice_sets) > 1:
            raise TypeError(f"{flag(name)}: the methods disagree on its choices")
        choices = choice_sets.pop()
        # the help: a shared text (MethodConfig's docstring) for options of several families,
        # else the defining config's; then every method's default and sample preset
        docs = field_docs(CONFIGS[methods[0]])
        text = shared_docs.get(name) if _panel(methods) == PANEL_METHOD else None
        text = (text or docs.get(name) or name.replace("_", " ")).rstrip(".").replace("``", "")
        text = _capital(text)
        panel = _panel(methods)
        every = PANEL_METHODS.get(panel, ORDER)
        prefix = "" if set(methods) == set(every) else "/".join(methods) + ": "
        defaults = _by_value(methods, lambda m, name=name: getattr(CONFIGS[m](), name), methods)
        sample = _by_value(
            tuple(m for m in methods if name in CONFIGS[m].presets.get(SAMPLE_PRESET, {})),
            lambda m, name=name: CONFIGS[m].presets[SAMPLE_PRESET][name], methods)
        out.append(MethodOption(name, methods, _kind(cfg, f), choices, text, defaults, sample,
                                panel, prefix))
    return tuple(out)


_TYPES = {"int": int, "float": float, "str": str, "ints": str, "bool": bool}


def _decl(o) -> str:
    """An option's spelling: ``--name``, and ``--name/--no-name`` for a switch."""
    return f"{flag(o.name)}/--no-{flag(o.name)[2:]}" if o.kind == "bool" else flag(o.name)


def parameters(taken: set[str]) -> list[inspect.Parameter]:
    """The options as keyword-only parameters for a typer command (all default ``None``);
    ``taken``: the command's own parameter names, which no field may shadow."""
    params = []
    for o in method_options():
        if o.name in taken:
            raise TypeError(f"method option {flag(o.name)} clashes with a distill option")
        if o.kind == "bool":
            info = typer.Option(_decl(o), help=o.help, rich_help_panel=o.panel)
        elif o.choices:
            info = typer.Option(flag(o.name), help=o.help, rich_help_panel=o.panel,
                                case_sensitive=False, show_default=False)
        else:
            info = typer.Option(flag(o.name), help=o.help, rich_help_panel=o.panel,
                                show_default=False)
        typ = Literal[o.choices] if o.choices else _TYPES[o.kind]
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[typ | None, info]))
    return params


def with_method_options(after: str) -> Callable[[Callable], Callable]:
    """Give ``func(..., **options)`` one typer option per method field (see module doc),
    listed after its parameter ``after``."""

    def wrap(func: Callable) -> Callable:
        own = inspect.signature(func, eval_str=True).parameters
        return _insert(func, after, parameters(set(own)))

    return wrap



def markdown_table() -> str:
    """The method options as the README's table (tests/test_cli.py keeps the two equal):
    ``python -c "from ddcli.cli.method_options import markdown_table; print(markdown_table())"``.
    """
    rows = ["| option | methods | default (built-in sample) | meaning |", "|---|---|---|---|"]
    for o in method_options():
        name = f"`{flag(o.name)}`" + (f" ({' / '.join(o.choices)})" if o.choices else "")
        methods = "all" if len(o.methods) == len(ORDER) else ", ".join(o.methods)
        default = o.defaults + (f" ({o.sample})" if o.sample else "")
        rows.append(f"| {name} | {methods} | {default} | {o.text} |")
    return "\n".join(rows)


def with_config_options(method: str, names: tuple[str, ...], after: str
                        ) -> Callable[[Callable], Callable]:
    """Give a command that prepares a method's cache (``experts``, ``prior``) the method's own
    options ``names``, spelled, defaulted and documented as ``distill`` has them (the
    method's defaults, not None: these commands have no method to fall back on)."""
    cfg = CONFIGS[method]
    docs = field_docs(cfg)
    by_name = {o.name: o for o in method_options()}

    def wrap(func: Callable) -> Callable:
        params = []
        for name in names:
            o, default = by_name[name], getattr(cfg(), name)
            text = docs.get(name, name).rstrip(".").replace("``", "")
            text = f"{_capital(text)} (as distill -m {method})."
            if o.choices:
                text += f" One of: {', '.join(o.choices)}."
            info = typer.Option(_decl(o), help=text, case_sensitive=False) if o.choices \
                else typer.Option(_decl(o), help=text)
            typ = Literal[o.choices] if o.choices else _TYPES[o.kind]
            params.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[typ, info],
                default=",".join(map(str, default)) if o.kind == "ints" else default))
        return _insert(func, after, params)

    return wrap


def _insert(func: Callable, after: str, generated: list[inspect.Parameter]) -> Callable:
    sig = inspect.signature(func, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    cut = [p.name for p in own].index(after) + 1
    kw = inspect.Parameter.KEYWORD_ONLY  # typer passes every option by name
    head = [own[0], *(p.replace(kind=kw) for p in own[1:cut])]
    tail = [p.replace(kind=kw) for p in own[cut:]]
    taken = {p.name for p in own}
    clash = [p.name for p in generated if p.name in taken]
    if clash:
        raise TypeError(f"method option {flag(clash[0])} clashes with a command option")
    func.__signature__ = sig.replace(parameters=[*head, *generated, *tail])
    func.__annotations__ = {p.name: p.annotation for p in func.__signature__.parameters.values()}
    return func
