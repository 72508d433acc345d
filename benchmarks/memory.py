"""Training memory of full fine-tuning, LoRA, prefix tuning and LST where activations dominate,
and what a bfloat16 base saves (``--dtypes float32,bfloat16``).

A randomly initialised LLaMA config (hidden 512, 8 layers, tiny-zh's vocabulary by default),
batches of 8 unpadded sequences of 256 tokens (the last quarter of each is the answer that
carries the loss). Each method runs in a fresh process of its own, through the arena's own
code: the method plugin's ``apply``, ``suite.cell.train.train`` (AdamW, the same step as in a
shootout) inside ``suite.measures.resources.PeakMemory``, so every figure means what it means in a
shootout's results:

- ``peak_memory_bytes``: CPU peak RSS during training minus RSS just before (docs/measures.md);
  on CUDA ``max_memory_allocated``;
- ``activation_bytes``: bytes autograd saves for backward in one step (unique storages,
  parameters excluded), with ``grads_bytes`` and ``optimizer_bytes`` beside it;
- ``trainable_params``: counted by the core;
- ``weights_bytes``: the model's parameters (tied ones once), in the dtypes they train in: the
  base in ``--dtypes``' dtype, what trains in float32 (cast by the core, as in a shootout);
- ``seconds_per_step``: the training loop's wall time over its steps (the first step also
  counts the bytes saved for backward); ``cpu_seconds_per_step``, the process's CPU time over
  the whole ``train`` call (its one-off answer-head check and the memory sampler included) per
  step, is steadier where other work shares the cores.

Run from the repository root::

    python benchmarks/memory.py --json memory.json
    python benchmarks/memory.py --methods lora --dtypes float32,bfloat16

It prints a table with each method's peak as a fraction of full fine-tuning's (at the same
dtype) and, with several ``--dtypes``, as a fraction of the same method's on a float32 base.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["full", "lora", "prefix-tuning", "lst"]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=None, help="default: hidden / 64")
    p.add_argument("--ffn", type=int, default=None, help="MLP width (default: 2.75 x hidden, as tiny-zh)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="training steps per method (the first sets up AdamW)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtypes", default="float32",
                   help="comma-separated dtypes the base loads in, each method run on each (float32, bfloat16, "
                        "float16; default: %(default)s); as in a shootout, a half-precision base trains under "
                        "autocast in its dtype and what trains is float32")
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)  # the child's one
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> dict:
    """Measure one method in this (fresh) process; returns its figures."""
    import torch
    from accelerate import Accelerator

    from benchmarks.random_models import random_llama
    from suite.cell.train import TrainSettings, train
    from suite.data import batches as data
    from suite.measures import resources
    from suite.methods.guards import check_method_output, trained_base_names
    from suite.methods.method import method_params
    from suite.models.precision import DTYPES, cast_weights, dtype_name, mixed_precision, upcast_trainable
    from suite.plugins import load_registry

    dtype = DTYPES[args.dtype]
    base, tokenizer = random_llama(args.hidden, args.layers, args.heads, args.ffn, args.seq)
    cast_weights(base, dtype)  # the same random weights, rounded
    total = resources.count_parameters(base)
    base_named = list(base.named_parameters())
    # the built-ins by module too, for a checkout that is not pip-installed (no entry points)
    builtins = [importlib.import_module(f"plugins.methods.{m}") for m in ("full", "lora", "prefix_tuning", "lst")]
    method = load_registry(extra=builtins).get("methods", args.child)
    params = method_params(method, None)
    trained = trained_base_names(method, base, params)
    model = method.apply(base, params)
    trainable = check_method_output(method, base_named, model, trained)
    upcast_trainable(model)  # as the cell does: what trains is float32

    g = torch.Generator().manual_seed(1)
    answer = args.seq // 4
    items = [data.Encoded(str(i), torch.randint(3, len(tokenizer), (args.seq - answer,), generator=g).tolist(),
                          torch.randint(3, len(tokenizer), (answer - 1,), generator=g).tolist() + [tokenizer.eos_token_id])
             for i in range(args.batch)]
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=mixed_precision(dtype, torch.device(args.device)))
    settings = TrainSettings(lr=float(params["lr"]), warmup=0.0, log_every=1)
    weights = resources.tensor_bytes(resources.unique_parameters(model))
    cpu_start = time.process_time()
    with resources.PeakMemory(accelerator.device) as peak:
        result = train(model, [items] * args.steps, tokenizer.pad_token_id, settings, accelerator,
                       method=method, params=params)
    cpu_seconds = time.process_time() - cpu_start
    return {
        "method": args.child, "dtype": args.dtype, "weights_dtype": dtype_name(p for p in model.parameters()
                                                                               if not p.requires_grad),
        "trainable_dtype": dtype_name(resources.unique_parameters(model, trainable_only=True)),
        "peak_memory_bytes": peak.peak, "peak_memory_reserved_bytes": peak.reserved,
        "memory_kind": peak.kind, "weights_bytes": weights, **result.breakdown,
        "trainable_params": trainable, "total_params": total, "seconds_per_step": result.seconds / len(result.losses),
        "cpu_seconds_per_step": cpu_seconds / len(result.losses),
        "losses": result.losses, "params": params,
    }


def run_all(args) -> dict:
    """Every method in a fresh child process; returns the JSON document."""
    import torch

    from suite.cell.provenance import environment
    from suite.models.precision import DTYPES, mixed_precision, precision_label

    dtypes = args.dtypes.split(",")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise SystemExit(f"--dtypes takes {', '.join(DTYPES)}, not {unknown[0]!r}")
    figures = {}
    for name, dtype in ((n, d) for n in args.methods.split(",") for d in dtypes):
        key = name if dtypes == ["float32"] else f"{name} {dtype}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--hidden", str(args.hidden),
               "--layers", str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq),
               "--steps", str(args.steps), "--device", args.device, "--dtype", dtype]
        for flag in ("heads", "ffn"):
            if getattr(args, flag):
                cmd += [f"--{flag}", str(getattr(args, flag))]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        if proc.returncode != 0:
            figures[key] = {"method": name, "dtype": dtype, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            print(f"{key}: failed: {figures[key]['error']}", file=sys.stderr)
            continue
        figures[key] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{key}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    setup = {k: getattr(args, k) for k in ("hidden", "layers", "heads", "ffn", "batch", "seq", "steps", "device", "dtypes")}
    device = torch.device(args.device)
    precision = " / ".join(precision_label(DTYPES[d], mixed_precision(DTYPES[d], device)) for d in dtypes)
    return {"setup": setup, "env": environment(device, precision), "methods": figures}


def table(doc: dict) -> str:
    import pandas as pd

    rows = [{"dtype": "float32", **m} for m in doc["methods"].values() if "error" not in m]
    if not rows:
        return "no method finished"
    t = pd.DataFrame(rows)
    peak = t.set_index(["method", "dtype"])["peak_memory_bytes"]
    full = [peak.get(("full", d)) for d in t["dtype"]]  # full fine-tuning's peak at the same dtype
    on_float32 = [peak.get((m, "float32")) for m in t["method"]]  # the same method's on a float32 base
    several = t["dtype"].nunique() > 1
    t = t.set_index(["method", "dtype"] if several else "method")
    mib = 2 ** 20
    out = pd.DataFrame({
        "trainable params": t["trainable_params"].map("{:,}".format),
        "peak MiB": (t["peak_memory_bytes"] / mib).round(1),
        "x full": (t["peak_memory_bytes"] / pd.Series(full, index=t.index, dtype=float)).round(3),
    })
    if several:
        out["x float32"] = (t["peak_memory_bytes"] / pd.Series(on_float32, index=t.index, dtype=float)).round(3)
        out["weights MiB"] = (t["weights_bytes"] / mib).round(1)
    out = out.assign(**{
        "saved for backward MiB": (t["activation_bytes"] / mib).round(1),
        "grads MiB": (t["grads_bytes"] / mib).round(1),
        "AdamW state MiB": (t["optimizer_bytes"] / mib).round(1),
        "s / step": t["seconds_per_step"].round(2),
        "CPU s / step": t["cpu_seconds_per_step"].round(2),
    })
    out = out.dropna(axis=1, how="all")  # "x full" without full fine-tuning in the run
    return out.reset_index().to_markdown(index=False) if several else out.to_markdown()


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    doc = run_all(args)
    print(table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0 if all("error" not in m for m in doc["methods"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
