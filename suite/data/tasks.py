"""What an instruction task is, as the core sees it, and the prompt every method trains on.

An :class:`Example` is one instruction, an optional input and the answer; a conversation is an
``Example`` with :attr:`~Example.turns` (see :meth:`Example.conversation`), whose instruction,
input and output are those of its last turn, so code that reads ``example.output`` gets the
answer of the turn being scored. Single-turn examples are prompted with the fixed
``Instruction:/Input:/Answer:`` format below (:func:`prompt_parts`); conversations go through
the model's chat template (:mod:`suite.data.chat`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Turn:
    """One exchange of a conversation: the user's message (an instruction, and optionally an
    input it applies to) and the assistant's answer."""

    instruction: str
    input: str
    output: str

    @property
    def user(self) -> str:
        """The user's message as the model sees it: the instruction, then the input on its own line."""
        return f"{self.instruction}\n{self.input}" if self.instruction and self.input else self.instruction or self.input


@dataclass(frozen=True)
class Example:
    """One test or training item. ``Example(id, instruction, input, output)`` is a single-turn
    instruction example; :meth:`conversation` makes a conversation (``turns``, and an optional
    ``system`` message), whose instruction, input and output are its last turn's."""

    id: str
    instruction: str
    input: str
    output: str
    #: every turn of a conversation, oldest first (empty: a single-turn instruction example)
    turns: tuple[Turn, ...] = ()
    #: a conversation's system message ("" for none)
    system: str = ""

    def __post_init__(self):
        if self.turns:
            last = self.turns[-1]
            if (self.instruction, self.input, self.output) != (last.instruction, last.input, last.output):
                raise ValueError("a conversation's instruction, input and output are its last turn's; "
                                 "build it with Example.conversation")
        elif self.system:
            raise ValueError("only a conversation (Example.conversation) has a system message")

    @classmethod
    def conversation(cls, turns: Iterable[Turn | tuple[str, str, str]], system: str = "", id: str = "") -> Example:
        """A conversation of ``turns`` (:class:`Turn` or ``(instruction, input, output)``),
        oldest first; each assistant answer is trained on, and each is scored given the
        reference answers before it. One turn is a conversation too (it still goes through the
        chat template)."""
        turns = tuple(t if isinstance(t, Turn) else Turn(*t) for t in turns)
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        last = turns[-1]
        return cls(id, last.instruction, last.input, last.output, turns, system)

    @property
    def is_conversation(self) -> bool:
        return bool(self.turns)

    @property
    def all_turns(self) -> tuple[Turn, ...]:
        """The turns of a conversation; a single-turn example as its one turn."""
        return self.turns or (Turn(self.instruction, self.input, self.output),)

    def upto(self, n: int) -> Example:
        """The conversation's first ``n`` turns (the same id): what turn ``n`` is scored on."""
        return Example.conversation(self.turns[:n], self.system, self.id) if self.turns else self

    def messages(self) -> list[dict]:
        """The conversation as chat messages (``role``, ``content``), the system message first."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.all_turns:
            out += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.output}]
        return out


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


def _prompt_text(ex: Example, norm: Callable[[str], str]) -> str:
    """What makes two examples the same prompt: the normalised instruction and input of every
    turn (and a conversation's system message)."""
    prompt = "\n".join(norm(t.instruction) + "\n" + norm(t.input) for t in ex.all_turns)
    return norm(ex.system) + "\n\n" + prompt if ex.system else prompt


def _content(ex: Example) -> tuple:
    return ex.system, tuple(dataclasses.astuple(t) for t in ex.all_turns)


def assign_splits(
    examples: Iterable[Example], key: Callable[[Example], str] | None = None, distinct_answers: bool = False,
) -> dict[str, list[Example]]:
    """Deterministic train/dev/test splits without duplicates across them.

    Examples whose normalised prompt (instruction and input; of a conversation, those of every
    turn and its system message) is the same are duplicates: one is kept, the smallest by its
    texts, so the choice does not depend on the corpus order. With ``distinct_answers`` only
    examples whose answers are the same too are duplicates (a user's file may hold several
    answers to one instruction). Each example goes to ``split_of(normalise(key(example)))``
    (``key`` defaults to the prompt, so equal prompts, or conversations, can never land in two
    splits; tasks whose examples share a source text key on that text). Example ids are
    recomputed from the normalised text; each split is in :func:`stable_order`. Cut to sizes
    with :func:`take`.
    """
    norm = lru_cache(maxsize=None)(normalise)  # inputs are often split keys too: normalise once
    kept: dict[str, tuple[Example, str]] = {}
    for ex in examples:
        prompt = _prompt_text(ex, norm)
        answers = "\n".join(normalise(t.output) for t in ex.all_turns)
        ident = prompt + "\n" + answers if distinct_answers else prompt
        ex = dataclasses.replace(ex, id=hashlib.sha1(ident.encode("utf-8")).hexdigest()[:12])
        seen = kept.get(ex.id)
        if seen is None or _content(ex) < _content(seen[0]):
            kept[ex.id] = ex, prompt
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for ex, prompt in kept.values():
        out[split_of(norm(key(ex)) if key else prompt)].append(ex)
    return {s: stable_order(exs) for s, exs in out.items()}


def check_splits(task, sizes: dict | None) -> None:
    """Refuse, before any cell runs, a task that leaves a split empty at the run's ``sizes``
    (a cell needs a training example, a dev loss and a test score): one-line
    :class:`~suite.errors.UsageError` giving the sizes it got. :func:`assign_splits` sends about
    10% of the distinct split keys to each of dev and test, so a small task can come out with
    none (20 keys leave dev empty one time in eight); ``file:`` tasks are checked the same way."""
    from ..errors import UsageError

    try:
        got = task.split_sizes(sizes)
    except Exception as e:  # a broken plugin is the user's input too: one line, not a traceback
        raise UsageError(f"task {task.name}: building its splits failed: {type(e).__name__}: {e}") from None
    empty = [s for s in SPLITS if not got.get(s)]
    if empty:
        held = ", ".join(f"{s} {got.get(s, 0)}" for s in SPLITS)
        raise UsageError(
            f"task {task.name}: its splits hold {held} examples, leaving the {' and '.join(empty)} split(s) empty "
            "(assign_splits sends about 10% of the distinct split keys to each of dev and test); give the task "
            "more examples, or a larger --task-size"
        )


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

    def score_turn(self, turn: int, predictions: list[str], references: list[str]) -> float:
        """The metric over the answers of assistant turn ``turn`` (1: the first) of the test
        conversations, each generated given the reference answers before it. Default:
        :meth:`score`; a task whose turns ask different things scores each its own way."""
        return self.score(predictions, references)

    def score_conversations(self, predictions: list[str], references: list[str], turns: list[int]) -> float:
        """The task's score over every assistant turn of the test conversations (``turns[i]``
        is the turn of answer ``i``). Default: :meth:`score` over all answers pooled."""
        return self.score(predictions, references)

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


def score_answers(task, predictions: list[str], references: list[str], examples: list[Example]) -> dict[str, float]:
    """``score`` over the test answers, and for conversations ``score_turn1``, ``score_turn2``...:
    the score of each assistant turn (:meth:`Task.score_turn`); ``score`` is then
    :meth:`Task.score_conversations`. ``examples[i]`` is what answer ``i`` was generated for
    (a conversation cut after the turn it answers, see :meth:`Example.upto`)."""
    if not any(ex.is_conversation for ex in examples):
        return {"score": task.score(predictions, references)}
    turns = [len(ex.all_turns) for ex in examples]
    out = {"score": task.score_conversations(predictions, references, turns)}
    for turn in sorted(set(turns)):
        chosen = [i for i, t in enumerate(turns) if t == turn]
        out[f"score_turn{turn}"] = task.score_turn(turn, [predictions[i] for i in chosen], [references[i] for i in chosen])
    return out
