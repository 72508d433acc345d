"""A user's own instruction data as a task: ``--tasks file:PATH`` (or ``file:PATH?score=NAME``).

Accepted, told apart by content, not by file name: a JSON array of records, JSON Lines (one
record per line), or a directory written by Hugging Face ``datasets``' ``save_to_disk`` (a
``Dataset``, or a ``DatasetDict``) with the fields as columns. The
records are single-turn instruction data (Alpaca/BELLE, ChatGLM-tuning) or conversations
(ShareGPT, OpenAI messages, ChatGLM, BELLE multi-turn), all of one format per file; the
formats and their checks are in :mod:`suite.data.user_formats`.

One file's records are split the deterministic way every task is
(:func:`suite.data.tasks.assign_splits`: by a hash of the normalised prompt, of a conversation
every user turn; identical records once). A user's own splits are used as given, never pooled
or re-split: named files (``file:train.jsonl,dev=dev.jsonl,test=test.jsonl``), a directory
holding ``train``, ``dev`` (or ``validation``) and ``test`` files, or a ``DatasetDict`` with
those split names; a prompt found in two of them is reported. Either way the task is scored
with character ROUGE-L F1 unless ``?score=`` names another scorer
(:data:`suite.data.scorers.SCORERS`); a conversation's every assistant turn is scored, each
given the reference answers before it, per turn and overall.

Everything a user can get wrong is a :class:`~suite.errors.UsageError` of one line naming the
file, the line (or row) and the field. A UTF-8 byte-order mark is skipped. Records longer than
the model's context are kept; the cell truncates them and the run reports how many.
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import UsageError, unknown
from .tasks import SPLITS, Example, Task, _prompt_text, assign_splits, normalise, take
from .user_formats import FORMATS, check_object, record_format, to_example

__all__ = ["PREFIX", "resolve_task", "load_file_task", "FileTask", "to_example"]

PREFIX = "file:"
OPTIONS = ("score",)
DEFAULT_SCORER = "rouge_l_f1"


#: the names of a user's own splits, and the other names a dataset may give them
SPLIT_NAMES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}


def parse_spec(name: str) -> tuple[str, dict, dict]:
    """``file:PATH?score=accuracy,dev=D,test=T`` -> ``("PATH", {"score": "accuracy"}, {"dev": "D", "test": "T"})``."""
    spec, *named = name[len(PREFIX):].split(",")
    splits = {}
    for item in named:
        split, eq, where = item.partition("=")
        if not eq or split.strip() not in ("dev", "test") or not where.strip():
            raise UsageError(f"{name}: after the train file come dev=PATH and test=PATH, not {item!r}")
        splits[split.strip()] = where.strip()
    path, query = spec, ""
    if "?" in spec:
        head, _, tail = spec.rpartition("?")
        if "=" in tail:
            path, query = head, tail
    if not path:
        raise UsageError(f"{name}: give a path after file:, e.g. file:data/train.jsonl")
    try:
        options = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError:
        raise UsageError(f"{name}: options after '?' take the form score=NAME") from None
    extra = set(options) - set(OPTIONS)
    if extra:
        raise UsageError(f"{name}: unknown option(s) {', '.join(sorted(extra))} (known: {', '.join(OPTIONS)})")
    return path, options, splits


def resolve_task(name: str, registry) -> Task:
    """The task called ``name``: a user's data file for ``file:PATH[?score=NAME]``, else a
    registered task. Raises a one-line :class:`~suite.errors.UsageError` for an unknown name
    or an unusable file."""
    if name.startswith(PREFIX):
        return load_file_task(name)
    return registry.get("tasks", name, hint=f"or {PREFIX}PATH for your own data")


def load_file_task(name: str) -> FileTask:
    """Read and check the data of ``file:PATH[?score=NAME][,dev=PATH,test=PATH]``; raise a
    one-line UsageError."""
    from .scorers import SCORERS

    path, options, named = parse_spec(name)
    scorer = options.get("score", DEFAULT_SCORER)
    if scorer not in SCORERS:
        raise UsageError(f"{name}: {unknown('scorer', scorer, SCORERS)}")
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file or directory")
    if named or (p.is_dir() and split_files(p)):  # the user's own splits
        files = {"train": p, **{k: Path(v) for k, v in named.items()}} if named else split_files(p)
        given, shapes, digests, fmt = {}, [], [], None
        for split, where in files.items():
            if not where.exists():
                raise UsageError(f"{where}: no such file (the {split} split of {name})")
            records, shape, digest = read_file(where)
            given[split], fmt = _examples(str(where), records, fmt)
            shapes.append(shape), digests.append(digest)
        return FileTask(name, path, scorer, given, f"{shapes[0]}, {FORMATS[fmt].partition(' (')[0]}",
                        hashlib.sha256("".join(digests).encode()).hexdigest()[:12], given_splits=True)
    records, shape, digest = read_dataset_dir(p) if p.is_dir() else read_file(p)
    names = {where.split(" row ")[0] for where, _ in records} if shape == "datasets DatasetDict" else set()
    if names and names <= set(SPLIT_NAMES) and names != {"train"}:  # train, dev (validation), test: the user's splits
        by_split: dict[str, list] = {}
        for where, record in records:
            by_split.setdefault(SPLIT_NAMES[where.split(" row ")[0]], []).append((where, record))
        given, fmt = {}, None
        for split, rows in by_split.items():
            given[split], fmt = _examples(path, rows, fmt)
        return FileTask(name, path, scorer, given, f"{shape}, {FORMATS[fmt].partition(' (')[0]}", digest,
                        given_splits=True)
    examples, fmt = _examples(path, records)
    return FileTask(name, path, scorer, examples, f"{shape}, {FORMATS[fmt].partition(' (')[0]}", digest)


def split_files(directory: Path) -> dict[str, Path]:
    """A directory's split files (``train.jsonl``, ``dev.json``, ``validation.jsonl``, ``test.jsonl``...),
    by split; empty for a directory without any (one ``datasets`` wrote, say)."""
    found = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.suffix in (".json", ".jsonl") and f.stem in SPLIT_NAMES:
            found.setdefault(SPLIT_NAMES[f.stem], f)
    return found


def _examples(path: str, records: list, fmt: str | None = None) -> tuple[list[Example], str]:
    """The records as examples, all of one format (``fmt``: the one the other splits have)."""
    examples, first = [], None
    for where, record in records:
        this = record_format(path, where, record)
        if fmt is None:
            fmt, first = this, where
        elif this != fmt:
            if first:
                raise UsageError(f"{path}: {where}: the record is {FORMATS[this]}, the first one ({first}) "
                                 f"{FORMATS[fmt]}; a file holds records of one format")
            raise UsageError(f"{path}: {where}: the record is {FORMATS[this]}, the other splits' records are "
                             f"{FORMATS[fmt]}; a task's records are of one format")
        examples.append(to_example(path, where, record, fmt))
    return examples, fmt


# ---------------------------------------------------------------- reading files


def read_file(path: Path) -> tuple[list[tuple[str, dict]], str, str]:
    """``([(where, record), ...], shape, digest)`` of a JSON or JSON Lines file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    digest = hashlib.sha256(raw).hexdigest()[:12]
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UsageError(f"{path}: line 1: not UTF-8 (the file is UTF-16); save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UsageError(
            f"{path}: line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {column} of the line); save it as UTF-8"
        ) from None
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise UsageError(f"{path}: empty file (no records)")
    if text[start] == "[":
        return list(_array_records(path, text, start)), "JSON array", digest
    return list(_line_records(path, text)), "JSON Lines", digest


