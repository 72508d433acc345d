"""A task's splits and their tokenisation, prepared once and cached on disk.

Every cell of a shootout needs the same train/dev/test splits of its task, tokenised by the
same tokenizer: a grid of methods × seeds would otherwise read the corpus and tokenise it
once per cell. :func:`prepare` does it once and keeps the result under ``tasks/`` in leitai's
cache (:mod:`suite.cache`). An entry is keyed by everything the result depends on: the task's
name, class, source and ``version`` (a task bumps it when its examples change; a user's file
task uses the file's digest), the split sizes, ``max_len``, the task's ``max_new_tokens``, the
tokenizer's fingerprint and this module's format.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from . import cache
from .data import Encoded, encode, encode_prompts
from .tasks import Example

#: bump when the encoding or the stored layout changes
FORMAT = 2


@dataclass
class TaskData:
    """What a cell trains and evaluates on (the same for every method of a task)."""

    train: list[Encoded]
    dev: list[Encoded]
    test: list[Example]
    test_prompts: list[list[int]]  # the test examples' prompt ids, room left for generation
    dev_examples: list[Example]  # the dev split as text (tuning runs are scored on it)
    dev_prompts: list[list[int]]  # and its prompt ids, like test_prompts
    train_answers: list[str]  # the training answers as text (the majority baseline)
    max_new_tokens: int
    truncated: int  # training examples that did not fit max_len
    eval_truncated: int  # dev and test examples that did not
    cached: bool = False  # read from the cache rather than built
    seconds: float = 0.0  # wall time to prepare (or read) it


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of everything in ``tokenizer`` that decides token ids: its vocabulary, merges,
    normaliser and special tokens (a fast tokenizer's full serialisation), and its class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = json.loads(backend.to_str())
        body.pop("padding", None), body.pop("truncation", None)  # padding never changes ids
    else:
        body = sorted(tokenizer.get_vocab().items())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    doc = [type(tokenizer).__name__, body, special, tokenizer.bos_token_id, tokenizer.eos_token_id]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def cache_key(task, sizes: dict | None, max_len: int, tokenizer) -> dict:
    return {
        "format": FORMAT, "task": task.name, "class": f"{type(task).__module__}.{type(task).__qualname__}",
        "source": task.source, "version": str(task.version), "sizes": sizes, "max_len": max_len,
        "max_new_tokens": task.max_new_tokens, "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def cache_name(key: dict) -> str:
    """The cache entry of a task's data: the task's name and a digest of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in key["task"])[:60]
    return f"tasks/{safe}-{digest}.json"


def build(task, sizes: dict | None, max_len: int, tokenizer) -> TaskData:
    """The task's splits, tokenised (no cache)."""
    splits = task.splits(sizes)
    train, truncated = encode(tokenizer, splits["train"], max_len)
    dev, dev_truncated = encode(tokenizer, splits["dev"], max_len)
    max_new_tokens = generation_budget(task.max_new_tokens, train)
    prompts = encode_prompts(tokenizer, splits["test"], max_len - max_new_tokens)
    dev_prompts = encode_prompts(tokenizer, splits["dev"], max_len - max_new_tokens)
    return TaskData(
        train=train, dev=dev, test=list(splits["test"]), test_prompts=[ids for ids, _ in prompts],
        dev_examples=list(splits["dev"]), dev_prompts=[ids for ids, _ in dev_prompts],
        train_answers=[ex.output for ex in splits["train"]], max_new_tokens=max_new_tokens,
        truncated=truncated, eval_truncated=dev_truncated + sum(cut for _, cut in prompts),
    )


def prepare(task, sizes: dict | None, max_len: int, tokenizer) -> TaskData:
    """The task's data for a cell: from the cache when an entry for exactly these inputs
    exists, else built and stored. ``cached`` and ``seconds`` say which and how long it took."""
    start = time.perf_counter()
    key = cache_key(task, sizes, max_len, tokenizer)
    data = _from_doc(cache.load_json(cache_name(key)), key)
    if data is None:
        data = build(task, sizes, max_len, tokenizer)
        cache.store_json(cache_name(key), _to_doc(key, data), compact=True)
    data.seconds = time.perf_counter() - start
    return data


def _from_doc(doc, key: dict) -> TaskData | None:
    if not isinstance(doc, dict) or doc.get("key") != key:  # none, a digest collision or a hand-edited file
        return None
    return TaskData(
        train=[Encoded(*e) for e in doc["train"]], dev=[Encoded(*e) for e in doc["dev"]],
        test=[Example(*e) for e in doc["test"]], test_prompts=doc["test_prompts"],
        dev_examples=[Example(*e) for e in doc["dev_examples"]], dev_prompts=doc["dev_prompts"],
        train_answers=doc["train_answers"], max_new_tokens=doc["max_new_tokens"], truncated=doc["truncated"],
        eval_truncated=doc["eval_truncated"], cached=True,
    )


def _to_doc(key: dict, data: TaskData) -> dict:
    return {
        "key": key,
        "train": [[e.example_id, e.prompt, e.answer] for e in data.train],
        "dev": [[e.example_id, e.prompt, e.answer] for e in data.dev],
        "test": [[e.id, e.instruction, e.input, e.output] for e in data.test],
        "test_prompts": data.test_prompts,
        "dev_examples": [[e.id, e.instruction, e.input, e.output] for e in data.dev_examples],
        "dev_prompts": data.dev_prompts, "train_answers": data.train_answers,
        "max_new_tokens": data.max_new_tokens,
        "truncated": data.truncated, "eval_truncated": data.eval_truncated,
    }


def generation_budget(max_new_tokens: int, train_set: list) -> int:
    """Tokens greedy generation may produce: the task's ``max_new_tokens``, but no more than the
    longest training answer (with its end token). Answers are cut to half the context for
    training, so the prompt always keeps room; and no method spends time generating past what
    any method was taught to answer (the same budget for every method of a task)."""
    longest = max((len(e.answer) for e in train_set), default=max_new_tokens)
    return max(1, min(max_new_tokens, longest))
