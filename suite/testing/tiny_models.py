"""Tiny random causal LMs of every architecture leitai is tested on, built from transformers'
config classes (no download): for the conformance kit, leitai's own tests and plugin authors'."""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB, PAD, BOS, EOS = 128, 0, 1, 2


#: the kit's default architectures: small and fast, for plugin authors' own tests
ARCHITECTURES = ("llama", "qwen2", "gpt2")


#: every architecture :func:`tiny_config` builds (leitai's own tests run each method on all):
#: the LLaMA line, GLM (the ChatGLM line), BLOOM (the BELLE base), and the other layouts that
#: transformers ships code for (fused QKV, fused gate/up, parallel attention and MLP, ALiBi,
#: LayerNorm with biases, grouped- and multi-query attention, learned positions)
ALL_ARCHITECTURES = ARCHITECTURES + (
    "qwen3", "mistral", "gemma", "gemma2", "phi3", "phi", "glm", "glm4", "bloom", "falcon", "gpt_neox",
    "gptj", "opt", "stablelm", "gpt_bigcode", "mpt", "codegen", "olmo2", "mixtral", "falcon_gqa",
)


#: 64 wide, 4 heads of 16, MLP 128, 2 layers, for every kind but the three defaults (32 wide);
#: key/value heads 2 where the architecture has grouped-query attention
_WIDE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


_GQA = dict(_WIDE, num_key_value_heads=2, head_dim=16)


_CONFIGS = {
    "llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
    "qwen3": ("Qwen3Config", _GQA),
    "mistral": ("MistralConfig", _GQA),
    "gemma": ("GemmaConfig", _GQA),
    "gemma2": ("Gemma2Config", _GQA),
    "phi3": ("Phi3Config", dict(_WIDE, num_key_value_heads=2)),  # fused qkv_proj and gate_up_proj
    "phi": ("PhiConfig", _WIDE),  # parallel attention and MLP, partial rotary
    "glm": ("GlmConfig", _GQA),  # fused gate_up_proj, biases on q/k/v
    "glm4": ("Glm4Config", _GQA),  # GLM's layer with sandwich norms
    "bloom": ("BloomConfig", dict(hidden_size=64, n_layer=2, n_head=4)),  # ALiBi, per-head fused QKV
    "falcon": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)),  # multi-query, parallel
    "gpt_neox": ("GPTNeoXConfig", _WIDE),  # per-head fused QKV, parallel residual
    "gptj": ("GPTJConfig", dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, rotary_dim=8, n_positions=256)),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                              word_embed_proj_dim=64)),  # MLP maps in the layer itself, learned positions
    "stablelm": ("StableLmConfig", dict(_WIDE, num_key_value_heads=2)),  # LayerNorm, partial rotary
    "gpt_bigcode": ("GPTBigCodeConfig", dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=256)),  # MQA c_attn
    "mpt": ("MptConfig", dict(d_model=64, n_layers=2, n_heads=4, expansion_ratio=2)),  # ALiBi, fused Wqkv
    "codegen": ("CodeGenConfig", dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, rotary_dim=8,
                                      n_positions=256)),  # fused qkv_proj laid out [q; v; k] per partition
    "olmo2": ("Olmo2Config", _GQA),  # q_norm/k_norm over all heads at once
    "mixtral": ("MixtralConfig", dict(_GQA, num_local_experts=4, num_experts_per_tok=2)),  # MoE MLP (no linear maps)
    "falcon_gqa": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        new_decoder_architecture=True, num_kv_heads=2)),  # Falcon-40B: per-group QKV
}


def tiny_config(kind: str, vocab_size: int = VOCAB):
    """A tiny causal LM config of architecture ``kind`` (one of :data:`ALL_ARCHITECTURES`):
    2 layers; ``llama``, ``qwen2`` and ``gpt2`` 32 wide (26,784, 26,912 and 37,760 parameters),
    the others 64 wide with 4 heads of 16 (79,000 to 110,000; Mixtral's four experts 238,000)."""
    import transformers

    if kind not in _CONFIGS:
        raise ValueError(f"no tiny config for architecture {kind!r} (known: {', '.join(ALL_ARCHITECTURES)})")
    cls, sizes = _CONFIGS[kind]
    config = getattr(transformers, cls)(**sizes, vocab_size=vocab_size, bos_token_id=BOS, eos_token_id=EOS,
                                        pad_token_id=PAD)
    if hasattr(config, "max_position_embeddings"):
        config.max_position_embeddings = 256
    return config


def tiny_model(kind: str, seed: int = 0, vocab_size: int = VOCAB):
    """A randomly initialised tiny causal LM; the same ``seed`` gives the same weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(kind, vocab_size))


def tiny_quantized_model(arch: str, quantize: str, directory: Path, seed: int = 0):
    """:func:`tiny_model` saved to ``directory`` and loaded back with its linear layers quantized
    (``nf4``, ``fp4`` or ``int8``) and prepared as a cell prepares a quantized base."""
    from transformers import AutoModelForCausalLM

    from ..models import quantize as quantization

    tiny_model(arch, seed=seed).save_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, device_map={"": "cpu"},
                                                 quantization_config=quantization.bnb_config(quantize, torch.float32))
    return quantization.prepare(quantization.no_cpu_repacking(model), gradient_checkpointing=False)
