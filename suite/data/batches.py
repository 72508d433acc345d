"""From examples to training batches: tokenisation, length-grouped order, right padding.

Every method of a shootout trains on exactly the same batches in the same order: they depend
on the task's examples, the tokenizer, the seed, the batch size and the step budget, never on
the method. Batches group examples of similar length, so padding wastes little compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .tasks import Example, prompt_parts

IGNORE = -100  # label of positions that carry no loss (prompt and padding)


@dataclass
class Encoded:
    example_id: str
    prompt: list[int]  # what generation starts from
    answer: list[int]  # the reference answer, ending with the end-of-sequence token
    #: a conversation's earlier assistant answers: [start, end) token spans of ``prompt`` that
    #: carry loss too (empty for single-turn examples, or when training on the last turn only)
    earlier_answers: list[tuple[int, int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.answer)

    def answer_lengths(self) -> list[int]:
        """Tokens of each assistant answer in the example, the last one included."""
        return [end - start for start, end in self.earlier_answers] + [len(self.answer)]

    def last_turn_only(self) -> Encoded:
        """The same tokens with loss on the last answer only."""
        return Encoded(self.example_id, self.prompt, self.answer)


def token_ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    """Token ids of many texts in one batched tokenizer call; each distinct text once."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return []
    ids = dict(zip(distinct, tokenizer(distinct, add_special_tokens=special).input_ids))
    return [list(ids[t]) for t in texts]


def answer_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids as an answer: no start token, the end-of-sequence token last."""
    return [ids + [tokenizer.eos_token_id] for ids in token_ids(tokenizer, texts, False)]


def _prompt_ids(tokenizer, examples: list[Example]) -> list[tuple[list[int], list[int], list[int]]]:
    """(head, body, tail) token ids of each example's prompt (see :func:`prompt_parts`)."""
    parts = [prompt_parts(ex) for ex in examples]
    heads = token_ids(tokenizer, [p[0] for p in parts], True)  # with the start token, if any
    bodies = token_ids(tokenizer, [p[1] for p in parts], False)
    tails = token_ids(tokenizer, [p[2] for p in parts], False)
    return list(zip(heads, bodies, tails))


def fit(head: list[int], body: list[int], tail: list[int], max_prompt: int) -> tuple[list[int], bool]:
    """``head + body + tail`` with the body's end cut off to fit ``max_prompt``; whether it was."""
    room = max(max_prompt - len(head) - len(tail), 0)
    return head + body[:room] + tail, len(body) > room


def encode_prompts(tokenizer, examples: list[Example], max_prompt: int) -> list[tuple[list[int], bool]]:
    """Each example's prompt ids, its body shortened to fit ``max_prompt``, and whether it was."""
    return [fit(*parts, max_prompt) for parts in _prompt_ids(tokenizer, examples)]


def encode_prompt(tokenizer, example: Example, max_prompt: int) -> tuple[list[int], bool]:
    """Token ids of the example's prompt, its body shortened to fit ``max_prompt``."""
    return encode_prompts(tokenizer, [example], max_prompt)[0]


def encode(tokenizer, examples: list[Example], max_len: int) -> tuple[list[Encoded], int]:
    """Tokenise examples for training; returns them and how many had to be truncated.

    The answer keeps at most half the context; the prompt's body gives way first, so the
    instruction and the ``Answer:`` cue always survive. Tokenisation is batched (one tokenizer
    call per prompt part and one for the answers, each distinct text once).
    """
    answers = token_ids(tokenizer, [ex.output for ex in examples], False)
    out, truncated = [], 0
    for ex, answer, parts in zip(examples, answers, _prompt_ids(tokenizer, examples)):
        cut = len(answer) + 1 > max_len // 2
        answer = answer[: max_len // 2 - 1] + [tokenizer.eos_token_id]
        prompt, cut_prompt = fit(*parts, max_len - len(answer))
        truncated += cut or cut_prompt
        out.append(Encoded(ex.id, prompt, answer))
    return out, truncated


def batch_order(lengths: list[int], batch_size: int, steps: int, seed: int, group: int = 32) -> list[list[int]]:
    """Indices of the examples of each of ``steps`` batches.

    Each epoch is a seeded permutation, cut into chunks of ``group`` batches; inside a chunk
    examples are sorted by length before they are cut into batches, and the chunk's batches
    are shuffled again, so lengths inside a batch are close while the order stays random.
    """
    n = len(lengths)
    if n == 0:
        raise ValueError("no training examples")
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        chunk = batch_size * group
        for start in range(0, n, chunk):
            part = sorted(perm[start : start + chunk], key=lambda i: lengths[i])
            cut = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
            for j in torch.randperm(len(cut), generator=g).tolist():
                batches.append(cut[j])
        epoch += 1
    return batches[:steps]


def batches_per_epoch(n: int, batch_size: int, group: int = 32) -> int:
    """How many batches :func:`batch_order` cuts one epoch of ``n`` examples into (each chunk of
    ``group`` batches ends with a short one when its examples do not divide evenly)."""
    chunk = batch_size * group
    return sum(math.ceil(min(chunk, n - start) / batch_size) for start in range(0, n, chunk))


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (loss on answers only: the
    last one and a conversation's :attr:`~Encoded.earlier_answers`).

    Right padding keeps every real token at the same position as in an unpadded sequence,
    which prefix tuning needs (its prefix keys carry no rotary position).
    """
    width = max(e.length for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(items):
        seq = e.prompt + e.answer
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(e.prompt) : len(seq)] = torch.tensor(e.answer)
        for start, end in e.earlier_answers:
            labels[row, start:end] = torch.tensor(e.prompt[start:end])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def eval_batches(items: list[Encoded], batch_size: int) -> list[list[Encoded]]:
    """Evaluation batches: sorted by length, so padding is minimal."""
    ordered = sorted(items, key=lambda e: e.length)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
