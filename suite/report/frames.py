"""The long-format files of the output contract: ``results``, ``curves`` and ``generations``.

One row per run (results), per logged loss (curves) or per generated answer (generations),
straight from the records. Every aggregate the report shows is computed from these frames.
"""
from __future__ import annotations

import json
import numbers

import pandas as pd

RESULT_COLUMNS = (
    "run_id method task seed model status error trainable_params total_params trainable_pct "
    "adapter_bytes peak_memory_bytes memory_kind train_seconds train_tokens tokens_per_second "
    "first_train_loss final_train_loss eval_loss score_name score"
).split()
EXTRA_COLUMNS = (
    "peak_memory_reserved_bytes weights_bytes grads_bytes optimizer_bytes activation_bytes "
    "steps lr truncated_examples forgetting_before forgetting_after forgetting infer_ms_per_token "
    "infer_ms_per_token_base infer_ms_per_token_merged infer_overhead infer_overhead_merged "
    "device device_name dtype method_info"
).split()
TEXT_COLUMNS = ("run_id", "method", "task", "model", "status", "error", "memory_kind", "score_name",
                "device", "device_name", "dtype", "method_info")


def _scalar(value):
    """Metrics a plugin or a newer core adds may be lists or dicts: keep them, as JSON text."""
    if value is None or isinstance(value, (str, numbers.Number)):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def results_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run: the contract's columns, then the known extras, then any other metric.

    Metrics the report does not know are passed through (sorted by name), so a new measurement
    reaches ``results.csv`` without a change here.
    """
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ("run_id", "method", "task", "seed", "model", "status", "error")}
        row.update({k: _scalar(v) for k, v in (r.get("metrics") or {}).items() if k not in row})
        env = r.get("env") or {}
        row.update(device=env.get("device"), device_name=env.get("device_name"), dtype=env.get("dtype"))
        info = r.get("method_info")  # what the method chose (Method.run_info), as JSON text
        row["method_info"] = json.dumps(info, ensure_ascii=False) if info else None  # in the method's order
        rows.append(row)
    df = pd.DataFrame(rows)
    known = RESULT_COLUMNS + EXTRA_COLUMNS
    for col in known:
        if col not in df:
            df[col] = None
    df = df[known + sorted(c for c in df.columns if c not in known)]
    for col in df.columns:
        df[col] = _typed(df[col], text=col in TEXT_COLUMNS)
    return df.sort_values(["task", "method", "seed", "run_id"], kind="stable").reset_index(drop=True)


def _typed(col: pd.Series, text: bool) -> pd.Series:
    """Numbers as numbers, everything else as strings: one type per column (parquet needs it)."""
    values = col.dropna()
    is_number = values.map(lambda v: isinstance(v, numbers.Number) and not isinstance(v, bool))
    if not text and is_number.all():
        return pd.to_numeric(col)
    return col.map(lambda v: None if pd.isna(v) else str(v)).astype("string")


def curves_frame(records: list[dict]) -> pd.DataFrame:
    """``run_id, step, split, loss`` for every logged training step and the dev loss."""
    rows = [{"run_id": r["run_id"], **point} for r in records for point in r.get("curve") or []]
    df = pd.DataFrame(rows, columns=["run_id", "step", "split", "loss"])
    return df.sort_values(["run_id", "split", "step"], kind="stable").reset_index(drop=True)


def generations_frame(records: list[dict]) -> pd.DataFrame:
    """Every test prompt with its reference and each run's greedy answer."""
    rows = [
        {"run_id": r["run_id"], **{k: g.get(k) for k in ("example_id", "prompt", "reference", "output")}}
        for r in records for g in r.get("generations") or []
    ]
    return pd.DataFrame(rows, columns=["run_id", "example_id", "prompt", "reference", "output"])
