"""Every built-in method on every architecture ``suite.testing`` builds (tiny random configs from
transformers' config classes, no download), and ``suite.models.architecture``'s role finding on them:
LoRA's targets, the rows of fused QKV and gate/up maps (checked against each modeling code's
own layout), LST's pruning init, PEFT adapters loading with plain peft, and a shootout on a
GLM-4 model through the command line. Models that ship their own code (ChatGLM, Baichuan,
InternLM2) are in ``test_remote_layouts.py``."""
import copy
import json

import pandas as pd
import pytest
import torch
from conftest import CELLS_ONLY, built_in_methods, leitai

from suite.methods.method import method_params, run_info
from suite.models import architecture as A
from suite.models import layout as L
from suite.testing import ALL_ARCHITECTURES, ARCHITECTURES, check_method, fixed_batch, tiny_config, tiny_model

#: the default three run in test_conformance already
MORE = tuple(a for a in ALL_ARCHITECTURES if a not in ARCHITECTURES)
PEFT_METHODS = ("lora", "prefix-tuning", "p-tuning", "prompt-tuning")

#: kind: (decoder layers, LoRA targets by role, key/value heads, MLP, where LoRA's default comes from)
ROLES = {
    "llama": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "peft default for llama"),
    "qwen2": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "peft default for qwen2"),
    "gpt2": ("transformer.h", ["c_attn"], 4, "plain", "peft default for gpt2"),
    "qwen3": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "peft default for qwen3"),
    "mistral": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "peft default for mistral"),
    "gemma": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "peft default for gemma"),
    "gemma2": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "peft default for gemma2"),
    "phi3": ("model.layers", ["qkv_proj"], 2, "fused gated", "found by role"),
    "phi": ("model.layers", ["q_proj", "v_proj"], 4, "plain", "peft default for phi"),
    "glm": ("model.layers", ["q_proj", "v_proj"], 2, "fused gated", "found by role"),
    "glm4": ("model.layers", ["q_proj", "v_proj"], 2, "fused gated", "found by role"),
    "bloom": ("transformer.h", ["query_key_value"], 4, "plain", "peft default for bloom"),
    "falcon": ("transformer.h", ["query_key_value"], 1, "plain", "peft default for falcon"),
    "gpt_neox": ("gpt_neox.layers", ["query_key_value"], 4, "plain", "peft default for gpt_neox"),
    "gptj": ("transformer.h", ["q_proj", "v_proj"], 4, "plain", "peft default for gptj"),
    "opt": ("model.decoder.layers", ["q_proj", "v_proj"], 4, "plain", "peft default for opt"),
    "stablelm": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "peft default for stablelm"),
    "gpt_bigcode": ("transformer.h", ["c_attn"], 1, "plain", "peft default for gpt_bigcode"),
    "mpt": ("transformer.blocks", ["Wqkv"], 4, "plain", "peft default for mpt"),
    "codegen": ("transformer.h", ["qkv_proj"], 4, "plain", "peft default for codegen"),
    "olmo2": ("model.layers", ["q_proj", "v_proj"], 2, "gated", "found by role"),
    "mixtral": ("model.layers", ["q_proj", "v_proj"], 2, None, "peft default for mixtral"),
    "falcon_gqa": ("transformer.h", ["query_key_value"], 2, "plain", "peft default for falcon"),
}

_BASES: dict = {}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small run many times faster on one torch thread (as the conformance kit
    runs them) than on two threads of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def base(kind: str):
    """A fresh copy of the tiny model of ``kind`` (built once per session, then copied)."""
    if kind not in _BASES:
        _BASES[kind] = tiny_model(kind)
    return copy.deepcopy(_BASES[kind])


def test_the_table_covers_every_kind():
    assert set(ROLES) == set(ALL_ARCHITECTURES) and set(ARCHITECTURES) <= set(ALL_ARCHITECTURES)


#: where the catalogue methods (not in the default shootout) are checked, to keep CI's time: no peft
#: default (GLM-4), fused QKV (BLOOM, Phi-3 with fused gate/up), multi-query (Falcon), parallel
#: attention and MLP (GPT-NeoX), experts instead of a linear MLP (Mixtral)
CATALOGUE_ARCHITECTURES = ("glm4", "bloom", "phi3", "falcon", "gpt_neox", "mixtral")


