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

        from plugins.models.tiny_zh import TinyZh

        _, tokenizer = TinyZh().load()
        shape = dict(self.shape)
        config = AutoConfig.for_model(shape.pop("arch"), max_position_embeddings=4096, **shape,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        return model, tokenizer


def random_llama(hidden: int, layers: int, heads: int | None = None, ffn: int | None = None, max_len: int = 512):
    """``(model, tokenizer)``: a randomly initialised LLaMA (seed 0, float32) of the given size
    with tiny-zh's tokenizer and vocabulary; ``heads`` defaults to hidden / 64 and ``ffn`` to
    2.75 x hidden, as in tiny-zh."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from plugins.models.tiny_zh import TinyZh

    _, tokenizer = TinyZh().load()
    heads = heads or max(1, hidden // 64)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ffn or int(2.75 * hidden),
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max(512, max_len), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32), tokenizer


@hookimpl
def register_models(register):
    for name, shape in SHAPES.items():
        register(RandomModel(name, shape))
