"""What a report says, computed once from the records; ``summary.md`` and ``report.html`` are
two renderings of it (the HTML adds the figures)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..config import variants
from . import environment, figures, retention, tables, tradeoff
from .frames import baselines_frame, curves_frame, generations_frame, phase, results_frame
from .verdict import NOTE as VERDICT_NOTE
from .verdict import TaskVerdict, judge

NOTES = (
    "Each row is one method; numbers are means over the seeds that finished ok (n), "
    "± the sample standard deviation when n > 1.",
    "95% CI: Student's t interval of the mean score over seeds, mean ± t(0.975, n−1)·s/√n.",
    "runs: every run of the method on the task by status; failed, oom, diverged and timeout runs are "
    "listed under 'Runs that did not finish ok' and are not part of the means (the verdict says why).",
    "peak memory: what 'memory kind' says was measured (cuda_max_allocated on GPU; on CPU the "
    "cell process's peak RSS during training minus its RSS before). adapter: bytes on disk of "
    "the saved trainable weights. final train loss: mean of the last 10% of step losses; "
    "dev loss: token-weighted over the dev split; the score is the task's metric on greedy "
    "answers to the test split (higher is better). Rows are sorted by mean score.",
    "forgetting: the trained model's cross-entropy per token (nats) on a side corpus of running "
    "text no task trains on, minus the untouched base model's on the same tokens (higher: more of "
    "the base's language lost; negative: the side text got easier). inference × base: greedy "
    "decoding latency per new token, one prompt at a time, as a multiple of the base model's own "
    "latency measured in the same process; merged × base: the same after merging the adapter into "
    "the weights (methods that can merge, after checking merged and unmerged logits agree).",
    "baselines: the untrained base model (same prompts and greedy decoding) and the task's trivial "
    "answer (majority label, copy the input, or empty), scored on the same test split. choice accuracy "
    "(tasks with a closed answer set): the share of test examples whose reference is the answer the "
    "model gives the highest likelihood; it tells 'learned the task but not the answer format' from "
    "'learned nothing'.",
    "tuning (with --sweep): each swept method's setting was chosen by the mean dev score of its tuning "
    "runs (dev loss breaks ties); 'setting' is the choice, 'tried' how many settings were trained, "
    "'tuning train s' their training seconds in all. A numeric grid whose best value lay at its first or "
    "last value was extended by its own step up to the method's bound; '(edge)' marks a choice still at "
    "an edge of the grid tried: the optimum may lie beyond it. Tuning runs are in results.csv (phase "
    "tune) and never in the means; test data is read only by the final runs.",
    "diagnostics (docs/diagnostics.md): 'baseline: linear probe' is a logistic regression on the frozen "
    "base's last hidden state at the answer position, fitted on the train split (tasks with a closed "
    "answer set); 'vs probe' says whether a method is below it at 95% confidence: it used less than the "
    "base already holds. 'answer format' (shown when a method has it under 0.5): the share of greedy "
    "answers that are non-empty and in the answer set. 'still learning' (shown when a run has it): seeds "
    "whose training loss still fell over the last 20% of the steps (least-squares slope, one-sided "
    "p < 0.05, a fall of at least 2% of the loss): more steps would change the row.",
    "replay (with --replay): 'full + replay 0.3' is full fine-tuning with 0.3 of each batch's sequences drawn "
    "from general text (LM loss on every token; docs/replay.md), at the same batch size and steps, so on fewer task "
    "examples. The score-against-forgetting figure joins a method's replay settings; the verdict names, per method, "
    "the setting that keeps the score (not below no replay by the paired test) at the least forgetting.",
    VERDICT_NOTE,
    "kB, MB, GB are powers of 1000. Numbers have 3 significant figures; 1,000 and more keep "
    "all integer digits.",
)
TURNS_NOTE = (
    "Conversation tasks: each assistant turn is generated given the reference answers before it "
    "and scored on its own (the task's metric for that turn); 'all turns' is the task's score. "
    "A method whose score falls from turn to turn loses the thread as the conversation grows."
)
RAN_NOTE = (
    "What each method recorded it ran on this model (Method.run_info; the method_info column of "
    "results.csv): the modules an adapter was put on and where that choice came from, an "
    "initialisation, and any fallback."
)
OVERALL_NOTE = (
    "mean rank: a method's rank by mean score on each task it ran (1 = best; a task where it "
    "has no ok run counts as last place), averaged over tasks. relative score: its mean score "
    "as a percentage of the best method's on each task (0 where it has no ok run), averaged."
)


@dataclass
class TaskSection:
    task: str
    score_name: str
    table: pd.DataFrame
    more: pd.DataFrame
    answers: pd.DataFrame
    verdict: TaskVerdict | None = None
    #: a conversation task's score per assistant turn (empty for single-turn tasks)
    turns: pd.DataFrame = field(default_factory=pd.DataFrame)
    ran: pd.DataFrame = field(default_factory=pd.DataFrame)  # what each method recorded it ran
    #: --retention: the base's and each method's accuracy on the harness's tasks (empty without)
    retention: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)  # caption -> inline SVG


@dataclass
class Report:
    facts: list[tuple[str, str]]
    warnings: list[str]
    overall: pd.DataFrame | None
    sections: list[TaskSection]
    memory_figure: str | None
    failed: pd.DataFrame
    environments: pd.DataFrame
    results: pd.DataFrame


def build(records: list[dict], with_figures: bool = True) -> Report:
    """Everything the report shows, from ``records`` alone."""
    runs = results_frame(records)  # final and tuning runs: all of results.csv
    results = runs[runs.phase != "tune"]  # what the tables, means and verdicts are about
    tuning_runs = runs[runs.phase == "tune"]
    baselines, baseline_answers = baselines_frame(records)
    curves = curves_frame(records)
    generations = generations_frame(records)
    stats = tables.method_stats(results)
    tasks = sorted(results.task.dropna().unique()) if len(results) else []
    palette = figures.colors(sorted(results.method.dropna().unique())) if len(results) else {}
    orders = {t: tables.method_order(results, stats, t) for t in tasks}
    chosen = {(r["task"], variants.record_name(r)): r["config"]["tuning"] for r in records
              if phase(r) == "final" and (r.get("config") or {}).get("tuning")}
    places = tradeoff.places(records)  # each run's replay setting
    sections = []
    for task in tasks:
        name = tables.score_name(results, task)
        task_baselines = baselines[baselines.task == task]
        verdict = judge(task, name, results, stats, generations, task_baselines, baseline_answers, orders[task],
                        curves)
        verdict.sentences += tradeoff.sentences(task, name, results, stats, generations, orders[task], places)
        verdict.sentences += retention.sentences(records, results, stats, task, orders[task])
        tuning = {m: t for (t_, m), t in chosen.items() if t_ == task}
        tuning_seconds = tuning_runs[tuning_runs.task == task].groupby("method").train_seconds.sum().to_dict()
        section = TaskSection(
            task=task, score_name=name,
            table=tables.task_table(results, stats, task, verdict, tuning, tuning_seconds, task_baselines),
            more=tables.more_table(results, stats, task),
            answers=tables.answers_table(results, generations, task, orders[task]), verdict=verdict,
            turns=tables.turn_table(results, stats, task),
            ran=tables.method_info_table(results, task, orders[task]),
            retention=retention.table(records, results, stats, task, orders[task]),
        )
        kinds = tables.memory_kinds(results, task)
        if len(kinds) == 1:
            section.notes.append(f"peak memory: {kinds[0]}")
        if with_figures:
            prior = results.loc[results.task == task, "class_prior_loss"].dropna() if "class_prior_loss" in results else []
            loss = figures.loss_curves(task, results, curves, orders[task], palette,
                                       float(prior.iloc[0]) if len(prior) else None)
            front = figures.pareto(task, results, stats, orders[task], palette, name, verdict)
            if loss:
                section.figures["Training loss"] = loss
            during = figures.dev_curves(task, results, curves, orders[task], palette, name, verdict.yardsticks())
            if during:
                section.figures["Dev score during training (--eval-every)"] = during
            if front:
                section.figures["Score against cost"] = front
            traded = tradeoff.figure(task, stats, orders[task], places, name)
            if traded:
                section.figures["Score against forgetting (replay settings joined per method)"] = traded
            sensitivity = figures.sensitivity(task, tuning_runs, tuning, palette)
            if sensitivity:
                section.figures["Sensitivity to the swept settings (tuning runs, dev split)"] = sensitivity
        sections.append(section)
    memory = figures.memory_bars(tasks, results, stats, orders, palette) if with_figures else None
    return Report(
        facts=_facts(results), warnings=environment.warnings(records) + tables.fallback_warnings(results),
        overall=tables.overall_table(results, stats), sections=sections, memory_figure=memory,
        failed=tables.failed_runs(runs) if len(runs) else pd.DataFrame(),
        environments=environment.environments(records), results=runs,
    )


def _facts(results: pd.DataFrame) -> list[tuple[str, str]]:
    if results.empty:
        return [("runs", "none finished yet")]

    def names(col):
        return ", ".join(sorted(str(v) for v in results[col].dropna().unique())) or "–"

    seeds = sorted(int(s) for s in results.seed.dropna().unique())
    return [
        ("model", names("model")),
        ("tasks", names("task")),
        ("methods", names("method")),
        ("seeds", ", ".join(map(str, seeds)) or "–"),
        ("runs", f"{len(results)} ({tables.status_counts(results.status)})"),
    ]