@pytest.mark.parametrize("name", built_in_methods())
def test_every_method_conforms_on_every_architecture(name, registry):
    """Counts, frozen base, starts-from-base, cached generate == forward decoding, save/load..."""
    kinds = MORE if registry.methods[name].default else CATALOGUE_ARCHITECTURES
    # The kit's loss check takes one step at the method's lr with no warm-up. P-tuning's default lr
    # 0.3 (the best of its sweep, reached through the arena's 10% warm-up) overshoots that single
    # step on Gemma-2's tiny random model (4.8008 -> 4.8024), so the kit checks P-tuning at 0.03.
    params = {"lr": 0.03} if name == "p-tuning" else None
    report = check_method(name, architectures=kinds, params=params)  # raises ConformanceError, one line per failure
    passed = {r.architecture for r in report.results if r.status == "passed" and r.check != "quantized"}
    assert report.ok and passed == set(kinds)  # the quantized check runs once, on its own 64-wide model


@pytest.mark.parametrize("kind", ALL_ARCHITECTURES)
def test_roles_are_found(kind, registry):
    layers, targets, kv, mlp, source = ROLES[kind]
    model = base(kind)
    arch = A.find(model)
    maps = arch.maps[0]
    assert arch.layers_name == layers and len(arch.layers) == 2 and all(m == maps for m in arch.maps)
    assert A.attention_targets(model) == targets and maps.kv_heads == kv
    assert (None if not maps.down else "fused gated" if maps.gate_up else "gated" if maps.gate else "plain") == mlp
    lora = registry.methods["lora"]
    got, where = lora.targets(model)
    assert where == source
    peft_model = lora.apply(model, method_params(lora, None))
    info = run_info(lora, peft_model, method_params(lora, None))
    assert info["targets_from"] == source and info["target_modules"] == sorted(got)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert len(adapted) == 2 * len(got)  # each target in both layers, nothing else


def _blocks(*sizes):
    """Row ranges of consecutive blocks of the given sizes."""
    out, start = [], 0
    for size in sizes:
        out.append(torch.arange(start, start + size))
        start += size
    return out


