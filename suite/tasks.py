"""What an instruction task is, as the core sees it, and the prompt every method trains on."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

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

    def splits(self, sizes: dict | None = None) -> dict[str, list[Example]]:
        """Return ``{"train": [...], "dev": [...], "test": [...]}``.

        ``sizes`` caps each split (``None`` for a split means all of it); the same sizes must
        give the same examples in every process.
        """
        raise NotImplementedError

    def score(self, predictions: list[str], references: list[str]) -> float:
        """The task's metric over generated answers (higher is better)."""
        raise NotImplementedError
