"""Training throughput of the arena against a bare torch loop and against HF Trainer + PEFT.

Three ways train the same model with the same method on the same examples of a task, for the
same number of steps of the same batch size, with the same AdamW, warm-up + cosine schedule
and gradient clipping:

- ``arena``: leitai's own training path: the task's cached encodings (``suite.data.prepared``), the
  arena's length-grouped batch order (``suite.data.batches.batch_order``) and ``suite.cell.train.train``
  (accelerate; the output head only at answer positions; loss read back every 10 steps);
- ``bare``: a hand-written torch loop over exactly the arena's batches, collated into tensors
  in memory before the clock starts, computing the same answer-only loss by hand: the floor,
  so ``arena / bare`` is what the arena itself costs;
- ``trainer``: ``transformers.Trainer`` on the PEFT model (or the plain model for ``full``)
  with a plain padding collator (each random batch padded to its longest example, as in
  ChatGLM-Tuning's script): what users would otherwise run;
- ``arena-gc`` (optional): the arena with ``--gradient-checkpointing``, to show its cost.

Each run is a fresh process; runs alternate (a b c, then c b a, ...) so that machine drift hits
every way alike. Tokens/s counts non-padding tokens over the training loop's wall time
(set-up, model loading and tokenisation excluded for every way).

Model FLOPs utilisation (with ``--peak-tflops`` or on a known GPU), the PaLM formula
(Chowdhery et al. 2022, appendix B)::

    MFU = (6·N + 12·L·H·Q·T) · tokens/s / peak FLOP/s

N: the base model's parameters that take part in matmuls (the input embedding table left
out unless it is tied to the output head); L layers, H heads, Q head dimension, T the mean
tokens per example. This is the full forward + backward of every token (the convention):
LoRA skips the frozen weights' gradients and the arena skips the output head at prompt
positions, so the hardware does less work than this counts.

``--mode scaling`` measures how cost grows instead: a shootout (``leitai run``) of 1, 2, 4 and
8 cells, and the arena's training step at sequence lengths 128, 256 and 512.

Run from the repository root::

    python benchmarks/throughput.py --json throughput.json
    python benchmarks/throughput.py --mode scaling --json scaling.json
    python benchmarks/throughput.py --model random-llama --hidden 512 --layers 8 --steps 30
    python benchmarks/throughput.py --model random-qwen2-0.5b --device cuda --json gpu.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from suite.measures.resources import tail_mean  # noqa: E402  (the shootout's own final-loss figure)

WAYS = ("arena", "bare", "trainer")
#: dense bf16 peak TFLOP/s by a substring of torch.cuda.get_device_name (first match wins)
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
BUILTINS = ("methods.full", "methods.lora", "methods.prefix_tuning", "methods.p_tuning", "methods.prompt_tuning",
            "methods.lst", "models.tiny_zh", "tasks.zh_sentiment", "tasks.zh_idiom", "tasks.zh_segment", "tasks.zh_ner",
            "tasks.zh_t2s", "tasks.zh_numbers")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="compare", choices=["compare", "scaling"])
    p.add_argument("--model", default="tiny-zh",
                   help="tiny-zh (default), random-llama (shape from --hidden/--layers...), or any leitai model name")
    p.add_argument("--methods", default="lora,full", help="comma-separated (default: %(default)s)")
    p.add_argument("--task", default="zh-sentiment")
    p.add_argument("--task-size", default="default", help="as leitai run --task-size")
    p.add_argument("--ways", default=",".join(WAYS), help="arena,bare,trainer and optionally arena-gc")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=1, help="runs of every way (alternating order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (bf16 on GPU) for MFU")
    p.add_argument("--hidden", type=int, default=512, help="random-llama: hidden size")
    p.add_argument("--layers", type=int, default=8, help="random-llama: layers")
    p.add_argument("--heads", type=int, default=None, help="random-llama: heads (default hidden / 64)")
    p.add_argument("--ffn", type=int, default=None, help="random-llama: MLP width (default 2.75 x hidden)")
    p.add_argument("--cells", default="1,2,4,8", help="scaling: shootout sizes")
    p.add_argument("--cell-steps", type=int, default=30, help="scaling: steps per cell")
    p.add_argument("--seq-lens", default="128,256,512", help="scaling: sequence lengths")
    p.add_argument("--seq-steps", type=int, default=6, help="scaling: steps per sequence length")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- in the child: one way, one method ---------------------------------------------------

def registry():
    from suite.plugins import load_registry

    extra = [importlib.import_module(f"plugins.{m}") for m in BUILTINS]  # also without entry points
    extra.append(importlib.import_module("benchmarks.random_models"))
    return load_registry(extra=extra)


def load_model(args, reg):
    """``(model, tokenizer)`` in float32 on the CPU."""
    from suite.models import loading as models

    if args.model == "random-llama":
        from benchmarks.random_models import random_llama

        model, tokenizer = random_llama(args.hidden, args.layers, args.heads, args.ffn, args.max_len)
    else:
        model, tokenizer = models.resolve(args.model, reg).load()
    return model, models.prepare_tokenizer(tokenizer)


def model_flops_per_token(model, tokens_per_example: float) -> dict:
    """PaLM's model FLOPs per token: 6·N + 12·L·H·Q·T (see the module docstring)."""
    from suite.measures.resources import count_parameters

    c = model.config
    total = count_parameters(model)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    n = total if tied else total - embed.numel()
    layers, heads = c.num_hidden_layers, c.num_attention_heads
    q = getattr(c, "head_dim", None) or c.hidden_size // heads
    attention = 12 * layers * heads * q * tokens_per_example
    return {"N": n, "L": layers, "H": heads, "Q": q, "T": tokens_per_example,
            "flops_per_token": 6 * n + attention}