def expected_rows(kind: str, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v rows of the fused QKV output as each model's own modeling code splits it
    (transformers 5.23, ``models/<kind>/modeling_<kind>.py``)."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    hd, kv = d // h, {"falcon": 1, "gpt_bigcode": 1, "falcon_gqa": 2, "phi3": 2}.get(kind, h)
    if kind in ("gpt2", "mpt", "phi3", "falcon", "gpt_bigcode"):  # [q; k; v] blocks (c_attn.split, Wqkv.chunk...)
        return tuple(_blocks(h * hd, kv * hd, kv * hd))
    if kind in ("bloom", "gpt_neox"):  # view(..., heads, 3, head_dim): q, k, v of each head in turn
        rows = torch.arange(3 * d).view(h, 3, hd)
        return rows[:, 0].flatten(), rows[:, 1].flatten(), rows[:, 2].flatten()
    if kind == "falcon_gqa":  # new_decoder_architecture: view(..., kv_heads, heads/kv + 2, head_dim)
        rows = torch.arange((h + 2 * kv) * hd).view(kv, h // kv + 2, hd)
        return rows[:, :-2].flatten(), rows[:, -2].flatten(), rows[:, -1].flatten()
    if kind == "codegen":  # reshape(..., mp_num=4, -1), then split into query, value, key per partition
        rows = torch.arange(3 * d).view(4, 3, d // 4)
        return rows[:, 0].flatten(), rows[:, 2].flatten(), rows[:, 1].flatten()
    raise KeyError(kind)


FUSED = ("gpt2", "bloom", "falcon", "gpt_neox", "gpt_bigcode", "mpt", "codegen", "phi3", "falcon_gqa")


@pytest.mark.parametrize("kind", FUSED)
def test_fused_qkv_rows_follow_the_modeling_code(kind):
    model = base(kind)
    arch = A.find(model)
    layout = L.probe(model, arch)
    q, k, v = expected_rows(kind, tiny_config(kind))
    assert torch.equal(layout.q.flatten(), q) and torch.equal(layout.k.flatten(), k)
    assert torch.equal(layout.v.flatten(), v)
    w = L.layer_weights(arch.layers[1], arch.maps[1], layout)
    fused = A.weight_matrix(arch.layers[1].get_submodule(arch.maps[1].qkv))
    assert torch.equal(w["q"], fused[q]) and torch.equal(w["v"], fused[v])


@pytest.mark.parametrize("kind", ["glm", "glm4", "phi3", "llama"])
def test_gate_and_up_rows(kind):
    """GLM's and Phi-3's gate_up_proj is [gate; up] (``chunk(2)``, gate first); LLaMA's are two maps."""
    model = base(kind)
    arch = A.find(model)
    layout = L.probe(model, arch)
    f = arch.maps[0].ffn
    assert torch.equal(layout.gate, torch.arange(f)) and torch.equal(layout.up, torch.arange(f, 2 * f))


@pytest.mark.parametrize("kind, offset", [("llama", 0.0), ("gemma", 1.0), ("bloom", 0.0)])
def test_norm_gains_are_measured(kind, offset):
    """RMSNorm's weight, Gemma's 1 + weight, LayerNorm's weight (its bias cancels)."""
    norm = A.find(base(kind)).layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.uniform_(-0.5, 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.uniform_(-0.5, 0.5)
    assert torch.allclose(L.norm_gain(norm, norm.weight.shape[0]), norm.weight + offset, atol=1e-4)


@pytest.mark.parametrize("kind", ALL_ARCHITECTURES)
def test_lst_prunes_every_architecture(kind, registry):
    lst = registry.methods["lst"]
    params = method_params(lst, {"reduction": 4})
    model = lst.apply(base(kind), params)
    info = run_info(lst, model, params)
    assert info["init"] == "prune"
    if kind == "mixtral":  # experts are 3-d tensors, not linear maps: the side MLP stays random, said so
        assert info["fallback"].startswith("no linear MLP in layers 0, 1 (MixtralDecoderLayer")
    else:
        assert "fallback" not in info
    # the side block's queries are entries of the backbone's query rows, head by head
    arch = A.find(model.base)
    w = L.layer_weights(arch.layers[0], arch.maps[0], L.probe(model.base, arch))
    assert torch.isin(model.side.blocks[0].q.weight.flatten(), w["q"].flatten()).all()


def test_lst_falls_back_to_random_init_and_says_why(registry):
    """Multi-head latent attention (DeepSeek-V3) has no q/k/v projections of the hidden size."""
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    cfg = DeepseekV3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                           qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                           first_k_dense_replace=2, vocab_size=128, max_position_embeddings=256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(A.ArchitectureError) as err:
        registry.methods["lora"].apply(copy.deepcopy(model), method_params(registry.methods["lora"], None))
    message = str(err.value)
    assert "\n" not in message and "self_attn.q_a_proj (64→32)" in message and "--set lora.targets=" in message
    lst = registry.methods["lst"]
    with pytest.warns(UserWarning, match="init='prune' cannot read"):
        side = lst.apply(model, method_params(lst, None))
    info = run_info(lst, side, method_params(lst, None))
    assert info["init"] == "random" and "cannot find decoder layers" in info["fallback"]
    assert check_method(lst, architectures=("llama",)).ok  # random init is a working LST too


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_saved_adapters_load_with_plain_peft(name, registry, tmp_path):
    """The kit's save-load check loads PEFT methods through ``PeftMethod.load``; here the
    adapters are loaded with nothing but peft."""
    from peft import PeftModel

    method = registry.methods[name]
    params = method_params(method, None)
    batch = fixed_batch()
    for kind in ALL_ARCHITECTURES:
        torch.manual_seed(0)
        model = method.apply(base(kind), params)
        with torch.no_grad():  # as if trained: LoRA's B is no longer zero
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        method.save(model, tmp_path / kind, params)
        loaded = PeftModel.from_pretrained(base(kind), str(tmp_path / kind))
        with torch.no_grad():
            want = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            got = loaded.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(got, want, atol=1e-5), kind


def test_a_shootout_on_glm4_records_what_ran(tmp_path):
    """`leitai run --model DIR` on a saved GLM-4 model (no peft default for LoRA, a fused
    gate/up MLP for LST): both cells finish and the record and report say what ran."""
    from transformers import AutoModelForCausalLM

    from plugins.models.tiny_zh import TinyZh

    _, tokenizer = TinyZh().load()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("glm4", vocab_size=len(tokenizer)))
    model.save_pretrained(tmp_path / "glm4")
    tokenizer.save_pretrained(tmp_path / "glm4")
    out = tmp_path / "out"
    proc = leitai("run", "--model", tmp_path / "glm4", "--methods", "lora,lst", "--max-steps", "2",
                  "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "--out", out, "-q",
                  env={"LEITAI_THREADS": "1"})  # tiny models: one thread is fastest
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = pd.read_csv(out / "results.csv").set_index("method")
    assert list(results.status) == ["ok", "ok"], results.error.tolist()
    lora = json.loads((out / "runs" / results.loc["lora", "run_id"] / "record.json").read_text())
    assert lora["method_info"] == {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj"],
                                   "targets_from": "found by role"}
    assert json.loads(results.loc["lst", "method_info"]) == {"init": "prune"}
    summary = (out / "summary.md").read_text()
    assert "### What ran" in summary and "target_modules: q_proj, v_proj; targets_from: found by role" in summary
