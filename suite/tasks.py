"""What an instruction task is, as the core sees it, and the prompt every method trains on."""
from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    id: str
    instruction: str
    input: str
    output: str


def prompt_parts(example: Example) -> tuple[str, str, str]:
    """The prompt in the shape the field uses, as (head, body, tail).

    The model learns to continue ``head + body + tail`` with the answer. ``body`` is the part
    that may be shortened when a record is longer than the model's context.
    """
    if example.input:
        return f"Instruction: {example.instruction}\nInput: ", example.input, "\nAnswer: "
    return "Instruction: ", example.instruction, "\nAnswer: "


def format_prompt(example: Example) -> str:
    return "".join(prompt_parts(example))


def split_of(key: str, dev_pct: int = 10, test_pct: int = 10) -> str:
    """A split that depends only on ``key``'s text: stable across reads, processes and corpus order."""
    bucket = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + dev_pct:
        return "dev"
    return "train"


def stable_order(examples: list[Example]) -> list[Example]:
    """Examples in an order fixed by their ids' hashes (for taking the first N of a split)."""
    return sorted(examples, key=lambda e: hashlib.sha1(e.id.encode("utf-8")).digest())


def normalise(text: str) -> str:
    """The form of a text that duplicates are detected on: NFKC (full-width digits and letters
    become ASCII) with all whitespace removed."""
    return "".join(unicodedata.normalize("NFKC", text).split())


def assign_splits(
    examples: Iterable[Example], key: Callable[[Example], str] | None = None, distinct_answers: bool = False,
) -> dict[str, list[Example]]:
    """Deterministic train/dev/test splits without duplicates across them.

    Examples whose normalised prompt (instruction and input) is the same are duplicates: one
    is kept, the smallest by (instruction, input, output), so the choice does not depend on
    the corpus order. With ``distinct_answers`` only examples whose answer is the same too are
    duplicates (a user's file may hold several answers to one instruction). Each example goes
    to ``split_of(normalise(key(example)))`` (``key`` defaults to the prompt, so equal prompts
    can never land in two splits; tasks whose examples share a source text key on that text).
    Example ids are recomputed from the normalised text; each split is in :func:`stable_order`.
    Cut to sizes with :func:`take`.
    """
    norm = lru_cache(maxsize=None)(normalise)  # inputs are often split keys too: normalise once
    kept: dict[str, tuple[Example, str]] = {}
    for ex in examples:
        prompt = norm(ex.instruction) + "\n" + norm(ex.input)
        ident = prompt + "\n" + normalise(ex.output) if distinct_answers else prompt
        ex = Example(hashlib.sha1(ident.encode("utf-8")).hexdigest()[:12], ex.instruction, ex.input, ex.output)
        seen = kept.get(ex.id)
        if seen is None or (ex.instruction, ex.input, ex.output) < (seen[0].instruction, seen[0].input, seen[0].output):
            kept[ex.id] = ex, prompt
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for ex, prompt in kept.values():
        out[split_of(norm(key(ex)) if key else prompt)].append(ex)
    return {s: stable_order(exs) for s, exs in out.items()}


def take(
    splits: dict[str, list[Example]], sizes: dict | None, keep: Callable[[Example], bool] | None = None,
) -> dict[str, list[Example]]:
    """The first ``sizes[split]`` examples of each split (all of them for ``None``), skipping
    those ``keep`` rejects (e.g. over-long ones in a CPU-sized run). Splits keep their order,
    so a bigger size gives a superset of a smaller one."""
    out = {}
    for split, examples in splits.items():
        n = (sizes or {}).get(split)
        chosen = [e for e in examples if keep(e)] if keep else list(examples)
        out[split] = chosen[:n]
    return out


def take_short(
    splits: dict[str, list[Example]], sizes: dict | None, max_chars: int | None, text: Callable[[Example], str],
) -> dict[str, list[Example]]:
    """:func:`take` for a task with :attr:`Task.max_chars`: a capped run (``sizes`` given, as in
    the CPU default) keeps only examples whose ``text(example)`` has at most ``max_chars``
    characters; the full task (``sizes`` None) keeps them all."""
    short = (lambda e: len(text(e)) <= max_chars) if sizes and max_chars else None
    return take(splits, sizes, short)


