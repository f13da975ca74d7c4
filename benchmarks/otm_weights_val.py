"""The `otm` protocol's loss weights and Sinkhorn regulariser on a validation split
(docs/fidelity.md: the OT paper's κ1 / κ2 / β2 and regulariser are unknown; ddcli's 0.1 / 1.0 /
1.0, reg 0.1 are methods.md §5.4's proposal).

Trains the same soft-labelled bundle under variants of `otm` that differ only in these knobs
(w_ce, w_mse, w_ot, ot_reg), and under `kd` for reference, with the judge of the quality
suite's otgen rows (300 epochs, 3 models, seed 0), on a validation split (never the test
split). With ``--baseline [ROW ...]`` random real images of the same IPC, relabelled by the
same teacher, are judged under those rows' knobs too (no names: the default and the best
row), so that a choice that helps every set alike is told apart from one that helps the
distilled set.

    python benchmarks/otm_weights_val.py /tmp/otval/ot15-soft.safetensors --test /tmp/otval/val \\
        --out /tmp/otm_val.json [--rows default no-ot ...] [--baseline [ROW ...]]

RESULTS.md, "The `otm` judge's OT term", holds the grid's figures on two otgen sets.

Resumable: a row whose result is already in ``--out`` is not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from common import run_main

#: each row's `otm` knobs (the others are `otm`'s own); "kd" is the `kd` protocol itself
ROWS: dict[str, dict[str, float] | None] = {
    "default": {},  # methods.md §5.4's proposal, ddcli's default: 0.1 CE + 1 MSE + 1 OT, reg 0.1
    "no-ot": {"w_ot": 0.0},  # what the batch OT term adds
    "no-mse": {"w_mse": 0.0},  # the OT term in place of the per-sample match
    "ot0.1": {"w_ot": 0.1},
    "ot10": {"w_ot": 10.0},
    "ce1": {"w_ce": 1.0},
    "reg0.01": {"ot_reg": 0.01},  # a sharper plan: nearer a matching of outputs to labels
    "reg1": {"ot_reg": 1.0},
    "kd": None,
}


def protocol_for(name: str) -> str:
    """Register the row's variant of `otm` (only those knobs differ) and return its name."""
    from ddcli.protocols import get_protocol, list_protocols, register_protocol

    if ROWS[name] is None:
        return "kd"
    pname = f"otm-val-{name}"
    if pname not in list_protocols():
        register_protocol(dataclasses.replace(get_protocol("otm"), name=pname, **ROWS[name]))
    return pname


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="a soft-labelled bundle (relabel's output)")
    ap.add_argument("--test", type=Path, required=True, help="the validation split")
    ap.add_argument("--out", type=Path, required=True, help="results (JSON, resumable)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--baseline", nargs="*", choices=list(ROWS), default=None,
                    help="also judge random real images under these rows' knobs (no names: "
                    "the default and the best row)")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    a = ap.parse_args(argv)
    from ddcli import api
    from ddcli.io import atomic_write_bytes

    done = json.loads(a.out.read_text()) if a.out.exists() else {}

    def judge(key: str, name: str, baseline: bool) -> None:
        if key in done:
            return
        r = api.evaluate(a.bundle, test=a.test, protocol=protocol_for(name), models=a.models,
                         epochs=a.epochs, seed=0, device="cpu",
                         baseline="random" if baseline else None)
        res = r["baseline"] if baseline else r["result"]
        if baseline and name in done:  # the same set, seed and judge: the same figures
            again = r["result"]["accuracy_per_model"]
            print(f"{name} again with the baseline: {again} (first: {done[name]['per_model']})",
                  file=sys.stderr)
        done[key] = {"knobs": ROWS[name], "protocol": r["protocol"]["name"],
                     "mean": res["accuracy_mean"], "std": res["accuracy_std"],
                     "per_model": res["accuracy_per_model"]}
        atomic_write_bytes(a.out, json.dumps(done, indent=1).encode())
        print(f"{key}: {res['accuracy_mean']:.2f} ± {res['accuracy_std']:.2f} "
              f"{res['accuracy_per_model']}", file=sys.stderr, flush=True)

    for name in a.rows:
        judge(name, name, False)
    if a.baseline is not None:
        best = max((n for n in a.rows if n in done), key=lambda n: done[n]["mean"])
        for name in a.baseline or dict.fromkeys(["default", best]):
            judge(f"random-real@{name}", name, True)
    for key, v in done.items():
        print(f"| {key} | {v['knobs']} | {v['mean']:.2f} ± {v['std']:.2f} "
              f"({', '.join(f'{x:.1f}' for x in v['per_model'])}) |")


if __name__ == "__main__":
    run_main(main)
