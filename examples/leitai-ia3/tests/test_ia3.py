"""(IA)³ under the arena's conformance kit, and the size the paper gives it."""
import pytest

from suite.measure import count_parameters
from suite.methods import method_params
from suite.plugins import load_registry
from suite.testing import check_method, tiny_model


@pytest.fixture(scope="module")
def ia3():
    registry = load_registry()
    assert registry.plugins[registry.origin[("methods", "ia3")]].source.startswith("leitai-ia3 ")
    return registry.methods["ia3"]


def test_ia3_conforms(ia3):
    assert check_method(ia3).ok


def test_one_vector_per_key_value_and_feed_forward_layer(ia3):
    """(IA)³ on LLaMA: l_k and l_v of the key/value width, l_ff of the feed-forward width."""
    base = tiny_model("llama")
    cfg = base.config
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    model = ia3.apply(base, method_params(ia3, None))
    assert count_parameters(model, trainable_only=True) == cfg.num_hidden_layers * (2 * kv + cfg.intermediate_size)
