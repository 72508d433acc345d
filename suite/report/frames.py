"""The long-format files of the output contract: ``results``, ``curves`` and ``generations``.

One row per run (results), per logged loss (curves) or per generated answer (generations),
straight from the records. Every aggregate the report shows is computed from these frames.
"""
from __future__ import annotations

import json
import numbers

import pandas as pd

from ..config import variants

RESULT_COLUMNS = (
    "run_id method task seed model status error trainable_params total_params trainable_pct "
    "adapter_bytes peak_memory_bytes memory_kind train_seconds train_tokens tokens_per_second "
    "first_train_loss final_train_loss eval_loss score_name score"
).split()
EXTRA_COLUMNS = (
    "phase dev_score base_eval_loss choice_accuracy class_prior_loss probe_score format_share format_learned still_learning "
    "tail_slope tail_slope_p prepended_positions prepended_attention_share prepended_uniform_share "
    "peak_memory_reserved_bytes predicted_peak_bytes weights_bytes grads_bytes optimizer_bytes activation_bytes "
    "steps lr truncated_examples forgetting_before forgetting_after forgetting infer_ms_per_token "
    "infer_ms_per_token_base infer_ms_per_token_merged infer_overhead infer_overhead_merged "
    "device device_name dtype weights_dtype trainable_dtype method_info plain_method"
).split() + [s for s in variants.SETTINGS if s != "trainable_dtype"]  # the cell measures trainable_dtype
TEXT_COLUMNS = ("run_id", "method", "task", "model", "status", "error", "memory_kind", "score_name",
                "device", "device_name", "dtype", "weights_dtype", "phase", "method_info", "plain_method",
                "retention_tasks", *variants.SETTINGS)
#: a run's own identity: no metric of the same name replaces it
IDENTITY = ("run_id", "method", "task", "seed", "model", "status", "error", "phase", "plain_method")
#: what a trivial baseline is called in the tables, by kind (:func:`suite.data.tasks.trivial_answers`)
TRIVIAL_NAMES = {"majority": "majority label", "copy": "copy the input", "empty": "empty answer"}
#: what the linear probe on the frozen base (:func:`suite.measures.diagnostics.probe_baseline`) is called
PROBE = "linear probe"


def is_baseline(record: dict) -> bool:
    return record.get("phase") == "baseline"


def _float_first(records: list[dict]) -> list[dict]:
    """``records`` with those of no variant first (a baseline on the float base before one on
    a quantized base), otherwise in their order."""
    return sorted(records, key=lambda r: variants.suffix(r.get("config") or {}) != "")


def phase(record: dict) -> str:
    """A record's phase (records written before tuning existed are final runs)."""
    return record.get("phase") or "final"


