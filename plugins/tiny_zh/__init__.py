"""The embedded base model ``tiny-zh``: a small LLaMA-architecture Chinese causal LM.

Its config and character-level tokenizer ship in this directory, so it loads with no network.
Until pretrained weights ship next to them, the weights are initialised deterministically
from a fixed seed: every process and every method starts from the same base.
"""
from pathlib import Path

from suite import hookimpl
from suite.models import ModelSpec

HERE = Path(__file__).parent
INIT_SEED = 0


class TinyZh(ModelSpec):
    name = "tiny-zh"
    default = True
    description = "embedded LLaMA-architecture Chinese LM (~5M parameters, character tokenizer)"

    def load(self):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(HERE))
        config = AutoConfig.from_pretrained(str(HERE))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer


@hookimpl
def register_models(register):
    register(TinyZh())
