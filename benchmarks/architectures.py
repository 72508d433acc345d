"""Every built-in method, with its defaults, on tiny random models of many architectures.

    python benchmarks/architectures.py [--kinds a,b] [--methods a,b] [--out DIR] [--json PATH]
                                       [--side-corpus NAME] [--workers N]

For each architecture a randomly initialised model (2 layers, width 64; seed 0) is built from
transformers' own config class, saved with tiny-zh's tokenizer (vocabulary 9,674) to
``DIR/models/KIND``, and a new user's command is run on it::

    leitai run --model DIR/models/KIND --max-steps 4 --task-size 16 --infer-prompts 0

with every built-in method (``--side-corpus none`` leaves out the forgetting measurement, which
takes most of a tiny cell's time; ``--workers 2`` runs two cells at once). Prints the table architecture x method (``ok`` or ``failed:`` and
the error), with the modules LoRA adapted and the initialisation LST ran (from each run's
``method_info``). The set is the tests' (``suite.testing.ALL_ARCHITECTURES``) and the
architectures below, which the tests leave out. Nothing is downloaded. Exit status 1 when a
cell did not finish ok.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_W = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_G = dict(_W, num_key_value_heads=2, head_dim=16)
#: architectures the tests do not build: (transformers config class, sizes)
EXTRA = {
    "gemma3_text": ("Gemma3TextConfig", _G),
    "olmo": ("OlmoConfig", _W),
    "cohere": ("CohereConfig", _G),
    "starcoder2": ("Starcoder2Config", _G),
    "granite": ("GraniteConfig", dict(_G, logits_scaling=4.0)),
    "gpt_neo": ("GPTNeoConfig", dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                     attention_types=[[["global", "local"], 1]], window_size=16)),
    "helium": ("HeliumConfig", _G),
    "smollm3": ("SmolLM3Config", _G),
    "exaone4": ("Exaone4Config", _G),
    "ernie4_5": ("Ernie4_5Config", _G),
    "nemotron": ("NemotronConfig", _G),
    "persimmon": ("PersimmonConfig", _W),
    "xglm": ("XGLMConfig", dict(d_model=64, num_layers=2, attention_heads=4, ffn_dim=128)),
    "biogpt": ("BioGptConfig", _W),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", _G),
    "bitnet": ("BitNetConfig", _G),
    "qwen2_moe": ("Qwen2MoeConfig", dict(_G, moe_intermediate_size=64, shared_expert_intermediate_size=128,
                                         num_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(_G, moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2)),
    "glm4_moe": ("Glm4MoeConfig", dict(_G, moe_intermediate_size=64, n_routed_experts=4, num_experts_per_tok=2,
                                       first_k_dense_replace=1)),
}


def config_of(kind: str, tokenizer):
    """The tiny config of ``kind`` with the tokenizer's vocabulary and special tokens."""
    import transformers

    from suite.testing import ALL_ARCHITECTURES, tiny_config

    vocab = len(tokenizer)
    if kind in ALL_ARCHITECTURES:
        config = tiny_config(kind, vocab_size=vocab)
    elif kind in EXTRA:
        cls, sizes = EXTRA[kind]
        config = getattr(transformers, cls)(**sizes, vocab_size=vocab)
    else:
        raise SystemExit(f"unknown architecture {kind!r} (known: {', '.join(ALL_ARCHITECTURES + tuple(EXTRA))})")
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    for key in ("max_position_embeddings", "n_positions"):  # room for any prompt and answer
        if getattr(config, key, None):
            setattr(config, key, 1024)
    return config


def save_model(kind: str, directory: Path) -> str:
    """Save the tiny random model of ``kind`` with tiny-zh's tokenizer; returns its class name."""
    import torch
    from transformers import AutoModelForCausalLM

    from plugins.models.tiny_zh import TinyZh

    _, tokenizer = TinyZh().load()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind, tokenizer), dtype=torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return type(model).__name__


def built_in_methods() -> list[str]:
    from suite.plugins import load_registry

    reg = load_registry()
    return sorted(n for n in reg.methods if reg.plugins[reg.origin[("methods", n)]].source.startswith("leitai "))