def child(args) -> dict:
    import torch
    from transformers import set_seed

    from suite.config.settings import ShootoutConfig
    from suite.data import batches as data
    from suite.data import prepared as taskdata
    from suite.data.user_files import resolve_task
    from suite.methods.method import method_params

    torch.set_num_threads(int(os.environ.get("LEITAI_THREADS", torch.get_num_threads())))
    reg = registry()
    method = reg.get("methods", args.method)
    params = method_params(method, None)
    task = resolve_task(args.task, reg)
    base, tokenizer = load_model(args, reg)
    sizes = ShootoutConfig(task_size=args.task_size).sizes_for(task)
    prepared = taskdata.prepare(task, sizes, args.max_len, tokenizer)
    order = data.batch_order([e.length for e in prepared.train], args.batch_size, args.steps, args.seed)
    batches = [[prepared.train[i] for i in b] for b in order]
    mean_len = sum(e.length for b in batches for e in b) / sum(len(b) for b in batches)
    flops = model_flops_per_token(base, mean_len)
    if args.child == "arena-gc":
        from suite.models.loading import enable_gradient_checkpointing

        enable_gradient_checkpointing(base)
    set_seed(args.seed)
    if args.child == "trainer":
        model, out = run_trainer(args, method, params, base, tokenizer, prepared.train)
    else:
        model = method.apply(base, dict(params))
        run = run_bare if args.child == "bare" else run_arena
        out = run(args, model, batches, tokenizer.pad_token_id, float(params["lr"]))
    out["dev_loss"] = dev_loss(args, model, prepared.dev, tokenizer.pad_token_id)  # not timed
    out.update(way=args.child, method=args.method, flops=flops, mean_tokens_per_example=mean_len,
               data_cached=prepared.cached, data_seconds=prepared.seconds)
    return out


def tail_stderr(losses: list[float], frac: float = 0.1) -> float | None:
    """Standard error of :func:`tail_mean`: how much the final loss moves with the batches."""
    tail = losses[-max(1, int(len(losses) * frac)):]
    if len(tail) < 2:
        return None
    mean = sum(tail) / len(tail)
    return (sum((x - mean) ** 2 for x in tail) / (len(tail) - 1) / len(tail)) ** 0.5


def dev_loss(args, model, dev, pad_id) -> float:
    """The trained model's loss on the task's dev split (the same for every way; not timed)."""
    import torch

    from suite.data.batches import eval_batches
    from suite.measures.loss import mean_loss

    device = torch.device(args.device)
    model.to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return mean_loss(model, eval_batches(dev, 32), pad_id, device)


def run_arena(args, model, batches, pad_id, lr) -> dict:
    from accelerate import Accelerator

    from suite.cell.train import TrainSettings, train

    cpu = args.device == "cpu"
    accelerator = Accelerator(cpu=cpu, mixed_precision="no" if cpu else "bf16")
    result = train(model, batches, pad_id, TrainSettings(lr=lr), accelerator)
    return {"seconds": result.seconds, "tokens": result.tokens, "losses": result.losses,
            "final_loss": tail_mean(result.losses), "final_loss_stderr": tail_stderr(result.losses),
            "answer_head": result.answer_head, **result.breakdown,
            "padded_tokens": sum(len(b) * max(e.length for e in b) for b in batches)}


