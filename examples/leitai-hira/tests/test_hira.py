"""HiRA under the arena's conformance kit, and the size the paper gives it."""
import pytest

from suite.measure import count_parameters
from suite.methods import method_params
from suite.plugins import load_registry
from suite.testing import check_method, tiny_model


@pytest.fixture(scope="module")
def hira():
    registry = load_registry()
    assert registry.plugins[registry.origin[("methods", "hira")]].source.startswith("leitai-hira ")
    return registry.methods["hira"]


def test_hira_conforms(hira):
    assert check_method(hira).ok


def test_a_low_rank_pair_per_query_and_value_projection(hira):
    """HiRA on LLaMA: B (out x r) and A (r x in) on q_proj (d -> d) and v_proj (d -> kv width),
    LoRA's shapes; the rank of W0 ⊙ BA comes from W0, not from extra parameters."""
    base = tiny_model("llama")
    cfg = base.config
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    params = method_params(hira, None)
    model = hira.apply(base, params)
    assert count_parameters(model, trainable_only=True) == cfg.num_hidden_layers * params["r"] * (d + d + d + kv)