def _line_records(path: Path, text: str):
    lines = text.split("\n")
    last = max(i for i, line in enumerate(lines) if line.strip())
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            cut_off = i == last and (e.pos >= len(line.rstrip()) or e.msg.startswith("Unterminated string"))
            if cut_off:
                raise UsageError(f"{path}: line {i + 1}: the record is cut off at the end of the file; is the file truncated?") from None
            raise UsageError(f"{path}: line {i + 1}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield f"line {i + 1}", check_object(path, f"line {i + 1}", record)


def _array_records(path: Path, text: str, start: int):
    """Records of a JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()
    line, seen = 1, 0  # line number at offset ``seen``, counted incrementally

    def line_at(pos: int) -> int:
        nonlocal line, seen
        line += text.count("\n", seen, pos)
        seen = pos
        return line

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def truncated(pos: int) -> UsageError:
        return UsageError(f"{path}: line {line_at(pos)}: the JSON array is not closed; is the file truncated?")

    pos = skip(start + 1)
    if pos < len(text) and text[pos] == "]":
        raise UsageError(f"{path}: line {line_at(pos)}: empty JSON array (no records)")
    while True:
        if pos >= len(text):
            raise truncated(pos)
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
                raise UsageError(f"{path}: line {e.lineno}: the record is cut off at the end of the file; is the file truncated?") from None
            raise UsageError(f"{path}: line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        where = f"line {line_at(pos)}"
        yield where, check_object(path, where, record)
        pos = skip(end)
        if pos >= len(text):
            raise truncated(pos)
        if text[pos] == "]":
            if text[pos + 1:].strip():
                raise UsageError(f"{path}: line {line_at(skip(pos + 1))}: invalid JSON (text after the closing ])")
            return
        if text[pos] != ",":
            raise UsageError(f"{path}: line {line_at(pos)}: invalid JSON (expected , or ] after a record)")
        pos = skip(pos + 1)


def read_dataset_dir(path: Path) -> tuple[list[tuple[str, dict]], str, str]:
    """Rows of a ``datasets`` ``save_to_disk`` directory (all splits of a DatasetDict)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # FileNotFoundError, arrow errors...: all mean "not such a directory"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: not a directory written by datasets' save_to_disk ({reason})") from None
    parts = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    records, fingerprints = [], []
    for split, dataset in parts:
        fingerprints.append(getattr(dataset, "_fingerprint", "") or "")
        for i, row in enumerate(dataset):
            records.append((f"{split} row {i + 1}" if split else f"row {i + 1}", row))
    digest = hashlib.sha256("".join(fingerprints).encode()).hexdigest()[:12]
    kind = "datasets DatasetDict" if len(parts) > 1 or parts[0][0] else "datasets Dataset"
    return records, kind, digest


#: a file scored by accuracy whose answers take at most this many distinct values (each
#: answering at least 5 records on average) is a classification task: it gets ``choices``
MAX_CHOICES = 10


class FileTask(Task):
    """The task a user's data file makes (built by the core, not registered by a plugin)."""

    #: with the user's own splits: one line per pair of splits that share prompts (:func:`overlaps`)
    overlap: list = []

    max_new_tokens = 256  # the cell also caps it at the longest training answer

    def __init__(self, name: str, path: str, scorer: str, examples, shape: str, digest: str,
                 given_splits: bool = False):
        """``examples``: one list, split here; or, with ``given_splits``, the user's own
        ``{split: examples}``, used as given."""
        from .scorers import SCORERS

        self.name, self.source, self.score_name, self.version = name, path, scorer, digest
        self._scorer = SCORERS[scorer]
        if given_splits:
            if "train" not in examples:
                raise UsageError(f"{name}: no train split (given: {', '.join(sorted(examples))}); "
                                 "a test split alone cannot train anything")
            missing = [split for split in SPLITS if split not in examples]
            if missing:
                raise UsageError(f"{name}: no {' or '.join(missing)} split: give {', '.join(m + '=PATH' for m in missing)} "
                                 "(leitai scores dev during and after training, test at the end, and never re-splits "
                                 "a user's splits)")
            self._splits = {s: [dataclasses.replace(e, id=f"{s}-{i + 1}") for i, e in enumerate(examples.get(s, []))]
                            for s in SPLITS}
            self.default_sizes = {s: len(v) for s, v in self._splits.items()}  # all of each, as given
            self.overlap = overlaps(self._splits)
            counts = ", ".join(f"{s} {len(v)}" for s, v in self._splits.items())
            self.description = f"{path}: the user's splits ({counts}; {shape})"
        else:
            self._splits = assign_splits(examples, distinct_answers=True)
            kept = sum(len(v) for v in self._splits.values())
            dropped = f", {len(examples) - kept} duplicates dropped" if kept < len(examples) else ""
            self.description = f"{path}: {len(examples)} records ({shape}{dropped})"
        empty = " and ".join(split for split, exs in self._splits.items() if not exs)
        if empty and given_splits:
            raise UsageError(f"{name}: the {empty} split(s) hold no records")
        if empty:
            raise UsageError(f"{path}: {sum(len(v) for v in self._splits.values())} distinct records leave the {empty} "
                             "split(s) empty (dev and test each take about 10% by a hash of the prompt); give more records")
        every = [e for exs in self._splits.values() for e in exs]
        answers = sorted({e.output for e in every})
        single_turn = not any(e.is_conversation for e in every)
        if single_turn and scorer in ("accuracy", "exact_match") and len(answers) <= min(MAX_CHOICES, len(every) / 5):
            self.choices = tuple(answers)

    def splits(self, sizes=None):
        return take(self._splits, sizes)

    def score(self, predictions, references):
        return self._scorer(predictions, references)


def overlaps(splits: dict[str, list[Example]]) -> list[str]:
    """One line per pair of a user's splits that share prompts (normalised, as the splits of one
    file are kept apart): how many of the later split's examples the earlier one holds too."""
    prompts = {s: {_prompt_text(e, normalise) for e in exs} for s, exs in splits.items()}
    lines = []
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = len(prompts.get(a, set()) & prompts.get(b, set()))
        if shared:
            lines.append(f"{shared} of the {len(splits[b])} {b} examples have a prompt the {a} split has too")
    return lines