def run_bare(args, model, batches, pad_id, lr) -> dict:
    """The floor: a hand-written loop over the arena's batches, pre-collated on the device."""
    import torch
    import torch.nn.functional as F

    from suite.data.batches import IGNORE, collate

    device = torch.device(args.device)
    model.to(device).train()
    built = []
    for items in batches:  # the batches and where their loss is, ready before the clock starts
        b = {k: v.to(device) for k, v in collate(items, pad_id).items()}
        keep = b["labels"][:, 1:] != IGNORE
        rows, cols = keep.nonzero(as_tuple=True)
        built.append((b["input_ids"], b["attention_mask"], rows, cols, b["labels"][:, 1:][keep]))
    tokens = sum(int(b[1].sum()) for b in built)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm, steps = math.ceil(0.1 * len(built)), len(built)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s / max(1, warm) if s < warm else max(
        0.0, 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))))
    head = model.get_output_embeddings()
    where = {}
    hook = head.register_forward_pre_hook(  # the head only at answer positions, as the arena does
        lambda m, a: (a[0][where["rows"], where["cols"] + a[0].shape[1] - where["width"]],))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for ids, mask, rows, cols, targets in built:
        where.update(rows=rows, cols=cols, width=ids.shape[1])
        with autocast:
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    losses = torch.stack(losses).float().cpu().tolist()  # the one host sync
    seconds = time.perf_counter() - start
    hook.remove()
    return {"seconds": seconds, "tokens": tokens, "losses": losses, "final_loss": tail_mean(losses),
            "final_loss_stderr": tail_stderr(losses), "padded_tokens": sum(b[0].numel() for b in built)}


