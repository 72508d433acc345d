"""From examples to training batches: tokenisation, length-grouped order, right padding.

Every method of a shootout trains on exactly the same batches in the same order: they depend
on the task's examples, the tokenizer, the seed, the batch size and the step budget, never on
the method. Batches group examples of similar length, so padding wastes little compute.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .tasks import Example, prompt_parts

IGNORE = -100  # label of positions that carry no loss (prompt and padding)


@dataclass
class Encoded:
    example_id: str
    prompt: list[int]  # what generation starts from
    answer: list[int]  # the reference answer, ending with the end-of-sequence token

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.answer)


def encode_prompt(tokenizer, example: Example, max_prompt: int) -> tuple[list[int], bool]:
    """Token ids of the example's prompt, its body shortened to fit ``max_prompt``."""
    head, body, tail = prompt_parts(example)
    head_ids = tokenizer(head).input_ids  # with the tokenizer's start token, if it adds one
    body_ids = tokenizer(body, add_special_tokens=False).input_ids
    tail_ids = tokenizer(tail, add_special_tokens=False).input_ids
    room = max(max_prompt - len(head_ids) - len(tail_ids), 0)
    return head_ids + body_ids[:room] + tail_ids, len(body_ids) > room


def encode(tokenizer, examples: list[Example], max_len: int) -> tuple[list[Encoded], int]:
    """Tokenise examples for training; returns them and how many had to be truncated.

    The answer keeps at most half the context; the prompt's body gives way first, so the
    instruction and the ``Answer:`` cue always survive.
    """
    out, truncated = [], 0
    for ex in examples:
        answer = tokenizer(ex.output, add_special_tokens=False).input_ids
        cut = len(answer) + 1 > max_len // 2
        answer = answer[: max_len // 2 - 1] + [tokenizer.eos_token_id]
        prompt, cut_prompt = encode_prompt(tokenizer, ex, max_len - len(answer))
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


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (loss on answers only).

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
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def eval_batches(items: list[Encoded], batch_size: int) -> list[list[Encoded]]:
    """Evaluation batches: sorted by length, so padding is minimal."""
    ordered = sorted(items, key=lambda e: e.length)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
