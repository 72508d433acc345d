"""Randomly initialised base models of real shapes, for benchmarks (not for scores).

Load with ``LEITAI_PLUGINS=benchmarks.random_models`` (run from the repository root). The
tokenizer is tiny-zh's; the vocabulary rows beyond it exist only to give the real shape.
"""
from suite import ModelSpec, hookimpl

SHAPES = {
    # Qwen2-0.5B's published shape: ~494M parameters
    "random-qwen2-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                              tie_word_embeddings=True),
}


class RandomModel(ModelSpec):
    def __init__(self, name, shape):
        self.name, self.shape = name, dict(shape)
        self.description = f"random init, {shape['arch']} shape (benchmarks only)"

    def load(self):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from plugins.tiny_zh import TinyZh

        _, tokenizer = TinyZh().load()
        shape = dict(self.shape)
        config = AutoConfig.for_model(shape.pop("arch"), max_position_embeddings=4096, **shape,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        return model, tokenizer


@hookimpl
def register_models(register):
    for name, shape in SHAPES.items():
        register(RandomModel(name, shape))