def run_trainer(args, method, params, base, tokenizer, train_set) -> dict:
    """HF Trainer + PEFT with a plain padding collator: the usual fine-tuning script."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from suite.data.batches import IGNORE
    from suite.methods.peft_method import PeftMethod

    if isinstance(method, PeftMethod):
        from peft import get_peft_model

        model = get_peft_model(base, method.peft_config(base, dict(params)))
    else:  # full fine-tuning
        model = base
        for p in model.parameters():
            p.requires_grad_(True)
    pad = tokenizer.pad_token_id
    counted = []

    def collator(features):  # pad every batch to its longest example (ChatGLM-Tuning's collator)
        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        labels = [f["labels"] + [IGNORE] * (width - len(f["labels"])) for f in features]
        counted.append((sum(len(f["input_ids"]) for f in features), width * len(features)))
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}

    dataset = [{"input_ids": e.prompt + e.answer, "labels": [IGNORE] * len(e.prompt) + e.answer} for e in train_set]
    clock = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            if torch.cuda.is_available() and args.device == "cuda":
                torch.cuda.synchronize()
            clock["end"] = time.perf_counter()

    log_every = max(1, args.steps // 10)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=float(params["lr"]), lr_scheduler_type="cosine", warmup_steps=math.ceil(0.1 * args.steps),
            weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", logging_steps=log_every,
            save_strategy="no", report_to=[], disable_tqdm=True, seed=args.seed, data_seed=args.seed,
            use_cpu=args.device == "cpu", bf16=args.device == "cuda", dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator,
                          callbacks=[Clock()])
        trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    return model, {"seconds": clock["end"] - clock["start"], "tokens": sum(c[0] for c in counted[:steps]),
            "padded_tokens": sum(c[1] for c in counted[:steps]), "logged_losses": logged,
            "final_loss": logged[-1] if logged else None}  # the mean of the last tenth of the steps


# -- in the parent: alternate the ways, then the table -------------------------------------

def spawn(args, way: str, method: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", way, "--method", method]
    for key in ("model", "task", "task_size", "steps", "batch_size", "max_len", "seed", "device",
                "hidden", "layers", "heads", "ffn"):
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TOKENIZERS_PARALLELISM": "false", "LEITAI_PROGRESS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{method}/{way}: failed: {error}", file=sys.stderr)
        return {"way": way, "method": method, "error": error}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)
    return None


def compare(args) -> dict:
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    runs = []
    for method in args.methods.split(","):
        for r in range(args.rounds):
            for way in (ways if r % 2 == 0 else ways[::-1]):
                started = time.perf_counter()
                out = spawn(args, way, method)
                out["round"] = r
                runs.append(out)
                if "error" not in out:
                    print(f"{method}/{way} round {r}: {out['tokens'] / out['seconds']:,.0f} tokens/s, "
                          f"final loss {out['final_loss']:.4f}, dev loss {out['dev_loss']:.4f} "
                          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return summarise(runs, ways, peak_tflops(args))


def summarise(runs: list[dict], ways: list[str], peak: float | None) -> dict:
    results = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        per_way = {}
        for way in ways:
            ok = [r for r in runs if r["method"] == method and r["way"] == way and "error" not in r]
            if not ok:
                continue
            tps = [r["tokens"] / r["seconds"] for r in ok]
            mean_tps = sum(tps) / len(tps)
            w = {
                "tokens_per_second": mean_tps, "tokens_per_second_runs": tps,
                "wall_seconds": sum(r["seconds"] for r in ok) / len(ok),
                "final_loss": sum(r["final_loss"] for r in ok) / len(ok),
                "final_loss_runs": [r["final_loss"] for r in ok],
                "final_loss_stderr": ok[0].get("final_loss_stderr"),
                "dev_loss": sum(r["dev_loss"] for r in ok) / len(ok),
                "tokens": ok[0]["tokens"], "padding_efficiency": ok[0]["tokens"] / ok[0]["padded_tokens"],
                "model_tflops_per_second": ok[0]["flops"]["flops_per_token"] * mean_tps / 1e12,
            }
            if "activation_bytes" in ok[0]:
                w["activation_bytes"] = ok[0]["activation_bytes"]
            if peak:
                w["mfu"] = w["model_tflops_per_second"] / peak
            per_way[way] = w
        ratios = {}
        for name, other in (("arena_vs_bare", "bare"), ("arena_vs_trainer", "trainer"), ("gc_vs_arena", "arena-gc")):
            if "arena" in per_way and other in per_way:
                a, o = per_way["arena"]["tokens_per_second"], per_way[other]["tokens_per_second"]
                ratios[name] = o / a if name == "gc_vs_arena" else a / o
        flops = next(r["flops"] for r in runs if r["method"] == method and "flops" in r)
        results[method] = {"ways": per_way, "ratios": ratios, "flops": flops}
    return {"results": results, "runs": runs, "peak_tflops": peak}


def compare_table(doc: dict) -> str:
    import pandas as pd

    rows = []
    for method, res in doc["results"].items():
        for way, w in res["ways"].items():
            row = {"method": method, "way": way, "tokens/s": round(w["tokens_per_second"]),
                   "wall s": round(w["wall_seconds"], 1), "final loss": round(w["final_loss"], 4),
                   "± (s.e.)": round(w["final_loss_stderr"], 4) if w.get("final_loss_stderr") else "",
                   "dev loss": round(w["dev_loss"], 4),
                   "non-pad share": round(w["padding_efficiency"], 3),
                   "model TFLOP/s": round(w["model_tflops_per_second"], 4)}
            if "activation_bytes" in w:
                row["saved for backward MiB"] = round(w["activation_bytes"] / 2**20, 1)
            if "mfu" in w:
                row["MFU"] = f"{100 * w['mfu']:.1f}%"
            if len(w["tokens_per_second_runs"]) > 1:
                row["tokens/s runs"] = " ".join(f"{t:,.0f}" for t in w["tokens_per_second_runs"])
            rows.append(row)
    lines = [pd.DataFrame(rows).to_markdown(index=False), ""]
    for method, res in doc["results"].items():
        lines.append(f"{method}: " + ", ".join(f"{k} = {v:.3f}" for k, v in res["ratios"].items()))
    return "\n".join(lines)


# -- scaling: cells and sequence lengths ----------------------------------------------------

def scaling(args) -> dict:
    cells = []
    # the first shootout on a machine also fills caches (task data, matplotlib's fonts): untimed
    for n in [0] + [int(c) for c in args.cells.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "suite.cli", "run", "--methods", args.methods.split(",")[0],
                   "--tasks", args.task, "--model", args.model, "--seeds", str(max(n, 1)),
                   "--max-steps", str(args.cell_steps),
                   "--batch-size", str(args.batch_size), "--out", f"{tmp}/out", "-q"]
            env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"leitai run failed: {proc.stderr[-500:]}")
            recs = [json.loads(p.read_text()) for p in Path(tmp, "out", "runs").glob("*/record.json")]
        if n == 0:
            continue
        m = [r["metrics"] for r in recs]
        cells.append({"cells": n, "wall_seconds": wall, "train_seconds": sum(x["train_seconds"] for x in m),
                      "data_seconds": sum(x.get("data_seconds", 0) for x in m),
                      "data_cached": sum(bool(x.get("data_cached")) for x in m)})
        print(f"{n} cells: {wall:.0f} s", file=sys.stderr)
    seqs = []
    for length in [int(s) for s in args.seq_lens.split(",")]:
        out = json.loads(subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", f"seq-{length}", "--method", args.methods.split(",")[0],
             "--model", args.model, "--steps", str(args.seq_steps), "--batch-size", str(args.batch_size),
             "--device", args.device, "--max-len", str(length)],
            capture_output=True, text=True, cwd=ROOT, check=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
        ).stdout.strip().splitlines()[-1])
        seqs.append(out)
        print(f"seq {length}: {out['tokens_per_second']:,.0f} tokens/s", file=sys.stderr)
    counts, walls = [c["cells"] for c in cells], [c["wall_seconds"] for c in cells]
    fit = fit_line(counts, walls) if len(cells) > 1 else (0.0, walls[0])
    return {"cells": cells, "fit": fit, "seq_lens": seqs}


def seq_child(args, length: int) -> dict:
    """The arena's training step on batches of unpadded sequences of ``length`` tokens (the last
    quarter the answer), random token ids of the model's vocabulary."""
    import torch
    from accelerate import Accelerator
    from transformers import set_seed

    from suite.cell.train import TrainSettings, train
    from suite.data.batches import Encoded
    from suite.methods.method import method_params

    reg = registry()
    method = reg.get("methods", args.method)
    params = method_params(method, None)
    base, tokenizer = load_model(args, reg)
    set_seed(args.seed)
    model = method.apply(base, dict(params))
    g = torch.Generator().manual_seed(1)
    answer = length // 4

    def item(i):
        ids = torch.randint(3, len(tokenizer), (length - 1,), generator=g).tolist()
        return Encoded(str(i), ids[: length - answer], ids[length - answer:] + [tokenizer.eos_token_id])

    batches = [[item(s * args.batch_size + i) for i in range(args.batch_size)] for s in range(args.steps)]
    cpu = args.device == "cpu"
    result = train(model, batches, tokenizer.pad_token_id, TrainSettings(lr=float(params["lr"])),
                   Accelerator(cpu=cpu, mixed_precision="no" if cpu else "bf16"))
    return {"seq_len": length, "batch_size": args.batch_size, "steps": args.steps,
            "seconds_per_step": result.seconds / args.steps, "tokens_per_second": result.tokens / result.seconds,
            "activation_bytes": result.breakdown.get("activation_bytes")}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x``: a shootout's fixed cost and its cost per cell."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return my - b * mx, b


