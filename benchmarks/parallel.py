"""How much faster a grid finishes with more local workers (and whether results change).

Runs the same grid (default: lora and full, 4 seeds each = 8 cells on the default task) with
``--workers 1`` and ``--workers N``, each into a fresh directory, and prints wall seconds,
the speed-up and whether every run's losses agree. With ``--ray`` the grid also runs on a
local Ray cluster.

    python benchmarks/parallel.py [--workers 2] [--steps 40] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def run(out: Path, args, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "suite.cli", "run", "--methods", args.methods, "--seeds", str(args.seeds),
           "--max-steps", str(args.steps), "--out", str(out), "-q", *extra]
    if not args.after_use:  # the grid's scheduling is what is measured, not the per-cell extras
        cmd += ["--infer-prompts", "0", "--side-corpus", "none"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ray", action="store_true", help="also run the grid on a local Ray cluster")
    p.add_argument("--after-use", action="store_true",
                   help="also measure forgetting and inference cost in every cell (off by default)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    ways = {"workers 1": ["--workers", "1"], f"workers {args.workers}": ["--workers", str(args.workers)]}
    if args.ray:
        ways["ray"] = ["--executor", "ray", "--cpus-per-cell", "1"]
    rows, frames = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in ways.items():
            out = Path(tmp) / name.replace(" ", "")
            seconds = run(out, args, extra)
            r = pd.read_csv(out / "results.csv").set_index("run_id").sort_index()
            frames[name] = r[["first_train_loss", "final_train_loss", "eval_loss"]]
            rows.append({"way": name, "cells": len(r), "ok": int((r.status == "ok").sum()), "wall_seconds": round(seconds, 1)})
    base = rows[0]["wall_seconds"]
    for row in rows:
        row["speedup"] = round(base / row["wall_seconds"], 2)
    first = next(iter(frames.values()))
    same = {name: bool(((f - first).abs() <= 1e-5 * first.abs().clip(lower=1)).all().all()) for name, f in frames.items()}
    table = pd.DataFrame(rows)
    table["same_losses"] = table.way.map(same)
    print(table.to_markdown(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "same_losses": same, "settings": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
