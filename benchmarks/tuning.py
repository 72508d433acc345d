"""How much a tuning cell costs beyond its training: wall time of the whole cell (process start,
imports, loading, training, dev loss and dev answers) over its training seconds.

Tuning cells skip what only the final runs need (forgetting, inference timing, saving the
adapter), so a sweep costs little more than the training it buys. Target: a tuning cell's wall
time at most 1.2 × its training seconds on tiny-zh with the default step budget.

    python benchmarks/tuning.py --json tuning.json          # about 8 minutes on 2 idle cores

It runs one shootout with one tuning setting per method (``--sweep METHOD.lr=<its default>``),
so every method has one tuning cell and one final cell trained on the same batches, and reads
each cell's wall time from its files: ``cell.json`` is written just before the cell's process
starts, ``record.json`` last, when it ends. Run it on an otherwise idle machine.
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

METHODS = "full,lora,lst,p-tuning,prefix-tuning,prompt-tuning"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--steps", type=int, default=150, help="training steps per cell (default: the shootout's 150)")
    p.add_argument("--task", default="zh-sentiment")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from suite.plugins import registry

    methods = args.methods.split(",")
    defaults = {m: registry().methods[m].defaults["lr"] for m in methods}
    out = Path(tempfile.mkdtemp(prefix="leitai-tuning-bench-")) / "out"
    sweeps = [a for m in methods for a in ("--sweep", f"{m}.lr={defaults[m]}")]
    cmd = [sys.executable, "-m", "suite.cli", "run", "--methods", args.methods, "--tasks", args.task,
           "--max-steps", str(args.steps), "--no-baselines", "-q", "--out", str(out), *sweeps]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**__import__("os").environ, "LEITAI_PROGRESS": "0"})
    total = time.perf_counter() - start

    rows = []
    for rec_path in sorted(out.glob("runs/*/record.json")):
        record = json.loads(rec_path.read_text(encoding="utf-8"))
        wall = rec_path.stat().st_mtime - (rec_path.parent / "cell.json").stat().st_mtime
        m = record["metrics"]
        rows.append({"method": record["method"], "phase": record.get("phase", "final"), "status": record["status"],
                     "wall_s": wall, "train_s": m.get("train_seconds"),
                     "ratio": wall / m["train_seconds"] if m.get("train_seconds") else None})
    df = pd.DataFrame(rows).sort_values(["phase", "method"])
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    tune = df[df.phase == "tune"]
    print(f"\ntuning cells: wall / training seconds {tune.ratio.min():.2f}–{tune.ratio.max():.2f} "
          f"(mean {tune.ratio.mean():.2f}); final cells {df[df.phase == 'final'].ratio.mean():.2f}; "
          f"shootout {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "task": args.task, "rows": rows,
                                               "shootout_seconds": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
