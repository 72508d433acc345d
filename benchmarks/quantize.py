"""What a quantized base saves and costs: LoRA on tiny-zh with its base in float32, bfloat16,
NF4 and int8 (``--dtype`` and ``--quantize``), the same task, steps and seeds.

Each base is one ``leitai run`` (a process of its own, run one after another); the table is
read from their ``results.csv``: the base's weight bytes (as loaded: packed weights and their
quantization state), peak memory of training, seconds per training step and the task score,
means over the seeds. Time it on an idle machine (needs ``pip install 'leitai[quantize]'``)::

    python benchmarks/quantize.py --json quantize.json
    python benchmarks/quantize.py --steps 5 --task-size 16 --seeds 1   # a quick check that it runs

On the CPU, 4- and 8-bit layers dequantize in every forward pass, so a step is slower than on
a float base; the memory column is the process's resident-set growth there (CUDA: allocated).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

#: the bases compared: (row name, leitai flags)
BASES = (
    ("float32", ["--dtype", "float32"]),
    ("bfloat16", ["--dtype", "bfloat16"]),
    ("nf4", ["--dtype", "float32", "--quantize", "nf4"]),
    ("int8", ["--dtype", "float32", "--quantize", "int8"]),
)


def run(base_flags: list[str], out: Path, args) -> pd.DataFrame:
    cmd = [sys.executable, "-m", "suite.cli", "run", "--model", args.model, "--methods", args.method,
           "--tasks", args.task, "--max-steps", str(args.steps), "--seeds", str(args.seeds), "--task-size",
           args.task_size, "--no-baselines", "--side-corpus", "none", "--infer-prompts", "0", "--out", str(out),
           "-q", *base_flags]
    subprocess.run(cmd, check=True)
    return pd.read_csv(out / "results.csv")


def table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for name, r in frames.items():
        ok = r[r.status == "ok"]
        rows.append({
            "base": name, "weights": ok.weights_dtype.iloc[0] if len(ok) else None, "runs ok": f"{len(ok)}/{len(r)}",
            "weights MB": ok.weights_bytes.mean() / 1e6, "peak memory MB": ok.peak_memory_bytes.mean() / 1e6,
            "s/step": (ok.train_seconds / ok.steps).mean(), "score": ok.score.mean(),
        })
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-zh")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--task", default="zh-sentiment")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--task-size", default="default")
    parser.add_argument("--bases", default=",".join(n for n, _ in BASES), help="which rows, comma-separated")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    wanted = args.bases.split(",")
    with tempfile.TemporaryDirectory(prefix="leitai-quantize-bench-") as tmp:
        frames = {name: run(flags, Path(tmp) / name, args) for name, flags in BASES if name in wanted}
    result = table(frames)
    print(result.to_markdown(index=False, floatfmt=",.3g"))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(orient="records"), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