def run(kind: str, methods: list[str], out: Path, extra: list[str]) -> dict:
    """Save the model of ``kind``, run the shootout on it (``extra``: more flags); the outcome
    of each method."""
    import pandas as pd

    model_dir = out / "models" / kind
    cls = save_model(kind, model_dir)
    runs = out / "runs" / kind
    cmd = [sys.executable, "-m", "suite.cli", "run", "--model", str(model_dir), "--methods", ",".join(methods),
           "--max-steps", "4", "--task-size", "16", "--infer-prompts", "0", "--out", str(runs), "-q", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "LEITAI_PROGRESS": "0"})
    row = {"kind": kind, "class": cls, "seconds": round(time.perf_counter() - start, 1), "cells": {}}
    if proc.returncode != 0 or not (runs / "results.csv").exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        row["cells"] = {m: {"status": "failed", "error": f"leitai run exited {proc.returncode}: {tail}"} for m in methods}
        return row
    results = pd.read_csv(runs / "results.csv").set_index("method")
    for m in methods:
        r = results.loc[m] if m in results.index else None
        info = r["method_info"] if r is not None and isinstance(r["method_info"], str) else None
        row["cells"][m] = {"status": r["status"] if r is not None else "missing",
                           "error": r["error"] if r is not None and isinstance(r["error"], str) else None,
                           "method_info": json.loads(info) if info else None}
    return row


def cell_text(cell: dict) -> str:
    if cell["status"] == "ok":
        return "ok"
    return f"**{cell['status']}**: {(cell['error'] or '').replace('|', '/')[:160]}"


def what_ran(row: dict) -> tuple[str, str]:
    """LoRA's targets (and where they came from) and LST's init, from the records."""
    lora = (row["cells"].get("lora") or {}).get("method_info") or {}
    lst = (row["cells"].get("lst") or {}).get("method_info") or {}
    targets = ", ".join(lora.get("target_modules") or []) or "–"
    if lora.get("targets_from") == "found by role":
        targets += " (by role)"
    init = lst.get("init", "–") + (" (MLP random)" if lst.get("init") == "prune" and lst.get("fallback") else "")
    if lst.get("init") == "random" and lst.get("fallback"):
        init += " (fallback)"
    return targets, init


def table(rows: list[dict], methods: list[str]) -> str:
    head = ["architecture", *methods, "LoRA targets", "LST init"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [cell_text(row["cells"][m]) for m in methods]
        lines.append("| " + " | ".join([f"{row['kind']} (`{row['class']}`)", *cells, *what_ran(row)]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from suite.testing import ALL_ARCHITECTURES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", help="comma-separated architectures (default: the tests' and EXTRA)")
    p.add_argument("--methods", help="comma-separated methods (default: every built-in method)")
    p.add_argument("--out", type=Path, default=Path("reports/architectures"))
    p.add_argument("--json", type=Path, help="write every outcome here")
    p.add_argument("--side-corpus", help="passed to leitai run (none: no forgetting measurement)")
    p.add_argument("--workers", type=int, help="passed to leitai run: cells at once")
    p.add_argument("--shard", type=int, metavar="N", help="passed to leitai run as --gpus-per-cell N --shard fsdp: "
                   "each cell sharded over N processes (gloo on the CPU)")
    args = p.parse_args(argv)
    extra = [*(["--side-corpus", args.side_corpus] if args.side_corpus else []),
             *(["--workers", str(args.workers)] if args.workers else []),
             *(["--gpus-per-cell", str(args.shard), "--shard", "fsdp"] if args.shard else [])]
    kinds = args.kinds.split(",") if args.kinds else list(ALL_ARCHITECTURES) + list(EXTRA)
    methods = args.methods.split(",") if args.methods else built_in_methods()
    rows = []
    for kind in kinds:
        row = run(kind, methods, args.out, extra)
        rows.append(row)
        bad = [m for m, c in row["cells"].items() if c["status"] != "ok"]
        print(f"{kind}: {row['seconds']} s, " + (f"not ok: {', '.join(bad)}" if bad else "all ok"), flush=True)
    print()
    print(table(rows, methods))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return 0 if all(c["status"] == "ok" for r in rows for c in r["cells"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
