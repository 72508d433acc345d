"""Replay: general text mixed into fine-tuning against forgetting (``--replay SOURCE:FRACTION``).

``FRACTION`` of every training batch's sequences are replay texts from ``SOURCE`` (a registered
side corpus, or a plain-text or JSONL file), trained with a language-model loss on every token
after the first; the rest are task examples with their usual answer-only loss. The batch size
and the step budget stay the same, so a run with replay sees fewer task examples.

The step's loss weights each part by its share of the batch's sequences: with ``n`` task
examples and ``r`` replay sequences, ``(n · task + r · replay) / (n + r)``, each part the mean
cross-entropy over its own loss tokens (a news sentence has far more tokens than a label, so a
plain token mean would be almost all replay). Both parts are recorded per step (the curve's
``train`` and ``replay`` splits).

Replay never trains on the text forgetting is measured on. A registered side corpus is split
once, by a fixed rule: its first :data:`MEASURED` texts are the measurement part (forgetting
reads ``texts(--side-corpus-size)``, a prefix of it), the texts after them the replay part;
whatever the source, a replay text equal to a measured one is dropped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

#: a side corpus's first MEASURED texts are kept for measuring forgetting; replay reads after them
MEASURED = 256
#: at most this many replay texts are read from a source (they repeat past it, like task examples)
MAX_TEXTS = 100_000
OFF = "none"


def parse(value: str) -> tuple[str, float]:
    """``"zh-news-side:0.3"`` -> ``("zh-news-side", 0.3)``; a one-line UsageError otherwise."""
    source, colon, fraction = str(value).rpartition(":")
    try:
        f = float(fraction)
    except ValueError:
        f = math.nan
    if not colon or not source.strip():
        raise UsageError(f"--replay takes none or SOURCE:FRACTION (e.g. zh-news-side:0.25), not {value!r}")
    if not (0 < f < 1):
        raise UsageError(f"--replay {value}: the fraction must be a number between 0 and 1 (exclusive), not {fraction!r}")
    return source.strip(), f


def counts(batch_size: int, fraction: float) -> tuple[int, int]:
    """(task examples, replay sequences) per batch: ``round(fraction · batch_size)`` replay
    sequences; a UsageError when that leaves either part empty."""
    replay = round(fraction * batch_size)
    if not 0 < replay < batch_size:
        raise UsageError(f"--replay fraction {fraction:g} of --batch-size {batch_size} gives {replay} replay sequences "
                         f"per batch; choose a fraction that gives between 1 and {batch_size - 1}")
    return batch_size - replay, replay


def describe(value: str, side_corpus: str = "") -> str:
    """``replay 0.3`` when the source is the side corpus forgetting is measured on, else
    ``replay NAME 0.3`` (NAME: the corpus, or the file's name)."""
    source, fraction = parse(value)
    if source == side_corpus:
        return f"replay {fraction:g}"
    return f"replay {Path(source).name if _is_path(source) else source} {fraction:g}"


def _is_path(source: str) -> bool:
    return "/" in source or source.endswith((".txt", ".jsonl", ".json"))


def read_file(path: str) -> list[str]:
    """The texts of a plain-text file (one per non-empty line) or a JSONL file (``.jsonl``: one
    JSON string, or object with a ``text`` field, per line); one-line UsageErrors."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--replay {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            try:
                item = json.loads(line)
            except ValueError:
                raise UsageError(f"{path}, line {n}: not JSON") from None
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise UsageError(f"{path}, line {n}: text: expected a string (a JSON string or an object with a "
                                 "\"text\" field)")
            line = text
        if line.strip():
            texts.append(line.strip())
    if not texts:
        raise UsageError(f"--replay {path}: the file holds no text")
    return texts


def source_texts(source: str, registry, count: int = MAX_TEXTS) -> list[str]:
    """Up to ``count`` replay texts of ``source``: a side corpus's replay part, or a file's texts."""
    if source in registry.side_corpora:
        return registry.side_corpora[source].texts(MEASURED + count)[MEASURED:]
    return read_file(source)[:count]


def resolve(values: list[str], config, registry) -> str:
    """The shootout's ``--replay`` ``values`` (:func:`suite.config.variants.values` of the setting)
    checked and normalised (a file as an absolute path, the fraction as ``%g``), comma-separated:
    everything wrong with them is a one-line UsageError before any cell runs."""
    out = []
    for value in values or [OFF]:
        if value == OFF:
            out.append(OFF)
            continue
        source, fraction = parse(value)
        if source in registry.side_corpora:
            if source == config.side_corpus and config.side_corpus_size > MEASURED:
                raise UsageError(f"--replay {source}: forgetting would be measured on {config.side_corpus_size} texts, "
                                 f"past the {MEASURED} that replay leaves out; use --side-corpus-size {MEASURED} or less")
        elif _is_path(source) or Path(source).exists():
            source = str(Path(source).expanduser().resolve())
        else:
            known = ", ".join(sorted(registry.side_corpora)) or "none registered"
            raise UsageError(f"--replay {source}: not a side corpus ({known}) nor a file")
        n_replay = counts(config.batch_size * config.grad_accum, fraction)[1]
        found = len(source_texts(source, registry, n_replay))
        if found < n_replay:
            where = "the file holds" if source not in registry.side_corpora else \
                f"the side corpus has, past the first {MEASURED} (kept for measuring forgetting),"
            raise UsageError(f"--replay {source}: {where} {found} texts, fewer than the {n_replay} each batch takes")
        out.append(f"{source}:{fraction:g}")
    out = list(dict.fromkeys(out)) or [OFF]
    labels = [describe(v, config.side_corpus) for v in out if v != OFF]
    if len(set(labels)) < len(labels):
        raise UsageError(f"--replay: two settings would have the same name in the report ({', '.join(labels)})")
    return ",".join(out)


@dataclass
class Mixed:
    """A run's training batches: the task's and, with replay, the replay sequences of each step."""

    task: list  # list[list[Encoded]], one per step
    replay: list | None  # the same number of replay batches, or None without replay
    texts: int = 0  # distinct replay texts the steps draw from


def batches(cell, registry, tokenizer, train_set) -> Mixed:
    """The steps' batches of a cell, each the step's whole batch (``--batch-size`` x
    ``--grad-accum`` examples; training cuts it into micro-batches): without replay exactly
    :func:`suite.data.batches.batch_order`'s; with replay ``counts()`` task examples and replay
    sequences per step, each part in its own seeded, length-grouped order (the same for every
    method). ``--epochs`` sets the number of steps from the train split's size."""
    from .batches import Encoded, batch_order

    step = cell.batch_size * cell.grad_accum
    if cell.replay == OFF:
        steps = _steps(cell, len(train_set), step)
        order = batch_order([e.length for e in train_set], step, steps, cell.seed)
        return Mixed([[train_set[i] for i in b] for b in order], None)
    source, fraction = parse(cell.replay)
    n_task, n_replay = counts(step, fraction)
    steps = _steps(cell, len(train_set), n_task)
    measured = set()
    if cell.side_corpus != OFF and cell.side_corpus_size:  # never train on what forgetting reads
        measured = set(registry.side_corpora[cell.side_corpus].texts(cell.side_corpus_size))
    texts = [t for t in source_texts(source, registry, min(MAX_TEXTS, steps * n_replay)) if t not in measured]
    ids = tokenizer(texts, truncation=True, max_length=cell.max_len, verbose=False)["input_ids"]
    # loss on every token after the first: the first is the "prompt", the rest the "answer"
    items = [Encoded(f"replay:{i}", list(seq[:1]), list(seq[1:])) for i, seq in enumerate(ids) if len(seq) >= 2]
    if not items:
        raise ValueError(f"--replay {source}: no text of two tokens or more is left to replay")
    order = full_batches([e.length for e in train_set], n_task, steps, cell.seed, "training examples")
    replay_order = full_batches([e.length for e in items], n_replay, steps, cell.seed, "replay texts")
    return Mixed([[train_set[i] for i in b] for b in order], [[items[i] for i in b] for b in replay_order], len(items))


def _steps(cell, n_train: int, per_step: int) -> int:
    """``--max-steps``, or the steps of ``--epochs`` passes over ``n_train`` examples, ``per_step`` a step."""
    from .batches import batches_per_epoch

    if not cell.epochs:
        return cell.max_steps
    return max(1, math.ceil(cell.epochs * batches_per_epoch(n_train, per_step) - 1e-9))


def full_batches(lengths: list[int], size: int, steps: int, seed: int, what: str) -> list[list[int]]:
    """:func:`suite.data.batches.batch_order`'s batches of exactly ``size`` (the short one at the end of
    each of its chunks left out, as a loader's ``drop_last``), so that every step holds the asked
    share of replay sequences exactly."""
    from .batches import batch_order

    if len(lengths) < size:
        raise ValueError(f"--replay: {len(lengths)} {what}, fewer than the {size} each batch takes")
    want = steps
    while True:  # a longer order starts with the shorter one (each epoch is seeded on its own)
        order = [b for b in batch_order(lengths, size, want, seed) if len(b) == size]
        if len(order) >= steps:
            return order[:steps]
        want *= 2