def _scalar(value):
    """Metrics a plugin or a newer core adds may be lists or dicts: keep them, as JSON text."""
    if value is None or isinstance(value, (str, numbers.Number)):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def results_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run of a method, final and tuning runs (``phase``): the contract's columns,
    then the known extras, then any other metric. Baselines are not runs of a method: they are
    in :func:`baselines_frame`.

    Metrics the report does not know are passed through (sorted by name), so a new measurement
    reaches ``results.csv`` without a change here. ``method`` is the method's name with its
    variant's label (``full + replay 0.3``, :mod:`suite.config.variants`), so tables, figures and paired
    tests compare variants like methods; ``plain_method`` is the method's own name and the
    dimensions' settings (``replay``) have a column each. ``probe_score`` is the task's
    linear-probe baseline (from its baseline record), beside each run's own score. With
    ``--retention``, the base's retention (:func:`base_retention`) joins each run's
    (:func:`retention_columns`).
    """
    probes = {}
    for r in _float_first(records):  # the probe of the float base where there are several (as baselines_frame)
        if is_baseline(r) and r.get("status") == "ok" and r.get("probe"):
            probes.setdefault(r.get("task"), r["probe"].get("score"))
    rows, bases = [], base_retention(records)
    for r in records:
        if is_baseline(r):
            continue
        row = {k: r.get(k) for k in ("run_id", "method", "task", "seed", "model", "status", "error")}
        row["phase"] = phase(r)
        config = r.get("config") or {}
        row["method"], row["plain_method"] = variants.record_name(r), r.get("method")
        row.update({d.setting: config.get(d.setting, d.off) for d in variants.DIMENSIONS})
        # what the cell measured wins over what it was asked for (trainable_dtype is both)
        row.update({k: _scalar(v) for k, v in (r.get("metrics") or {}).items() if k not in IDENTITY})
        row["probe_score"] = probes.get(r.get("task"))
        env = r.get("env") or {}
        row.update(device=env.get("device"), device_name=env.get("device_name"), dtype=env.get("dtype"))
        info = r.get("method_info")  # what the method chose (Method.run_info), as JSON text
        row["method_info"] = json.dumps(info, ensure_ascii=False) if info else None  # in the method's order
        row.update(retention_columns(r, bases))  # --retention: the base's accuracy beside the run's
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


#: the columns of ``curves.csv``: every logged training step's loss; each dev evaluation's loss,
#: score and training seconds so far (``--eval-every``; the end's score for tuning runs)
CURVE_COLUMNS = ["run_id", "step", "split", "loss", "score", "seconds"]


def curves_frame(records: list[dict]) -> pd.DataFrame:
    """:data:`CURVE_COLUMNS` for every logged training step and every dev evaluation."""
    rows = [{"run_id": r["run_id"], **point} for r in records for point in r.get("curve") or []]
    df = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    return df.sort_values(["run_id", "split", "step"], kind="stable").reset_index(drop=True)


GENERATION_COLUMNS = ["run_id", "example_id", "turn", "prompt", "reference", "output", "example_score"]


def _generation(run_id: str, entry: dict) -> dict:
    return {"run_id": run_id, **{k: entry.get(k) for k in GENERATION_COLUMNS[1:]}, "turn": entry.get("turn") or 1}


def answer_key(rows: pd.DataFrame) -> pd.Series:
    """What tells the test answers of a generations frame apart: the example id, and for a
    conversation's later turns the turn (``"17 turn 2"``); the same across runs of a task."""
    turns = pd.to_numeric(rows.turn, errors="coerce").fillna(1).astype(int)
    ids = rows.example_id.astype(str)
    return ids.where(turns <= 1, ids + " turn " + turns.astype(str))


def generations_frame(records: list[dict]) -> pd.DataFrame:
    """Every test prompt with its reference, each final run's greedy answer and that answer's
    own score (what the paired tests compare); ``turn`` is the assistant turn a conversation's
    answer is for (1 for single-turn tasks and older records)."""
    rows = [_generation(r["run_id"], g) for r in records if not is_baseline(r) for g in r.get("generations") or []]
    return pd.DataFrame(rows, columns=GENERATION_COLUMNS)


