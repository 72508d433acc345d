#!/usr/bin/env bash
# On a CUDA machine: every built-in method (LST included) on a randomly initialised Qwen2-0.5B-shaped model,
# float32 weights under bf16 autocast, a fixed number of steps, then LoRA again on the same base in bf16
# (--dtype bfloat16, CUDA's default; what trains stays float32), and QLoRA: LoRA on the same base
# quantized to NF4 (--quantize nf4, bf16 compute; needs bitsandbytes: pip install -e '.[quantize]',
# else the row is left out with a note), full fine-tuning with 8-bit AdamW (--optimizer adamw8bit), and
# full fine-tuning sharded over every GPU of the machine (--gpus-per-cell N --shard fsdp; N = the GPUs
# nvidia-smi lists, left out on one GPU); prints tokens/s, peak
# allocated/reserved memory and weight bytes per run, leitai plan's predicted peak against the measured
# one for LoRA, full fine-tuning and LST; then benchmarks/throughput.py on the same model: the arena against a bare torch loop
# and against HF Trainer + PEFT (ratios a/b, a/c) with model FLOPs utilisation (MFU, PaLM's
# formula, in that script's docstring). Under 8 minutes on one H100. Run from the repository root:
#     bash benchmarks/gpu_shootout.sh [extra leitai run flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Without network, leitai may not be pip-installed; then load the built-ins by module name.
if ! python -c "from importlib.metadata import entry_points as e; assert any(e(group='leitai'))" 2>/dev/null; then
    export LEITAI_PLUGINS="plugins.methods.lora,plugins.methods.prefix_tuning,plugins.methods.p_tuning,plugins.methods.prompt_tuning,plugins.methods.full,plugins.methods.lst,plugins.models.tiny_zh,plugins.tasks.zh_sentiment${LEITAI_EXTRA_BUILTINS:+,$LEITAI_EXTRA_BUILTINS}"
fi
export LEITAI_PLUGINS="benchmarks.random_models${LEITAI_PLUGINS:+,$LEITAI_PLUGINS}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
OUT=${OUT:-/tmp/leitai-gpu-shootout}
rm -rf "$OUT" "$OUT-bf16" "$OUT-nf4" "$OUT-8bit" "$OUT-fsdp"
GPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 1)
SHOOTOUT=(--model random-qwen2-0.5b --device cuda --tasks zh-sentiment --max-steps "${STEPS:-40}" --batch-size 16
          --task-size 1024 -q)
python -m suite.cli run "${SHOOTOUT[@]}" --dtype float32 --out "$OUT" "$@"
# the bf16 row: LoRA (or the methods given) with the base's weights in bf16
python -m suite.cli run "${SHOOTOUT[@]}" --methods lora --out "$OUT-bf16" "$@" --dtype bfloat16
# the QLoRA row: LoRA on the base quantized to NF4 (4-bit weights, bf16 compute)
DIRS=("$OUT" "$OUT-bf16")
if python -c "import bitsandbytes" 2>/dev/null; then
    python -m suite.cli run "${SHOOTOUT[@]}" --methods lora --out "$OUT-nf4" "$@" --dtype bfloat16 --quantize nf4
    DIRS+=("$OUT-nf4")
    # the 8-bit AdamW row: full fine-tuning with two bytes of optimiser state per parameter
    python -m suite.cli run "${SHOOTOUT[@]}" --methods full --out "$OUT-8bit" "$@" --optimizer adamw8bit
    DIRS+=("$OUT-8bit")
else
    echo "QLoRA and 8-bit AdamW rows left out: bitsandbytes is not installed (pip install -e '.[quantize]')"
fi
# the sharded row: full fine-tuning over every GPU (FSDP2), memory per GPU against the plan
if [ "$GPUS" -ge 2 ]; then
    python -m suite.cli run "${SHOOTOUT[@]}" --methods full --out "$OUT-fsdp" "$@" --gpus-per-cell "$GPUS" --shard fsdp \
        --devices "$(seq -s, 0 $((GPUS - 1)))"
    DIRS+=("$OUT-fsdp")
else
    echo "sharded row left out: one GPU"
fi
python - "${DIRS[@]}" <<'PY'
import sys
import pandas as pd
r = pd.concat([pd.read_csv(f"{d}/results.csv") for d in sys.argv[1:]], ignore_index=True)
r["s/step"] = r.train_seconds / r.steps
r["shard"] = r["shard"].fillna("-") if "shard" in r else "-"
cols = ["method", "weights_dtype", "shard", "s/step", "status", "trainable_params", "tokens_per_second", "peak_memory_bytes",
        "peak_memory_reserved_bytes", "weights_bytes", "optimizer_bytes", "predicted_peak_bytes", "train_seconds",
        "final_train_loss"]
t = r[cols].copy()
for c in ("peak_memory_bytes", "peak_memory_reserved_bytes", "weights_bytes", "optimizer_bytes", "predicted_peak_bytes"):
    t[c] = (t[c] / 2**30).round(2)
t = t.rename(columns={"weights_dtype": "weights", "peak_memory_bytes": "alloc GiB (per GPU)",
                      "peak_memory_reserved_bytes": "reserved GiB", "weights_bytes": "weights GiB",
                      "optimizer_bytes": "optimizer GiB", "predicted_peak_bytes": "planned GiB"})
print(t.to_markdown(index=False, floatfmt=",.1f"))
PY

# leitai plan on the GPU: each cell's predicted_peak_bytes (the planner at the cell's first batch,
# CUDA's kernels and autocast) against torch.cuda.max_memory_allocated (peak_memory_bytes), for
# three methods on the Qwen2-0.5B-shaped model; docs/plan.md
python - "${DIRS[@]}" <<'PY'
import sys
import pandas as pd
r = pd.concat([pd.read_csv(f"{d}/results.csv") for d in sys.argv[1:]], ignore_index=True)
r = r[(r.status == "ok") & r.method.str.split().str[0].isin(["lora", "full", "lst"])
      & (r.memory_kind == "cuda_max_allocated")]
t = r[["method", "weights_dtype", "peak_memory_bytes", "predicted_peak_bytes"]].copy()
t["predicted / measured"] = t.predicted_peak_bytes / t.peak_memory_bytes
for c in ("peak_memory_bytes", "predicted_peak_bytes"):
    t[c] = (t[c] / 2**30).round(3)
print(t.rename(columns={"peak_memory_bytes": "max allocated GiB", "predicted_peak_bytes": "predicted GiB"})
      .to_markdown(index=False, floatfmt=".3f"))
PY

# Throughput: arena (a) vs bare loop (b) vs HF Trainer + PEFT (c), bf16 autocast, with MFU
# (peak bf16 FLOP/s from the card's name; override with PEAK_TFLOPS=...).
python benchmarks/throughput.py --model random-qwen2-0.5b --device cuda --methods lora,full \
    --steps "${THROUGHPUT_STEPS:-60}" --batch-size 16 --task-size 1024 \
    ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"} --json "$OUT/throughput.json"
echo "throughput figures: $OUT/throughput.json"
