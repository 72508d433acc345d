"""How a model is scored on a task, the same for every method and for the baselines: greedy
answers scored by the task (overall and per example), choice accuracy for classification tasks,
and the loss of a model that knows a classification task's answer format but not its labels.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter

import torch

from ..data.batches import Encoded, eval_batches
from .generation import greedy_generate


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int], device,
                   batch_size: int) -> list[str]:
    """The model's greedy answer to each prompt, as text (it ends at any of ``stop_ids``)."""
    outputs = greedy_generate(model, prompts, max_new_tokens, stop_ids, tokenizer.pad_token_id, device, batch_size)
    return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]


def scored(task, texts: list[str], asks: list, prompts: list[str] | None = None) -> tuple[dict, list[dict]]:
    """The task's scores of ``texts`` against the references of ``asks`` (what each answer was
    asked: an example, or a conversation cut after the turn it answers): ``score``, and for
    conversations ``score_turn1``... (:func:`suite.data.tasks.score_answers`); and one generation
    entry per answer (prompt text, turn, reference, answer and the answer's own score)."""
    from ..data.tasks import format_prompt, score_answers

    references = [ex.output for ex in asks]
    single = [i for i, ex in enumerate(asks) if not ex.is_conversation]
    per_answer = [
        float(task.score_turn(len(ex.all_turns), [t], [r])) if ex.is_conversation else None
        for ex, t, r in zip(asks, texts, references)
    ]
    for i, score in zip(single, task.example_scores([texts[i] for i in single], [references[i] for i in single])):
        per_answer[i] = score
    prompts = prompts or [format_prompt(ex) for ex in asks]
    generations = [
        {"example_id": ex.id, "turn": len(ex.all_turns), "prompt": p, "reference": ex.output, "output": t,
         "example_score": s}
        for ex, p, t, s in zip(asks, prompts, texts, per_answer)
    ]
    scores = {k: float(v) for k, v in score_answers(task, texts, references, asks).items()}
    return scores, generations


@torch.inference_mode()
def choice_log_likelihoods(model, prompts: list[list[int]], choices: list[list[int]], pad_id: int, device,
                           batch_size: int = 32, answer_head: bool | None = None) -> torch.Tensor:
    """``(prompts, choices)`` log-likelihoods: the sum of the log-probabilities of each choice's
    tokens (its end token included) after each prompt, from one forward pass per batch. The
    pairs are batched by length (:func:`~suite.data.batches.eval_batches`), so padding is minimal, and
    the output head and the softmax run only where a choice token is predicted
    (:func:`~suite.measures.loss.answer_logits`; ``answer_head`` as there)."""
    from .loss import answer_logits

    pairs = [Encoded(str(n), p, c) for n, (p, c) in enumerate(itertools.product(prompts, choices))]  # id: row of out
    out = torch.empty(len(pairs))
    for chunk, (rows, _, target, _), logits in answer_logits(model, eval_batches(pairs, batch_size), pad_id, device,
                                                             answer_head):
        picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        sums = torch.zeros(len(chunk), device=picked.device).index_add_(0, rows, picked)
        out[[int(pair.example_id) for pair in chunk]] = sums.cpu()
    return out.view(len(prompts), len(choices))


def choice_accuracy(model, tokenizer, prompts: list[list[int]], choices: tuple[str, ...], references: list[str],
                    device, batch_size: int = 32, answer_head: bool | None = None) -> float:
    """Share of examples whose reference is the choice with the highest log-likelihood."""
    from ..data.batches import answer_ids

    ids = answer_ids(tokenizer, list(choices))
    best = choice_log_likelihoods(model, prompts, ids, tokenizer.pad_token_id, device, batch_size, answer_head)
    return sum(choices[int(b)] == r for b, r in zip(best.argmax(dim=1), references)) / len(references) if references else math.nan


def class_prior_loss(answers: list[str], train: list[Encoded]) -> float:
    """The training loss per answer token of a model that knows the answer format but not the
    task: it gives each label its training frequency. The entropy of the labels, over the mean
    number of answer tokens (the end token included), since the loss is a mean over tokens."""
    counts = Counter(answers)
    total = sum(counts.values())
    entropy = -sum(n / total * math.log(n / total) for n in counts.values())
    tokens = sum(len(e.answer) for e in train) / len(train)
    return entropy / tokens
