"""Greedy generation for scoring, and the reference it must agree with.

Prompts are batched only with prompts of the same length, so no batch carries padding: the
result is exactly what each prompt alone would give, for every method (prompt-learning
methods ignore position ids, so left padding would shift their positions).
"""
from __future__ import annotations

from collections import defaultdict

import torch

from ..progress import beat


def _cut(tokens: list[int], stops: list[int]) -> list[int]:
    at = next((i for i, t in enumerate(tokens) if t in stops), None)
    return tokens if at is None else tokens[:at]


@torch.inference_mode()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | list[int], pad_id: int, device,
                    batch_size: int = 32) -> list[list[int]]:
    """New token ids (up to, not including, the end token) for each prompt, in order.
    ``eos_id``: the end token, or every token that ends an answer (a chat template's end of turn)."""
    from transformers import GenerationConfig

    stops = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stops if len(stops) > 1 else stops[0],
        pad_token_id=pad_id,
    )
    model.eval()
    by_length = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    out: list[list[int] | None] = [None] * len(prompts)
    for length, idx in sorted(by_length.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            beat("generating")
            ids = torch.tensor([prompts[i] for i in chunk], device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            for row, i in enumerate(chunk):
                out[i] = _cut(gen[row, length:].tolist(), stops)
    return out


@torch.inference_mode()
def greedy_by_forward(model, prompt: list[int], max_new_tokens: int, eos_id: int, device) -> list[int]:
    """Greedy decoding by full forward passes, no cache: what cached generation must equal."""
    model.eval()
    seq = torch.tensor([prompt], device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0, -1]
        token = int(logits.argmax())
        if token == eos_id:
            break
        new.append(token)
        seq = torch.cat([seq, torch.tensor([[token]], device=device)], dim=1)
    return new
