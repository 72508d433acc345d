"""A task's splits and their tokenisation, prepared once and cached on disk.

Every cell of a shootout needs the same train/dev/test splits of its task, tokenised by the
same tokenizer: a grid of methods × seeds would otherwise read the corpus and tokenise it
once per cell. :func:`prepare` does it once and keeps the result under ``tasks/`` in leitai's
cache (:mod:`suite.data.cache`). An entry is keyed by everything the result depends on: the task's
name, class, source and ``version`` (a task bumps it when its examples change; a user's file
task uses the file's digest), the split sizes, ``max_len``, the task's ``max_new_tokens``, the
tokenizer's fingerprint, the chat template conversations are rendered with and this module's
format.

Single-turn examples are encoded in the instruction format (:func:`suite.data.batches.encode`),
or, with ``chat`` (``--prompt-format``, :func:`suite.data.chat.chat_format`), as one-turn
conversations; conversations always go through the model's chat template (:mod:`suite.data.chat`),
with the loss on the assistant's part. The test split is one prompt per answer to generate: a
single-turn example's, or each assistant turn of a conversation given the reference answers
before it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass

from . import batches, cache, chat
from .batches import Encoded
from .tasks import Example, Turn, format_prompt

#: bump when the encoding or the stored layout changes (2: conversations; 3: the dev split's prompts; 4: an
#: answer a chat template does not close ends with EOS)
FORMAT = 4


@dataclass
class TaskData:
    """What a cell trains and evaluates on (the same for every method of a task)."""

    train: list[Encoded]
    dev: list[Encoded]
    #: what each test prompt asks: a single-turn example, or a conversation cut after the turn
    #: to answer (:meth:`~suite.data.tasks.Example.upto`); its ``output`` is the reference
    test: list[Example]
    test_prompts: list[list[int]]  # the test prompts' ids, room left for generation
    test_texts: list[str]  # the test prompts as text (for generations.csv)
    #: the dev split as :attr:`test` holds the test split (tuning runs are scored on it), and its prompt ids
    dev_examples: list[Example]
    dev_prompts: list[list[int]]
    train_answers: list[str]  # the training answers as text (the majority baseline)
    stop_ids: list[int]  # the tokens greedy generation stops at (:func:`suite.data.chat.stop_ids`)
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


def cache_key(task, sizes: dict | None, max_len: int, tokenizer, chat_format: bool = False) -> dict:
    template = hashlib.sha256(chat.template_of(tokenizer).encode()).hexdigest()
    return {"prompt_format": "chat" if chat_format else "plain",
        "format": FORMAT, "task": task.name, "class": f"{type(task).__module__}.{type(task).__qualname__}",
        "source": task.source, "version": str(task.version), "sizes": sizes, "max_len": max_len,
        "max_new_tokens": task.max_new_tokens, "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": template,
    }


def cache_name(key: dict) -> str:
    """The cache entry of a task's data: the task's name and a digest of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in key["task"])[:60]
    return f"tasks/{safe}-{digest}.json"


def encode(tokenizer, examples: list[Example], max_len: int, chat_format: bool = False) -> tuple[list[Encoded], int]:
    """Training ids of ``examples`` in their order, and how many were cut to ``max_len``:
    single-turn ones in the instruction format (or, ``chat_format``, as one-turn conversations),
    conversations through the chat template."""
    out: list[Encoded | None] = [None] * len(examples)
    cut = 0
    for templated, encoder in ((False, batches.encode), (True, chat.encode)):
        chosen = [i for i, ex in enumerate(examples) if (ex.is_conversation or chat_format) == templated]
        if chosen:
            items, n = encoder(tokenizer, [chat.as_turn(examples[i]) if templated else examples[i] for i in chosen],
                               max_len)
            cut += n
            for i, item in zip(chosen, items):
                out[i] = item
    return out, cut


def eval_prompts(tokenizer, examples: list[Example], max_prompt: int,
                 chat_format: bool = False) -> tuple[list[Example], list[list[int]], list[str], int]:
    """One prompt per answer to generate, fitted to ``max_prompt``: ``(what each prompt asks,
    its ids, its text, how many were cut)``; a conversation gives one per assistant turn. With
    ``chat_format`` a single-turn example's prompt is its one-turn conversation's (it still asks
    the example itself, scored as a single-turn answer)."""
    plain = [ex for ex in examples if not ex.is_conversation and not chat_format]
    singles = iter(batches.encode_prompts(tokenizer, plain, max_prompt))
    conversations = [chat.as_turn(ex) for ex in examples if ex.is_conversation or chat_format]
    turns = iter(chat.turn_prompts(tokenizer, conversations, max_prompt) if conversations else [])
    asks, ids, texts, cut = [], [], [], 0
    for ex in examples:
        if not ex.is_conversation and chat_format:
            ((prompt, was_cut),) = next(turns)
            asks.append(ex), ids.append(prompt), texts.append(tokenizer.decode(prompt))
            cut += was_cut
            continue
        if not ex.is_conversation:
            prompt, was_cut = next(singles)
            asks.append(ex), ids.append(prompt), texts.append(format_prompt(ex))
            cut += was_cut
            continue
        for k, (prompt, was_cut) in enumerate(next(turns), start=1):
            asks.append(ex.upto(k)), ids.append(prompt), texts.append(tokenizer.decode(prompt))
            cut += was_cut
    return asks, ids, texts, cut