def baselines_frame(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The baselines of every task: one row per baseline (the untrained base model, the trivial
    answers, the linear probe of a task with a closed answer set) with its score, and their
    answers in the shape of :func:`generations_frame` (``run_id`` names the baseline: ``<record
    run id>``, ``<record run id>:trivial`` or ``<record run id>:probe``). A dimension that
    changes the base (``--quantize``) runs the baselines at each value: the untrained base is
    then named like a method (``base model @ nf4``), and the trivial answers and the probe are
    the float base's (the first of the task's baselines, float first: :func:`_float_first`)."""
    rows, answers, once = [], [], set()
    for r in _float_first(records):
        if not is_baseline(r) or r.get("status") != "ok":
            continue
        m = r.get("metrics") or {}
        trivial = r.get("trivial") or {}
        entries = [(r["run_id"], variants.record_name(r), m.get("score"), m.get("eval_loss"), m.get("choice_accuracy"),
                    r.get("generations"))]
        first, _ = r.get("task") not in once, once.add(r.get("task"))
        if trivial and first:
            entries.append((f"{r['run_id']}:trivial", TRIVIAL_NAMES.get(trivial.get("kind"), trivial.get("kind")),
                            trivial.get("score"), None, None, trivial.get("generations")))
        probe = r.get("probe") or {}
        if probe and first:
            entries.append((f"{r['run_id']}:probe", PROBE, probe.get("score"), None, probe.get("choice_accuracy"),
                            probe.get("generations")))
        for rid, name, score, loss, choice, gens in entries:
            rows.append({"run_id": rid, "task": r.get("task"), "baseline": name, "score_name": m.get("score_name"),
                         "score": score, "eval_loss": loss, "choice_accuracy": choice})
            answers += [_generation(rid, g) for g in gens or []]
    frame = pd.DataFrame(rows, columns=["run_id", "task", "baseline", "score_name", "score", "eval_loss", "choice_accuracy"])
    return frame.sort_values(["task", "run_id"], kind="stable").reset_index(drop=True), pd.DataFrame(answers, columns=GENERATION_COLUMNS)


def base_key(record: dict) -> tuple:
    """What tells the bases of a shootout apart: the settings of the dimensions that change the
    base itself (``--quantize``)."""
    config = record.get("config") or {}
    return tuple(config.get(d.setting, d.off) for d in variants.DIMENSIONS if d.baselines)


def base_retention(records: list[dict]) -> dict[tuple, dict]:
    """The baseline records that scored the base's retention (``record["retention"]``,
    :mod:`suite.measures.retention`), by base (:func:`base_key`), the float base first."""
    out = {}
    for r in _float_first(records):
        if is_baseline(r) and r.get("status") == "ok" and r.get("retention"):
            out.setdefault(base_key(r), r)
    return out


def _pooled(tasks: dict, names) -> float | None:
    marks = [c for n in names for c in tasks[n].get("correct", [])]
    return sum(marks) / len(marks) if marks else None


def retention_columns(record: dict, bases: dict[tuple, dict]) -> dict:
    """A run's retention beside its base's: ``retention_tasks`` (each harness task's accuracy
    before and after, JSON text) and, on the questions both answered, ``retention_base_accuracy``
    and ``retention_change`` (after − before). Empty for a run without retention."""
    mine = (record.get("retention") or {}).get("tasks")
    if not mine:
        return {}
    base = ((bases.get(base_key(record)) or {}).get("retention") or {}).get("tasks") or {}
    shared = [n for n in mine if n in base]
    tasks = {n: {"before": base[n]["accuracy"] if n in base else None, "after": t["accuracy"]} for n, t in mine.items()}
    row = {"retention_tasks": json.dumps(tasks, ensure_ascii=False, sort_keys=True)}
    if shared:
        before, after = _pooled(base, shared), _pooled(mine, shared)
        row.update(retention_base_accuracy=before, retention_change=after - before)
    return row


RETENTION_COLUMNS = ["run_id", "task", "harness_task", "question", "correct"]


def retention_frame(records: list[dict]) -> pd.DataFrame:
    """Each question of each harness task, for every run (and the base's baseline cell) that
    measured retention: ``correct`` is 1 or 0 (``retention.csv``)."""
    rows = [{"run_id": r["run_id"], "task": r.get("task"), "harness_task": name, "question": i, "correct": c}
            for r in records for name, t in sorted(((r.get("retention") or {}).get("tasks") or {}).items())
            for i, c in enumerate(t.get("correct") or [])]
    return pd.DataFrame(rows, columns=RETENTION_COLUMNS)


def retention_answers(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`retention_frame` in the shape the paired tests read (:func:`suite.report.significance.per_example`):
    one "answer" per question, ``harness_task:question``, scored 1 or 0."""
    return pd.DataFrame({"run_id": frame.run_id, "example_id": frame.harness_task + ":" + frame.question.astype(str),
                         "turn": 1, "example_score": frame.correct})
