"""Models that ship their own code (``--trust-remote-code``) cannot be downloaded here, so their
layers are rebuilt in miniature: the module names, shapes, fused layouts and call order of
ChatGLM-6B, ChatGLM2/3-6B, Baichuan-7B and InternLM2 as their ``modeling_*.py`` writes them, in
a small causal LM. ``suite.models.architecture`` must find the same roles as in transformers' own
models, LoRA's targets must be their fused QKV projections, and probing must split those
fused maps the way each model's code does."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from suite.models import architecture as A
from suite.models import layout as L

D, H, HD, F_ = 64, 4, 16, 96  # width, heads, head dim, MLP width


def attend(q, k, v, kv_heads: int):
    """Causal attention over (batch, time, heads * HD) queries and (.., kv_heads * HD) keys/values."""
    b, t, _ = q.shape
    q, k, v = (x.view(b, t, -1, HD).transpose(1, 2) for x in (q, k, v))
    k, v = (x.repeat_interleave(H // kv_heads, dim=1) for x in (k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, H * HD)


class ChatGLMAttention(nn.Module):
    """ChatGLM-6B: query_key_value laid out per head, ``view(..., heads, 3 * head_dim)``."""

    def __init__(self):
        super().__init__()
        self.query_key_value = nn.Linear(D, 3 * D)
        self.dense = nn.Linear(D, D)

    def forward(self, x):
        qkv = self.query_key_value(x).view(*x.shape[:2], H, 3 * HD)
        q, k, v = (t.reshape(*x.shape[:2], D) for t in qkv.split(HD, dim=-1))
        return self.dense(attend(q, k, v, H))


class ChatGLMMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(D, 4 * D)
        self.dense_4h_to_h = nn.Linear(4 * D, D)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))


class ChatGLM2Attention(nn.Module):
    """ChatGLM2/3-6B: multi-query groups, query_key_value = [q; k; v] (``split``)."""

    groups = 2

    def __init__(self):
        super().__init__()
        self.query_key_value = nn.Linear(D, D + 2 * self.groups * HD)
        self.dense = nn.Linear(D, D, bias=False)

    def forward(self, x):
        q, k, v = self.query_key_value(x).split([D, self.groups * HD, self.groups * HD], dim=-1)
        return self.dense(attend(q, k, v, self.groups))


class ChatGLM2MLP(nn.Module):
    """SwiGLU with gate and up fused in dense_h_to_4h: ``chunk(2)``, silu of the first half."""

    def __init__(self):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(D, 2 * F_, bias=False)
        self.dense_4h_to_h = nn.Linear(F_, D, bias=False)

    def forward(self, x):
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class BaichuanAttention(nn.Module):
    """Baichuan-7B: W_pack = [q; k; v] (``unflatten(-1, (3, hidden))``)."""

    def __init__(self):
        super().__init__()
        self.W_pack = nn.Linear(D, 3 * D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)

    def forward(self, x):
        q, k, v = self.W_pack(x).unflatten(-1, (3, D)).unbind(-2)
        return self.o_proj(attend(q, k, v, H))


class BaichuanMLP(nn.Module):
    """Registered gate_proj, down_proj, up_proj (that order), called down(act(gate) * up)."""

    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(D, F_, bias=False)
        self.down_proj = nn.Linear(F_, D, bias=False)
        self.up_proj = nn.Linear(D, F_, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class InternLM2Attention(nn.Module):
    """InternLM2: wqkv laid out per key/value group, ``view(..., kv_heads, 2 + heads/kv, head_dim)``."""

    kv = 2

    def __init__(self):
        super().__init__()
        self.wqkv = nn.Linear(D, (H + 2 * self.kv) * HD, bias=False)
        self.wo = nn.Linear(D, D, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.wqkv(x).view(b, t, self.kv, 2 + H // self.kv, HD)
        q = qkv[..., : H // self.kv, :].reshape(b, t, D)
        k, v = qkv[..., -2, :].reshape(b, t, -1), qkv[..., -1, :].reshape(b, t, -1)
        return self.wo(attend(q, k, v, self.kv))


class InternLM2MLP(nn.Module):
    """w1 (gate), w3 (up), w2 (down), registered in that order: w2(act(w1(x)) * w3(x))."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Linear(D, F_, bias=False)
        self.w3 = nn.Linear(D, F_, bias=False)
        self.w2 = nn.Linear(F_, D, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """A pre-norm decoder layer whose attention and MLP live under the model's own names."""

    def __init__(self, attn_name, attn, mlp_name, mlp):
        super().__init__()
        self.names = attn_name, mlp_name
        self.norm_1, self.norm_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        setattr(self, attn_name, attn)
        setattr(self, mlp_name, mlp)

    def forward(self, x):
        x = x + getattr(self, self.names[0])(self.norm_1(x))
        return x + getattr(self, self.names[1])(self.norm_2(x))


class RemoteLM(nn.Module):
    """Embeddings, the decoder layers at ``path`` (e.g. ``transformer.encoder.layers``), a head."""

    def __init__(self, path: str, config: dict, attn_name, attn_cls, mlp_name, mlp_cls, layers: int = 2):
        super().__init__()
        self.config = SimpleNamespace(**config)
        self.embed = nn.Embedding(32, D)
        self.path = path
        *parents, last = path.split(".")
        holder = self
        for name in parents:
            setattr(holder, name, nn.Module())
            holder = getattr(holder, name)
        setattr(holder, last, nn.ModuleList(Block(attn_name, attn_cls(), mlp_name, mlp_cls()) for _ in range(layers)))
        self.head = nn.Linear(D, 32, bias=False)

    def forward(self, input_ids, **kwargs):
        x = self.embed(input_ids)
        for layer in self.get_submodule(self.path):
            x = layer(x)
        return SimpleNamespace(logits=self.head(x))


def rows_per_head():  # ChatGLM-6B: (heads, 3, head_dim)
    r = torch.arange(3 * D).view(H, 3, HD)
    return r[:, 0], r[:, 1], r[:, 2]


def rows_blocks(kv):  # [q; k; v]
    r = torch.arange((H + 2 * kv) * HD)
    return r[:D].view(H, HD), r[D:D + kv * HD].view(kv, HD), r[D + kv * HD:].view(kv, HD)


def rows_grouped(kv):  # InternLM2: (kv_heads, heads/kv + 2, head_dim)
    r = torch.arange((H + 2 * kv) * HD).view(kv, H // kv + 2, HD)
    return r[:, :-2].reshape(H, HD), r[:, -2], r[:, -1]


MODELS = {
    # name: (layers path, config, attention (name, class), MLP (name, class), roles, LoRA source, q/k/v rows)
    "chatglm-6b": ("transformer.layers", dict(model_type="chatglm", hidden_size=D, num_attention_heads=H, num_layers=2,
                                              inner_hidden_size=4 * D),
                   ("attention", ChatGLMAttention), ("mlp", ChatGLMMLP),
                   dict(qkv="attention.query_key_value", o="attention.dense", up="mlp.dense_h_to_4h",
                        down="mlp.dense_4h_to_h", kv_heads=H),
                   "peft default for chatglm", rows_per_head()),
    "chatglm3-6b": ("transformer.encoder.layers", dict(model_type="chatglm", hidden_size=D, num_attention_heads=H,
                                                       num_layers=2, kv_channels=HD, multi_query_attention=True,
                                                       multi_query_group_num=2, ffn_hidden_size=F_),
                    ("self_attention", ChatGLM2Attention), ("mlp", ChatGLM2MLP),
                    dict(qkv="self_attention.query_key_value", o="self_attention.dense",
                         gate_up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", kv_heads=2),
                    "peft default for chatglm", rows_blocks(2)),
    "baichuan-7b": ("model.layers", dict(model_type="baichuan", hidden_size=D, num_attention_heads=H,
                                         num_hidden_layers=2, intermediate_size=F_),
                    ("self_attn", BaichuanAttention), ("mlp", BaichuanMLP),
                    dict(qkv="self_attn.W_pack", o="self_attn.o_proj", gate="mlp.gate_proj", up="mlp.up_proj",
                         down="mlp.down_proj", kv_heads=H),
                    "found by role", rows_blocks(H)),
    "internlm2": ("model.layers", dict(model_type="internlm2", hidden_size=D, num_attention_heads=H,
                                       num_key_value_heads=2, num_hidden_layers=2, intermediate_size=F_),
                  ("attention", InternLM2Attention), ("feed_forward", InternLM2MLP),
                  dict(qkv="attention.wqkv", o="attention.wo", gate="feed_forward.w1", up="feed_forward.w3",
                       down="feed_forward.w2", kv_heads=2),
                  "found by role", rows_grouped(2)),
}


def build(name: str) -> RemoteLM:
    path, config, (attn_name, attn), (mlp_name, mlp), *_ = MODELS[name]
    torch.manual_seed(0)
    return RemoteLM(path, config, attn_name, attn, mlp_name, mlp).eval()


@pytest.mark.parametrize("name", MODELS)
def test_roles_and_lora_targets(name, registry):
    path, _, _, _, roles, source, _ = MODELS[name]
    model = build(name)
    arch = A.find(model)
    assert arch.layers_name == path and len(arch.maps) == 2
    maps = arch.maps[0]
    assert {k: getattr(maps, k) for k in roles} == roles
    target = roles["qkv"].rsplit(".", 1)[1]
    assert A.attention_targets(model) == [target]  # query_key_value, W_pack, wqkv
    assert registry.methods["lora"].targets(model) == ([target], source)


@pytest.mark.parametrize("name", MODELS)
def test_lora_adapts_exactly_the_fused_projections(name, registry):
    from peft import LoraConfig, inject_adapter_in_model

    model = build(name)
    targets, _ = registry.methods["lora"].targets(model)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=targets), model)
    adapted = sorted(n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith(".lora_A"))
    path, roles = MODELS[name][0], MODELS[name][4]
    assert adapted == [f"{path}.{i}.{roles['qkv']}" for i in range(2)]


@pytest.mark.parametrize("name", MODELS)
def test_probing_splits_the_fused_projection_as_the_model_does(name):
    model = build(name)
    arch = A.find(model)
    layout = L.probe(model, arch)
    q, k, v = MODELS[name][6]
    assert torch.equal(layout.q, q.reshape(H, HD)) and torch.equal(layout.k.flatten(), k.flatten())
    assert torch.equal(layout.v.flatten(), v.flatten())
    assert layout.attn_norm == "norm_1" and layout.mlp_norm == "norm_2"
    maps = arch.maps[0]
    if maps.gated:  # gate first: ChatGLM2's chunk, Baichuan's and InternLM2's call order
        assert torch.equal(layout.gate, torch.arange(F_)) and torch.equal(layout.up, torch.arange(F_, 2 * F_))
    w = L.layer_weights(arch.layers[0], maps, layout)
    fused = arch.layers[0].get_submodule(maps.qkv).weight
    assert torch.equal(w["q"], fused[q.flatten()]) and torch.equal(w["k"], fused[k.flatten()])
    assert w["down"].shape == (D, maps.ffn) and torch.allclose(w["attn_norm"], torch.ones(D))


def test_nothing_fits_is_one_line_listing_the_linear_modules():
    class Odd(nn.Module):  # an attention block of low-rank maps only
        def __init__(self):
            super().__init__()
            self.down = nn.Linear(D, 8)
            self.up = nn.Linear(8, D)

    model = RemoteLM("model.layers", dict(model_type="odd", hidden_size=D, num_attention_heads=H,
                                          num_hidden_layers=2), "attn", Odd, "mlp", BaichuanMLP)
    with pytest.raises(A.ArchitectureError) as err:
        A.attention_targets(model)
    message = str(err.value)
    assert "\n" not in message and "model.layers.N.attn.down (64→8)" in message
    assert "model.layers.N.mlp.gate_proj (64→96)" in message and "head (64→32)" in message
