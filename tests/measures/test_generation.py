"""Scores come from generation and choice scoring, so both must be right for every method.

For each method on tiny Llama and Qwen2 configs, after a few training steps, the arena's
cached, batched ``generate`` must equal greedy decoding by full forward passes. This is the
test that fails if transformers is upgraded past the version where peft's prompt-learning
generation silently breaks (transformers 5.24 with peft <= 0.21.2: docs/getting-started.md, "Pinned versions, and why").
"""
import pytest
import torch

from suite.cell.train import TrainSettings, train
from suite.data import batches as data
from suite.measures.generation import greedy_by_forward, greedy_generate
from suite.measures.task_scores import choice_log_likelihoods
from suite.methods.method import method_params
from suite.testing import tiny_model

METHODS = ["lora", "prefix-tuning", "p-tuning", "prompt-tuning", "lst", "full"]
SMALL = {"prefix-tuning": {"projection_hidden": 16}, "p-tuning": {"encoder_hidden": 16}, "prompt-tuning": {"init": "RANDOM"}}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("name", METHODS)
def test_cached_generation_equals_forward_decoding(name, kind, registry):
    from accelerate import Accelerator

    method = registry.methods[name]
    params = method_params(method, SMALL.get(name))
    torch.manual_seed(0)
    model = method.apply(tiny_model(kind), params)
    g = torch.Generator().manual_seed(1)
    train_items = [data.Encoded(str(i), torch.randint(3, 128, (9,), generator=g).tolist(),
                                torch.randint(3, 128, (4,), generator=g).tolist() + [2]) for i in range(8)]
    train(model, [train_items] * 3, 0, TrainSettings(lr=1e-2, warmup=0.0), Accelerator(cpu=True))
    # prompts of two lengths, so batches of equal-length prompts are exercised too
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (5, 5, 5, 8, 8, 11)]
    check_choice_scores(model, g)
    cached = greedy_generate(model, prompts, max_new_tokens=8, eos_id=2, pad_id=0, device="cpu")
    for prompt, got in zip(prompts, cached):
        assert got == greedy_by_forward(model, prompt, 8, eos_id=2, device="cpu"), (name, kind, prompt)
    assert any(len(c) > 0 for c in cached)


def check_choice_scores(model, g: torch.Generator) -> None:
    """Batched choice scoring (length-sorted batches, the head and the softmax at the scored
    positions only) equals each prompt and choice scored alone: the sum of the
    log-probabilities of the choice's tokens after the prompt, from the logits of a full
    forward pass; and it equals batched scoring from full logits."""
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (4, 9, 6, 9, 12)]
    choices = [[5, 2], [7, 8, 2], [9, 2]]  # of different lengths, so pairs are padded
    got = choice_log_likelihoods(model, prompts, choices, pad_id=0, device="cpu", batch_size=4)
    full = choice_log_likelihoods(model, prompts, choices, pad_id=0, device="cpu", batch_size=4, answer_head=False)
    assert torch.allclose(got, full, atol=1e-5)
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            for j, choice in enumerate(choices):
                ids = torch.tensor([prompt + choice])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, -ids.shape[1]:].float(), dim=-1)
                want = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(choice))
                assert float(got[i, j]) == pytest.approx(want, abs=1e-4), (i, j)
