"""Base models: named ones from plugins, anything else through transformers' Auto classes."""
from __future__ import annotations


class ModelSpec:
    """Base class for named base models. Register instances through ``register_models``."""

    name: str = ""
    description: str = ""
    #: the model used when no ``--model`` is given (one registered model sets this)
    default: bool = False

    def load(self):
        """Return ``(model, tokenizer)``: a causal LM in float32 on the CPU, and its tokenizer.

        Must work offline where the model ships with a package, and must give the same
        weights in every process (every method of a shootout starts from the same base).
        """
        raise NotImplementedError


class HubModel(ModelSpec):
    """Any Hugging Face model id or local path, loaded through ``AutoModelForCausalLM``."""

    def __init__(self, name: str, trust_remote_code: bool = False):
        self.name = name
        self.trust_remote_code = trust_remote_code
        self.description = f"{name} (transformers Auto classes)"

    def load(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.name, trust_remote_code=self.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            self.name, trust_remote_code=self.trust_remote_code, dtype=torch.float32
        )
        return model, tokenizer


def resolve(name: str, registry, trust_remote_code: bool = False) -> ModelSpec:
    if name in registry.models:
        return registry.models[name]
    return HubModel(name, trust_remote_code)


def prepare_tokenizer(tokenizer):
    """Make sure the tokenizer can pad (right side, for training) and has an end token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer
