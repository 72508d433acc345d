"""Every report file of the output contract, rebuilt from ``runs/*/record.json`` alone."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .records import read_records

RESULT_COLUMNS = (
    "run_id method task seed model status error trainable_params total_params trainable_pct "
    "adapter_bytes peak_memory_bytes memory_kind train_seconds train_tokens tokens_per_second "
    "first_train_loss final_train_loss eval_loss score_name score"
).split()
EXTRA_COLUMNS = (
    "peak_memory_reserved_bytes weights_bytes grads_bytes optimizer_bytes activation_bytes "
    "steps lr truncated_examples device device_name dtype"
).split()


def results_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ("run_id", "method", "task", "seed", "model", "status", "error")}
        row.update(r.get("metrics", {}))
        env = r.get("env", {})
        row.update(device=env.get("device"), device_name=env.get("device_name"), dtype=env.get("dtype"))
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in RESULT_COLUMNS + EXTRA_COLUMNS:
        if col not in df:
            df[col] = None
    extra = [c for c in df.columns if c not in RESULT_COLUMNS + EXTRA_COLUMNS]
    df = df[RESULT_COLUMNS + EXTRA_COLUMNS + extra]
    return df.sort_values(["task", "method", "seed"], kind="stable").reset_index(drop=True)


def curves_frame(records: list[dict]) -> pd.DataFrame:
    rows = [{"run_id": r["run_id"], **point} for r in records for point in r.get("curve", [])]
    return pd.DataFrame(rows, columns=["run_id", "step", "split", "loss"])


def generations_frame(records: list[dict]) -> pd.DataFrame:
    rows = [{"run_id": r["run_id"], **g} for r in records for g in r.get("generations", [])]
    return pd.DataFrame(rows, columns=["run_id", "example_id", "prompt", "reference", "output"])


SUMMARY = {
    "trainable_params": "trainable params",
    "trainable_pct": "trainable %",
    "peak_memory_bytes": "peak memory (MB)",
    "train_seconds": "seconds",
    "tokens_per_second": "tokens/s",
    "first_train_loss": "first loss",
    "final_train_loss": "final loss",
    "eval_loss": "dev loss",
    "score": "score",
}


def summary_tables(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per task: one row per method, means over the seeds that finished ``ok``."""
    tables = {}
    for task, df in results.groupby("task", sort=True):
        ok = df[df.status == "ok"].copy()
        ok["peak_memory_bytes"] = pd.to_numeric(ok["peak_memory_bytes"]) / 1e6
        numeric = ok.groupby("method")[list(SUMMARY)].agg(lambda s: pd.to_numeric(s).mean())
        table = numeric.rename(columns=SUMMARY)
        statuses = df.groupby("method")["status"].agg(lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().items()))
        table.insert(0, "runs", statuses)
        score_name = df["score_name"].dropna().iloc[0] if df["score_name"].notna().any() else "score"
        table = table.rename(columns={"score": score_name}).sort_values(score_name, ascending=False, na_position="last")
        tables[task] = table
    return tables


def _fmt(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    for col in out.columns:
        if col == "trainable params":
            out[col] = out[col].map(lambda v: f"{int(v):,}" if pd.notna(v) else "–")
        elif col != "runs":
            out[col] = out[col].map(lambda v: f"{v:.4g}" if pd.notna(v) else "–")
    return out


def write_report(dirs: list[Path], out: Path) -> pd.DataFrame:
    """Read the records of ``dirs`` and write every report file into ``out``."""
    records = [r for d in dirs for r in read_records(Path(d))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = results_frame(records)
    results.to_csv(out / "results.csv", index=False)
    results.astype({c: "string" for c in ("error", "memory_kind", "device_name", "dtype")}).to_parquet(
        out / "results.parquet", index=False
    )
    curves_frame(records).to_csv(out / "curves.csv", index=False)
    generations_frame(records).to_csv(out / "generations.csv", index=False)
    tables = summary_tables(results) if len(results) else {}
    (out / "summary.md").write_text(_summary_md(results, tables), encoding="utf-8")
    (out / "report.html").write_text(_report_html(results, tables), encoding="utf-8")
    return results


def _summary_md(results: pd.DataFrame, tables: dict) -> str:
    lines = ["# leitai shootout", ""]
    if results.empty:
        return "\n".join(lines + ["No finished runs yet.", ""])
    models = ", ".join(sorted(results.model.dropna().unique()))
    lines += [f"Model: {models}. Runs: {len(results)} ({(results.status == 'ok').sum()} ok).", ""]
    for task, table in tables.items():
        lines += [f"## {task}", "", _fmt(table).to_markdown(), ""]
    bad = results[results.status != "ok"]
    if len(bad):
        lines += ["## Runs that did not finish ok", ""]
        lines += [f"- `{r.run_id}`: **{r.status}**: {r.error}" for r in bad.itertuples()]
        lines.append("")
    return "\n".join(lines)


def _report_html(results: pd.DataFrame, tables: dict) -> str:
    parts = ["<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>leitai shootout</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>",
             "<h1>leitai shootout</h1>"]
    for task, table in tables.items():
        parts += [f"<h2>{html.escape(task)}</h2>", _fmt(table).to_html(escape=True)]
    bad = results[results.status != "ok"] if len(results) else results
    if len(bad):
        parts.append("<h2>Runs that did not finish ok</h2><ul>")
        parts += [f"<li><code>{html.escape(str(r.run_id))}</code>: <b>{html.escape(str(r.status))}</b>: "
                  f"{html.escape(str(r.error))}</li>" for r in bad.itertuples()]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
