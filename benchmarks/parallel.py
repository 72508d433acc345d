"""How much faster a grid finishes with more local workers (and whether results change).

Runs the same grid (default: lora and full, 4 seeds each = 8 cells on the default task) with
``--workers 1`` and ``--workers N``, each into a fresh directory, and prints wall seconds,
the speed-up, whether every run's losses and forgetting agree, and the mean inference overhead
each way measured (a timing, so it may differ by noise, not systematically). With ``--ray`` the
grid also runs on a local Ray cluster. The cells are the ones ``leitai run`` runs, forgetting and
inference timing included; ``--train-only`` leaves those two out. Each local way runs twice,
warm (cells forked from the warm-start server, the default) and cold (``--cold-start``, a fresh
process per cell), unless ``--warm-only``; the speed-up is against ``workers 1`` cold.

    python benchmarks/parallel.py [--workers 2] [--steps 40] [--train-only] [--ray] [--one-thread] [--warm-only]
                                  [--task-size N] [--json PATH]
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
    if args.train_only:
        cmd += ["--infer-prompts", "0", "--side-corpus", "none"]
    if args.task_size:
        cmd += ["--task-size", args.task_size]
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
    p.add_argument("--train-only", action="store_true",
                   help="leave forgetting and inference timing out of every cell")
    p.add_argument("--one-thread", action="store_true",
                   help="also run one worker with one torch thread per cell, the thread count each of 2 workers gets on 2 cores")
    p.add_argument("--warm-only", action="store_true", help="leave out the cold-start runs of each local way")
    p.add_argument("--task-size", help="leitai run's --task-size (default: the task's default; 16 for a quick check)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    local = {"workers 1": ["--workers", "1"], f"workers {args.workers}": ["--workers", str(args.workers)]}
    if args.one_thread:  # the same cells one worker, one thread each: how well cells themselves overlap
        local["workers 1, 1 thread"] = ["--workers", "1", "--cpus-per-cell", "1"]
    ways = {}
    for name, extra in local.items():  # cold first: the speed-ups are against one worker, cold
        if not args.warm_only:
            ways[f"{name}, cold"] = [*extra, "--cold-start"]
        ways[f"{name}, warm"] = extra
    if args.ray:
        ways["ray"] = ["--executor", "ray", "--cpus-per-cell", "1"]
    rows, frames = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in ways.items():
            out = Path(tmp) / name.replace(" ", "")
            seconds = run(out, args, extra)
            r = pd.read_csv(out / "results.csv").set_index("run_id").sort_index()
            compared = ["first_train_loss", "final_train_loss", "eval_loss"] + ([] if args.train_only else ["forgetting"])
            frames[name] = r[compared]
            row = {"way": name, "cells": len(r), "ok": int((r.status == "ok").sum()), "wall_seconds": round(seconds, 1)}
            if not args.train_only:
                row["mean_infer_overhead"] = round(float(r.infer_overhead.mean()), 2)
            rows.append(row)
    base = rows[0]["wall_seconds"]
    for row in rows:
        row["speedup"] = round(base / row["wall_seconds"], 2)
    first = next(iter(frames.values()))
    same = {name: bool(((f - first).abs() <= 1e-5 * first.abs().clip(lower=1)).all().all()) for name, f in frames.items()}
    table = pd.DataFrame(rows)
    table["same_losses_forgetting"] = table.way.map(same)
    print(table.to_markdown(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "same_losses": same, "settings": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
