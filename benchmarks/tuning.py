"""How much a tuning cell costs beyond its training, warm and cold: wall time of the whole cell
(process start or fork, imports, loading, training, dev loss and dev answers) over its
training seconds; with ``--shootouts``, also the wall time of the default shootout and of a
30-cell ``--sweep lr`` shootout, warm against cold.

Tuning cells skip what only the final runs need (forgetting, inference timing, saving the
adapter), so a sweep costs little more than the training it buys. Targets (issue 30): a warm
tuning cell's wall time at most 1.08 × its training seconds on tiny-zh with the default step
budget, and the default ``leitai run`` at least 20% faster warm than cold.

    python benchmarks/tuning.py --json tuning.json                 # about 16 minutes on 2 idle cores
    python benchmarks/tuning.py --shootouts --json tuning.json     # add the two shootouts, warm and cold
    python benchmarks/tuning.py --shootouts default --json tuning.json   # only the default shootout's
    python benchmarks/tuning.py --shootouts default --repeat 3 --no-cells   # the default shootout, 3 times each way
    python benchmarks/tuning.py --shootouts sweep --no-cells       # the --sweep lr shootout, once each way
    python benchmarks/tuning.py --shootouts --steps 2 --extra="--task-size 16 --side-corpus none --infer-prompts 0"
                                                                   # a quick check that it runs, not a figure

Each way (``warm``: cells forked from the warm-start server, the default; ``cold``:
``--cold-start``, a fresh process per cell) runs one shootout with one tuning setting per
method (``--sweep METHOD.lr=<its default>``), so every method has one tuning cell and one final
cell trained on the same batches, and reads each cell's wall time from its files: ``cell.json``
is written just before the cell's process starts, ``record.json`` last, when it ends. Run it on
an otherwise idle machine.

With ``--shootouts``, each shootout runs ``--repeat`` times each way, cold then warm, and the
figures are the medians: the wall time, and the time outside training (the wall time less its
cells' training seconds), which is the part warm starts change. On 2 cores the training seconds
of the same cells vary by 10-15% from run to run, as much as the effect being measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

METHODS = "full,lora,lst,p-tuning,prefix-tuning,prompt-tuning"
WAYS = {"cold": ["--cold-start"], "warm": []}  # cold first, so that a warming machine does not favour warm


def leitai_run(out: Path, args: list[str]) -> float:
    """Wall seconds of ``leitai run ARGS --out OUT``."""
    cmd = [sys.executable, "-m", "suite.cli", "run", "-q", "--out", str(out), *args]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "LEITAI_PROGRESS": "0"})
    return time.perf_counter() - start


def cell_rows(out: Path) -> pd.DataFrame:
    rows = []
    for rec_path in sorted(out.glob("runs/*/record.json")):
        record = json.loads(rec_path.read_text(encoding="utf-8"))
        wall = rec_path.stat().st_mtime - (rec_path.parent / "cell.json").stat().st_mtime
        m = record["metrics"]
        rows.append({"method": record["method"], "phase": record.get("phase", "final"), "status": record["status"],
                     "start": record.get("env", {}).get("cell_start"), "wall_s": wall, "train_s": m.get("train_seconds"),
                     "ratio": wall / m["train_seconds"] if m.get("train_seconds") else None})
    return pd.DataFrame(rows).sort_values(["phase", "method"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--steps", type=int, help="training steps per cell (default: the shootout's 150)")
    p.add_argument("--task", default="zh-sentiment")
    p.add_argument("--shootouts", nargs="?", const="all", choices=["default", "sweep", "all"],
                   help="also time the default shootout and/or a --sweep lr shootout (30 tuning cells), warm and cold")
    p.add_argument("--repeat", type=int, default=1, help="run each shootout this many times each way, "
                   "alternating, and report the medians (training time on a small machine varies by 10-15%%)")
    p.add_argument("--no-cells", action="store_true", help="skip the per-cell figures (only --shootouts)")
    p.add_argument("--extra", default="", help="more leitai run flags for every shootout (a quick check: "
                   "--extra='--task-size 16 --side-corpus none --infer-prompts 0')")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from suite.plugins import registry

    methods = args.methods.split(",")
    defaults = {m: registry().methods[m].defaults["lr"] for m in methods}
    steps = ["--max-steps", str(args.steps)] if args.steps else []
    extra = shlex.split(args.extra) + steps
    tmp = Path(tempfile.mkdtemp(prefix="leitai-tuning-bench-"))
    sweeps = [a for m in methods for a in ("--sweep", f"{m}.lr={defaults[m]}")]
    figures: dict = {"steps": args.steps or 150, "task": args.task, "extra": args.extra, "cells": {}}
    for way, flags in ({} if args.no_cells else WAYS).items():
        out = tmp / f"cells-{way}"
        total = leitai_run(out, ["--methods", args.methods, "--tasks", args.task, "--no-baselines", *sweeps, *extra, *flags])
        df = cell_rows(out)
        assert set(df.start) == {way}, f"the {way} shootout's cells started {set(df.start)}"
        tune = df[df.phase == "tune"]
        print(f"\n{way}:\n" + df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"{way}: tuning cells wall / training seconds {tune.ratio.min():.2f}–{tune.ratio.max():.2f} "
              f"(mean {tune.ratio.mean():.2f}); final cells {df[df.phase == 'final'].ratio.mean():.2f}; "
              f"shootout {total:.0f} s")
        figures["cells"][way] = {"rows": df.to_dict("records"), "tuning_ratio_mean": float(tune.ratio.mean()),
                                 "final_ratio_mean": float(df[df.phase == "final"].ratio.mean()),
                                 "shootout_seconds": total}
    if args.shootouts:
        shootouts = {"default shootout": [], "--sweep lr shootout": ["--sweep", "lr"]}  # each way: 5, 20 minutes
        shootouts = {k: v for k, v in shootouts.items() if args.shootouts in ("all", k.split()[0].strip("-"))}
        for name, what in shootouts.items():
            runs: dict[str, list[dict]] = {way: [] for way in WAYS}
            for r in range(args.repeat):  # cold then warm, again: drift of the machine hits both ways
                for way, flags in WAYS.items():
                    out = tmp / f"{name.replace(' ', '-').strip('-')}-{way}-{r}"
                    wall = leitai_run(out, [*what, *extra, *flags])
                    cells = cell_rows(out)
                    assert set(cells.start) == {way}, f"the {way} {name}'s cells started {set(cells.start)}"
                    runs[way].append({"wall_s": wall, "train_s": float(cells.train_s.sum()),
                                      "outside_s": wall - float(cells.train_s.sum()), "cells": len(cells),
                                      "tuning_cells": int((cells.phase == "tune").sum())})
                    print(f"{name}, {way} #{r + 1}: {wall:.0f} s, of which training {runs[way][-1]['train_s']:.0f} s")
            med = {way: {k: statistics.median(run[k] for run in runs[way]) for k in ("wall_s", "outside_s")} for way in WAYS}
            faster = 1 - med["warm"]["wall_s"] / med["cold"]["wall_s"]
            print(f"{name} ({runs['warm'][0]['cells']} cells, {runs['warm'][0]['tuning_cells']} tuning; median of "
                  f"{args.repeat}): cold {med['cold']['wall_s']:.0f} s, warm {med['warm']['wall_s']:.0f} s, warm is "
                  f"{100 * faster:.0f}% faster; outside training cold {med['cold']['outside_s']:.0f} s, "
                  f"warm {med['warm']['outside_s']:.0f} s")
            figures[name] = {"runs": runs, "median": med, "warm_faster_by": faster}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
