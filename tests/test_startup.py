"""``ddcli --help`` and ``--version`` stay fast: no torch (or other heavy module) at start-up."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "numpy", "diffusers", "timm", "safetensors.torch", "PIL", "ot")


def _heavy_modules_after(code: str) -> list[str]:
    probe = (code + "\nimport sys\nprint(','.join(m for m in " + repr(HEAVY)
             + " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    return [m for m in line.split(",") if m]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["distill", "--help"],
                                  ["evaluate", "--help"], ["relabel", "--help"],
                                  ["experts", "--help"], ["prior", "--help"],
                                  ["inspect", "--help"], ["list", "--help"],
                                  ["env", "--help"], ["cache", "--help"], []])
def test_help_and_version_import_no_heavy_module(args):
    code = ("import contextlib, io\nimport ddcli.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            f"        ddcli.cli.app({args!r})\n"
            "    except SystemExit:\n"
            "        pass\n")
    assert _heavy_modules_after(code) == []


def test_import_ddcli_is_light_and_the_api_loads_lazily():
    assert _heavy_modules_after("import ddcli") == []
    code = "import ddcli\nassert callable(ddcli.load_bundle) and callable(ddcli.distill)"
    assert "torch" in _heavy_modules_after(code)


def test_catalog_matches_the_registries():
    from ddcli import catalog
    from ddcli.experts import EXPERT_RECIPE
    from ddcli.methods import list_methods
    from ddcli.priors import PriorRecipe
    from ddcli.relabel import DEFAULT_LIA_SCHEDULE
    from ddcli.teachers import RECIPES

    assert catalog.METHODS == tuple(list_methods())
    from ddcli.configs import CONFIGS
    from ddcli.methods import get_method

    assert {n: get_method(n).Config for n in list_methods()} == CONFIGS
    assert catalog.TEACHER_ARCHS == tuple(RECIPES)
    from ddcli.configs import OTGenConfig, TGDDConfig

    # the configs (where the options of distill, experts and prior come from) and the recipes
    assert TGDDConfig.expert_epochs == EXPERT_RECIPE.epochs
    assert (OTGenConfig.prior_steps, OTGenConfig.prior_batch, OTGenConfig.prior_channels) == (
        PriorRecipe.steps, PriorRecipe.batch_size, PriorRecipe.channels)
    from ddcli.bundle import STORAGE_DTYPES
    from ddcli.losses import KERNELS
    from ddcli.models import list_models

    assert catalog.MODELS == tuple(list_models()) and catalog.KERNELS == KERNELS
    from ddcli.models import create_model
    from ddcli.training import _has_batchnorm

    assert catalog.BATCH_NORM_MODELS == tuple(
        m for m in list_models() if _has_batchnorm(create_model(m, 10, 3, (32, 32))))
    assert catalog.DTYPES == tuple(STORAGE_DTYPES)
    assert catalog.LIA_SCHEDULE == ",".join(f"{a}:{b}" for a, b in DEFAULT_LIA_SCHEDULE)


def test_the_library_does_not_import_the_cli_layer():
    """ddcli/cli/ is a thin layer over the library: no library module imports from it (the
    Python API once borrowed the CLI's reporter and teacher training)."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parent.parent / "ddcli"
    offenders = []
    for f in pkg.rglob("*.py"):
        rel = f.relative_to(pkg).as_posix()
        if rel.startswith("cli/") or rel == "__main__.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}: {n}" for n in names if n == "ddcli.cli" or
                          n.startswith("ddcli.cli.")]
    assert offenders == []