class Task:
    """Base class for tasks. Register instances through ``register_tasks``."""

    #: the name users type after ``--tasks``
    name: str = ""
    description: str = ""
    #: where the data comes from
    source: str = ""
    #: the metric :meth:`score` returns, e.g. ``accuracy``
    score_name: str = ""
    #: how many tokens greedy generation may produce for one answer
    max_new_tokens: int = 32
    #: bump when the examples change, so cached tokenisations are not reused
    version: str = "1"
    #: default number of examples per split for the CPU default run
    default_sizes: dict = {"train": 512, "dev": 64, "test": 64}
    #: part of the shootout that runs when no ``--tasks`` are given
    default: bool = False
    #: in capped runs (the CPU default), examples longer than this many characters are left
    #: out (None: no limit); see :func:`take_short`
    max_chars: int | None = None
    #: the closed set of answers of a classification task (e.g. ``("正面", "负面")``), or None for
    #: a generative task. With it the core also records ``choice_accuracy``: the share of test
    #: examples whose reference is the choice the trained model gives the highest likelihood
    choices: tuple[str, ...] | None = None
    #: the task's trivial baseline, computed by the core on the test split: ``"majority"`` (the
    #: most frequent training answer, for every example), ``"copy"`` (the input itself) or
    #: ``"empty"`` (an empty answer); None: majority for a task with ``choices``, else empty
    baseline: str | None = None

    def splits(self, sizes: dict | None = None) -> dict[str, list[Example]]:
        """Return ``{"train": [...], "dev": [...], "test": [...]}``.

        ``sizes`` caps each split (``None`` for a split means all of it); the same sizes must
        give the same examples in every process.
        """
        raise NotImplementedError

    def score(self, predictions: list[str], references: list[str]) -> float:
        """The task's metric over generated answers (higher is better)."""
        raise NotImplementedError

    def metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Further metrics next to :meth:`score`, e.g. ``{"bleu4": 12.3}`` (optional).

        They are stored in the run's record as extra result columns; names must not clash
        with the core's own measurements (``score``, ``eval_loss``, ...).
        """
        return {}

    def example_scores(self, predictions: list[str], references: list[str]) -> list[float]:
        """Each answer's own score (the significance tests pair methods example by example).

        The default scores each example alone with :meth:`score`: the same as the task's score
        where it is a mean over examples (accuracy, exact match, ROUGE-L), the per-example form
        of a corpus-level one (micro F1, BLEU).
        """
        return [float(self.score([p], [r])) for p, r in zip(predictions, references)]

    def split_sizes(self, sizes: dict | None = None) -> dict[str, int]:
        """How many examples each split holds for ``sizes`` (``None``: the full task).

        Used by ``leitai list tasks``; the default builds the splits, a task may count faster.
        """
        return {split: len(examples) for split, examples in self.splits(sizes).items()}


def extra_metrics(task, predictions: list[str], references: list[str], measured: dict) -> dict:
    """The task's further metrics (:meth:`suite.Task.metrics`), checked: they may only add
    numeric columns, never replace what the core measured."""
    extra = task.metrics(predictions, references) or {}
    for name, value in extra.items():
        if not isinstance(name, str) or name in measured:
            raise ValueError(f"task {task.name!r} returned metric {name!r}, which clashes with a core column")
        if not isinstance(value, (int, float)):
            raise ValueError(f"task {task.name!r} returned a non-numeric metric {name}={value!r}")
    return {name: float(value) for name, value in extra.items()}


BASELINES = ("majority", "copy", "empty")


def trivial_answers(task: Task, train_answers: list[str], test: list[Example]) -> tuple[str, list[str]]:
    """The task's trivial baseline (:attr:`Task.baseline`): its kind and its answer to each test
    example (the majority is the most frequent training answer; ties go to the smallest text)."""
    from collections import Counter

    kind = task.baseline or ("majority" if task.choices else "empty")
    if kind not in BASELINES:
        raise ValueError(f"task {task.name!r} declares baseline {kind!r} (known: {', '.join(BASELINES)})")
    if kind == "majority":
        counts = Counter(train_answers)
        answer = min(counts, key=lambda a: (-counts[a], a)) if counts else ""
        return kind, [answer] * len(test)
    if kind == "copy":
        return kind, [ex.input for ex in test]
    return kind, [""] * len(test)
