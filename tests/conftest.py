import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LEITAI_PROGRESS", "0")


def tiny_config(kind: str, vocab_size: int = 128):
    """A few-thousand-parameter causal LM config of each architecture the tests cover."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if kind == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if kind == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0, vocab_size: int = 128):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(kind, vocab_size))


def leitai(*args, env=None, cwd=None, timeout=600):
    """Run the ``leitai`` command line in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "suite.cli", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout,
    )


@pytest.fixture(scope="session")
def registry():
    from suite.plugins import load_registry

    return load_registry()