def build(task, sizes: dict | None, max_len: int, tokenizer, chat_format: bool = False) -> TaskData:
    """The task's splits, tokenised (no cache)."""
    splits = task.splits(sizes)
    train, truncated = encode(tokenizer, splits["train"], max_len, chat_format)
    dev, dev_truncated = encode(tokenizer, splits["dev"], max_len, chat_format)
    max_new_tokens = generation_budget(task.max_new_tokens, train)
    test, prompts, texts, test_truncated = eval_prompts(tokenizer, splits["test"], max_len - max_new_tokens, chat_format)
    dev_asks, dev_prompts, _, _ = eval_prompts(tokenizer, splits["dev"], max_len - max_new_tokens, chat_format)
    conversations = chat_format or any(ex.is_conversation for split in splits.values() for ex in split)
    return TaskData(
        train=train, dev=dev, test=test, test_prompts=prompts, test_texts=texts,
        dev_examples=dev_asks, dev_prompts=dev_prompts, train_answers=[ex.output for ex in splits["train"]],
        stop_ids=chat.stop_ids(tokenizer) if conversations else [tokenizer.eos_token_id],
        max_new_tokens=max_new_tokens, truncated=truncated, eval_truncated=dev_truncated + test_truncated,
    )


def prepare(task, sizes: dict | None, max_len: int, tokenizer, chat_format: bool = False) -> TaskData:
    """The task's data for a cell: from the cache when an entry for exactly these inputs
    exists, else built and stored. ``cached`` and ``seconds`` say which and how long it took."""
    start = time.perf_counter()
    key = cache_key(task, sizes, max_len, tokenizer, chat_format)
    data = _from_doc(cache.load_json(cache_name(key)), key)
    if data is None:
        data = build(task, sizes, max_len, tokenizer, chat_format)
        cache.store_json(cache_name(key), _to_doc(key, data), compact=True)
    data.seconds = time.perf_counter() - start
    return data


def _from_doc(doc, key: dict) -> TaskData | None:
    if not isinstance(doc, dict) or doc.get("key") != key:  # none, a digest collision or a hand-edited file
        return None

    def example(e):
        return Example(*e[:4], turns=tuple(Turn(*t) for t in e[4]), system=e[5])

    return TaskData(
        train=[Encoded(i, p, a, [tuple(s) for s in spans]) for i, p, a, spans in doc["train"]],
        dev=[Encoded(i, p, a, [tuple(s) for s in spans]) for i, p, a, spans in doc["dev"]],
        test=[example(e) for e in doc["test"]], test_prompts=doc["test_prompts"], test_texts=doc["test_texts"],
        dev_examples=[example(e) for e in doc["dev_examples"]], dev_prompts=doc["dev_prompts"],
        train_answers=doc["train_answers"], stop_ids=doc["stop_ids"], max_new_tokens=doc["max_new_tokens"],
        truncated=doc["truncated"],
        eval_truncated=doc["eval_truncated"], cached=True,
    )


def _to_doc(key: dict, data: TaskData) -> dict:
    def encoded(items):
        return [[e.example_id, e.prompt, e.answer, [list(s) for s in e.earlier_answers]] for e in items]

    def examples(items):
        return [[e.id, e.instruction, e.input, e.output, [list(dataclasses.astuple(t)) for t in e.turns], e.system]
                for e in items]

    return {
        "key": key, "train": encoded(data.train), "dev": encoded(data.dev),
        "test": examples(data.test), "test_prompts": data.test_prompts, "test_texts": data.test_texts,
        "dev_examples": examples(data.dev_examples), "dev_prompts": data.dev_prompts,
        "train_answers": data.train_answers, "stop_ids": data.stop_ids,
        "max_new_tokens": data.max_new_tokens, "truncated": data.truncated, "eval_truncated": data.eval_truncated,
    }


def generation_budget(max_new_tokens: int, train_set: list) -> int:
    """Tokens greedy generation may produce: the task's ``max_new_tokens``, but no more than the
    longest training answer (with its end token). Answers are cut to half the context for
    training, so the prompt always keeps room; and no method spends time generating past what
    any method was taught to answer (the same budget for every method of a task); a conversation's
    every answer counts."""
    longest = max((max(e.answer_lengths()) for e in train_set), default=max_new_tokens)
    return max(1, min(max_new_tokens, longest))
