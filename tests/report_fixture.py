"""Hand-written run records for the report tests: two tasks, two seeds, every status, a Chinese
method name, hostile text, and one run on a different torch. No training involved."""
from __future__ import annotations

import json
from pathlib import Path

PWNED = "<script>window.leitaiPwned = 1</script>"
ERROR_HTML = '<img src="x" onerror="window.leitaiPwned = 2">'
CJK_METHOD = "前缀调优"
LORA_INFO = {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj"], "targets_from": "found by role"}
FALLBACK = f"init='prune' cannot read the backbone's weights {PWNED}"


def env(torch="2.13.0"):
    return {
        "versions": {"leitai": "0.1.0", "torch": torch, "transformers": "5.23.0", "peft": "0.21.2",
                     "accelerate": "1.12.0"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567", "device": "cpu",
        "device_name": "Test CPU", "dtype": "float32",
    }


def record(task, method, seed, status="ok", score=None, dev=None, memory=50e6, params=1000, error=None,
           outputs=None, skip_ids=(), torch="2.13.0", extra=None, info=None):
    """One record as ``suite.cell.run`` writes it (ok runs) or as the runner writes a crash."""
    rid = f"{task}__{method}__s{seed}"
    r = {"run_id": rid, "method": method, "task": task, "seed": seed, "model": "tiny-zh", "status": status,
         "error": error, "config": {"method": method, "params": {"lr": 1e-3}, "steps": 20, "batch_size": 4,
                                    "max_len": 64, "task_sizes": {"train": 16}, "model": "tiny-zh"},
         "metrics": {}, "curve": [], "generations": [], "env": env(torch)}
    if info:
        r["method_info"] = info  # Method.run_info, as the cell records it after the guards
    if status in ("failed",) and error and "exited" in error:
        r["env"] = {}  # a crashed cell process recorded nothing about its machine
        r["config"] = {"method": method, "params": {"lr": 1e-3}}
        return r
    if status == "ok":
        r["metrics"] = {
            "trainable_params": params, "total_params": 100_000, "trainable_pct": 100 * params / 100_000,
            "adapter_bytes": params * 4 + 1000, "peak_memory_bytes": memory, "memory_kind": "cpu_peak_rss_delta",
            "train_seconds": 10.0 + seed, "train_tokens": 5000, "tokens_per_second": 5000 / (10.0 + seed),
            "first_train_loss": 9.0, "final_train_loss": 3.0 - 0.1 * seed, "eval_loss": dev, "score_name": "accuracy",
            "score": score, "weights_bytes": 400_000, "steps": 20, "lr": 1e-3, **(extra or {}),
        }
        r["curve"] = [{"step": s, "split": "train", "loss": 9.0 - 0.3 * s + 0.05 * seed} for s in range(1, 21)]
        r["curve"].append({"step": 20, "split": "dev", "loss": dev})
        ids = [f"ex{i}" for i in range(1, 11) if f"ex{i}" not in skip_ids]
        r["generations"] = [
            {"example_id": i, "prompt": f"Instruction: 这条评论是正面还是负面？\nInput: 评论{i}"
             + (f" {PWNED}" if i == "ex1" else "") + "\nAnswer: ",
             "reference": "正面" if int(i[2:]) % 2 else "负面",
             "output": (outputs or {}).get(i, f"{method}-s{seed}-{i}")}
            for i in ids
        ]
    elif status in ("oom", "diverged"):
        r["metrics"] = {"trainable_params": params, "total_params": 100_000}
    return r


def records() -> list[dict]:
    t, u = "zh-demo", "zh-other"
    return [
        # lora: two ok seeds (0.6, 0.7) and a failed one
        record(t, "lora", 0, score=0.6, dev=2.0, memory=50e6, info=LORA_INFO),
        record(t, "lora", 1, score=0.7, dev=2.2, memory=60e6, info=LORA_INFO),
        record(t, "lora", 2, status="failed", error=f"RuntimeError: broken on purpose {ERROR_HTML}"),
        # full: one ok, one out of memory
        record(t, "full", 0, score=0.9, dev=1.5, memory=400e6, params=100_000),
        record(t, "full", 1, status="oom", error="OutOfMemoryError: CUDA out of memory", params=100_000),
        # a Chinese method name; its seed 0 lacks ex3; seed 1 ran on another torch
        record(t, CJK_METHOD, 0, score=0.5, dev=2.5, memory=40e6, params=500, skip_ids=("ex3",),
               info={"init": "prune"}),
        record(t, CJK_METHOD, 1, score=0.5, dev=2.5, memory=40e6, params=500, torch="2.12.0",
               info={"init": "random", "fallback": FALLBACK}),
        # a method that never ran: its cell process died
        record(t, "crasher", 0, status="failed", error="cell process exited with status 3: boom"),
        record(t, "nanner", 0, status="diverged", error="non-finite training loss at step 4"),
        # a second task, so that there is an overall table
        record(u, "lora", 0, score=0.4, dev=3.0, extra={"forgetting_delta": 0.25}),
        record(u, "full", 0, score=0.8, dev=2.0, memory=400e6, params=100_000, extra={"forgetting_delta": 0.5}),
        record(u, CJK_METHOD, 0, status="failed", error="ValueError: nope"),
    ]


def write(out: Path, recs: list[dict]) -> Path:
    for r in recs:
        p = Path(out) / "runs" / r["run_id"] / "record.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r, ensure_ascii=False, indent=1), encoding="utf-8")
    return Path(out)
