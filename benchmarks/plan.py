"""``leitai plan`` against what the arena measures, and on real-size configs.

1. Predicted against measured on tiny-zh: one shootout of every method (``leitai run
   --methods all``), whose records carry both ``peak_memory_bytes`` (CPU: the training loop's
   peak RSS over the RSS before it) and ``predicted_peak_bytes`` (the planner's, at the cell's
   first batch, on the same basis: weights left out on the CPU); a table per method with the
   ratio, and the exact-equality columns (weights, gradients, optimizer state) and activations.
2. ``--real-size``: Qwen2-7B- and GLM-4-9B-shaped configs built from transformers' config
   classes (no download) saved to ``--configs``, and ``leitai plan --methods
   lora,full,prefix-tuning,lst --batch-size 4 --max-len 1024 --dtype bfloat16`` on each, in a
   process of its own: its wall time and peak RSS (the issue asks under a minute, under 1 GB).

Run from the repository root, on an idle machine::

    python benchmarks/plan.py --json plan.json
    python benchmarks/plan.py --real-size --skip-measured

Timings are only meaningful on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELLS_ONLY = ["--no-baselines", "--side-corpus", "none", "--infer-prompts", "0"]
#: real-size shapes, from the models' published config.json files
REAL_SIZE = {
    "qwen2-7b": ("Qwen2Config", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                     max_position_embeddings=32768, tie_word_embeddings=False)),
    "glm-4-9b": ("Glm4Config", dict(hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
                                    num_attention_heads=32, num_key_value_heads=2, head_dim=128, vocab_size=151552,
                                    max_position_embeddings=32768, partial_rotary_factor=0.5, attention_bias=True,
                                    tie_word_embeddings=False)),
}
PLAN_ARGS = ["--methods", "lora,full,prefix-tuning,lst", "--batch-size", "4", "--max-len", "1024",
             "--dtype", "bfloat16", "--memory", "24GiB"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "LEITAI_PROGRESS": "0"}


def measured(args) -> list[dict]:
    import pandas as pd

    out = Path(tempfile.mkdtemp(prefix="leitai-plan-bench-"))
    cmd = [sys.executable, "-m", "suite.cli", "run", "--model", "tiny-zh", "--methods", args.methods,
           "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--task-size", str(args.task_size),
           *CELLS_ONLY, "--out", str(out), "-q"]
    subprocess.run(cmd, check=True, env=env(), cwd=ROOT)
    r = pd.read_csv(out / "results.csv")
    r = r[r.status == "ok"]
    rows = []
    for _, x in r.sort_values("method").iterrows():
        record = json.loads((out / "runs" / x.run_id / "record.json").read_text(encoding="utf-8"))
        plan = record.get("plan") or {}
        exact = all(plan.get(k) == x[k] for k in ("weights_bytes", "grads_bytes", "optimizer_bytes"))
        rows.append({"method": x.method, "weights, grads, optimizer equal": "yes" if exact else "NO",
                     "activations predicted / measured": plan.get("activation_bytes", float("nan")) / x.activation_bytes,
                     "measured MiB": x.peak_memory_bytes / 2**20, "predicted MiB": x.predicted_peak_bytes / 2**20,
                     "predicted / measured": x.predicted_peak_bytes / x.peak_memory_bytes, "memory kind": x.memory_kind})
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f"))
    return rows


def real_size(args) -> list[dict]:
    import transformers

    rows = []
    for name, (cls, sizes) in REAL_SIZE.items():
        directory = Path(args.configs) / name
        getattr(transformers, cls)(**sizes).save_pretrained(directory)
        cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "suite.cli", "plan", "--model", str(directory),
               *PLAN_ARGS, "--chart", str(directory / "plan.png")]
        start = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT)
        seconds = time.perf_counter() - start
        print(p.stdout)
        if p.returncode:
            print(p.stderr, file=sys.stderr)
        rss = int(p.stderr.strip().splitlines()[-1]) * 1024 if p.stderr.strip() else None
        rows.append({"config": name, "seconds": round(seconds, 1), "peak RSS MiB": rss and round(rss / 2**20),
                     "status": p.returncode})
        print(f"{name}: {seconds:.1f} s, peak RSS {rss and rss / 2**20:.0f} MiB (command included start-up)")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="all")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--task-size", type=int, default=128)
    ap.add_argument("--real-size", action="store_true", help="also plan the real-size configs")
    ap.add_argument("--skip-measured", action="store_true", help="no shootout (only --real-size)")
    ap.add_argument("--configs", default=str(Path(tempfile.gettempdir()) / "leitai-plan-configs"))
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    result = {}
    if not args.skip_measured:
        result["measured"] = measured(args)
    if args.real_size:
        result["real_size"] = real_size(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
