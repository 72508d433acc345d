"""Each built-in method on the embedded model: trainable counts (closed form and PEFT's own),
frozen base, loss falling on a fixed batch, and a save/load round trip."""
import pytest
import torch
from test_lst import side_size

from suite.cell.train import TrainSettings, train
from suite.data import batches
from suite.data.tasks import Example
from suite.measures.resources import count_parameters
from suite.methods.method import method_params

METHODS = ["lora", "prefix-tuning", "p-tuning", "prompt-tuning", "lst", "full"]


@pytest.fixture(scope="module")
def tiny_zh(registry):
    return registry.models["tiny-zh"]


def closed_form(name: str, params: dict, cfg) -> int:
    """Trainable parameters of each method's config on a LLaMA config, from the papers' shapes."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    head_dim = d // cfg.num_attention_heads
    if name == "lora":  # B (out x r) and A (r x in) on q_proj (d -> d) and v_proj (d -> kv_heads*head_dim)
        r, kv = params["r"], cfg.num_key_value_heads * head_dim
        return L * (r * (d + d) + r * (d + kv))
    if name == "prefix-tuning":  # prefix embedding, then Linear(d, h) + Tanh + Linear(h, 2*L*d)
        n, h = params["virtual_tokens"], params["projection_hidden"]
        return n * d + (d * h + h) + (h * 2 * L * d + 2 * L * d)
    if name == "p-tuning" and params["encoder"] == "MLP":  # embedding, then MLP d -> h -> h -> d
        n, h = params["virtual_tokens"], params["encoder_hidden"]
        return n * d + (d * h + h) + (h * h + h) + (h * d + d)
    if name == "p-tuning":  # embedding, 2-layer bidirectional LSTM (hidden h), MLP 2h -> 2h -> d
        n, h = params["virtual_tokens"], params["encoder_hidden"]
        lstm = 2 * (4 * h * (d + h) + 8 * h) + 2 * (4 * h * (2 * h + h) + 8 * h)
        return n * d + lstm + (2 * h * 2 * h + 2 * h) + (2 * h * d + d)
    if name == "prompt-tuning":
        return params["virtual_tokens"] * d
    if name == "lst":  # the side network (formula in test_lst.side_size); LLaMA's MLP is gated
        return side_size(params, cfg, gated=True)
    if name == "full":
        return None
    raise ValueError(name)


def fixed_batch(tokenizer):
    examples = [
        Example(str(i), "判断这条评论的情感倾向。", text, label)
        for i, (text, label) in enumerate([("很好，很满意", "正面"), ("太差了，不推荐", "负面"),
                                           ("物流很快，质量不错", "正面"), ("房间又脏又吵", "负面")])
    ]
    encoded, _ = batches.encode(tokenizer, examples, 64)
    return encoded


@pytest.mark.parametrize("name", METHODS)
def test_method_on_tiny_zh(name, registry, tiny_zh, tmp_path):
    from accelerate import Accelerator

    method = registry.methods[name]
    params = method_params(method, None)
    base, tokenizer = tiny_zh.load()
    total = count_parameters(base)
    base_params = list(base.parameters())
    before = [p.detach().clone() for p in base_params]
    torch.manual_seed(0)
    model = method.apply(base, params)
    trainable = count_parameters(model, trainable_only=True)

    expected = closed_form(name, params, base.config)
    assert trainable == (total if expected is None else expected)
    if method.freezes_base:
        assert not any(p.requires_grad for p in base_params)

    batch = fixed_batch(tokenizer)
    settings = TrainSettings(lr=params["lr"], warmup=0.0, log_every=1)
    result = train(model, [batch] * 8, tokenizer.pad_token_id, settings, Accelerator(cpu=True))
    assert result.losses[-1] < result.losses[0] - 0.05, result.losses

    if method.freezes_base:  # no gradient reached the base, and it is bit-identical
        assert all(p.grad is None for p in base_params)
        assert all(torch.equal(p, b) for p, b in zip(base_params, before))
    else:
        assert not all(torch.equal(p, b) for p, b in zip(base_params, before))

    method.save(model, tmp_path / "adapter", params)
    model.eval()
    ids = torch.tensor([batch[0].prompt])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    fresh, _ = tiny_zh.load()
    loaded = method.load(fresh, tmp_path / "adapter", params)
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-5)

    if name not in ("full", "lst"):  # plain peft loads the adapter, and counts what its saved config trains
        from peft import PeftConfig, PeftModel, get_peft_model

        again, _ = tiny_zh.load()
        PeftModel.from_pretrained(again, str(tmp_path / "adapter"))
        config = PeftConfig.from_pretrained(str(tmp_path / "adapter"))
        config.inference_mode = False  # peft saves adapters in inference mode
        rebuilt, _ = tiny_zh.load()
        assert get_peft_model(rebuilt, config).get_nb_trainable_parameters()[0] == trainable


def test_p_tuning_lstm_encoder_count(registry, tiny_zh):
    """The paper's LSTM encoder (the default is peft's MLP): the core's count equals the formula."""
    method = registry.methods["p-tuning"]
    params = method_params(method, {"encoder": "LSTM"})
    base, _ = tiny_zh.load()
    model = method.apply(base, params)
    assert count_parameters(model, trainable_only=True) == closed_form("p-tuning", params, base.config)