def scaling_table(doc: dict) -> str:
    import pandas as pd

    c = pd.DataFrame(doc["cells"])
    out = pd.DataFrame({
        "cells": c["cells"], "wall s": c["wall_seconds"].round(1),
        "s / cell": (c["wall_seconds"] / c["cells"]).round(1),
        "training s / cell": (c["train_seconds"] / c["cells"]).round(1),
        "data s / cell": (c["data_seconds"] / c["cells"]).round(2),
        "cells with cached data": c["data_cached"],
    })
    fixed, per_cell = doc["fit"]
    s = pd.DataFrame(doc["seq_lens"])
    seq = pd.DataFrame({
        "seq len": s["seq_len"], "s / step": s["seconds_per_step"].round(2),
        "tokens/s": s["tokens_per_second"].round(0).astype(int),
        "saved for backward MiB": (s["activation_bytes"] / 2**20).round(1),
    })
    return (out.to_markdown(index=False) + f"\n\nwall ≈ {fixed:.1f} s + cells × {per_cell:.1f} s\n\n"
            + seq.to_markdown(index=False))


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        os.environ.setdefault("LEITAI_PROGRESS", "0")
        if args.child.startswith("seq-"):
            print(json.dumps(seq_child(args, int(args.child[4:]))))
        else:
            print(json.dumps(child(args)))
        return 0
    import torch

    from suite.cell.provenance import environment

    started = time.perf_counter()
    doc = compare(args) if args.mode == "compare" else scaling(args)
    print(compare_table(doc) if args.mode == "compare" else scaling_table(doc))
    doc.update(setup=vars(args) | {"json": str(args.json) if args.json else None},
               env=environment(torch.device(args.device), "float32" if args.device == "cpu" else "bf16-autocast"),
               seconds=time.perf_counter() - started)
    if args.mode == "compare" and doc["results"]:  # the headline figures (first method) at the top level
        first = next(iter(doc["results"]))
        doc["ratios"] = {"method": first, **doc["results"][first]["ratios"]}
        doc["ways"] = doc["results"][first]["ways"]
    print(f"({doc['seconds']:.0f} s)", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
