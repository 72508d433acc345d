"""The attention the answer position gives to what a method puts before the prompt
(suite/measures/attention.py), and tiny-zh's prompts, which start without <s> so that nothing placed
before them sits behind a reset (plugins/models/tiny_zh/MODEL_CARD.md, "Prompt format")."""
import pytest
import torch

from suite.measures.attention import prepended_attention
from suite.methods.method import method_params
from suite.testing import generation_prompts, tiny_model


@pytest.mark.parametrize("name, key", [("prefix-tuning", "virtual_tokens"), ("prompt-tuning", "virtual_tokens"),
                                       ("p-tuning", "virtual_tokens")])
def test_prepend_methods_get_the_share_of_their_positions(registry, name, key):
    method = registry.methods[name]
    params = method_params(method, None)
    model = method.apply(tiny_model("llama"), params)
    prompts = generation_prompts()[:3]
    got = prepended_attention(model, prompts, torch.device("cpu"))
    assert got["prepended_positions"] == params[key]
    assert 0 < got["prepended_attention_share"] < 1
    # uniform attention over the added positions and the prompt
    want = sum(params[key] / (params[key] + len(p)) for p in prompts) / len(prompts)
    assert got["prepended_uniform_share"] == pytest.approx(want)
    # the attention implementation the model had is back
    assert model.get_base_model().config._attn_implementation != "eager"


@pytest.mark.parametrize("name", ["lora", "lst"])
def test_methods_that_prepend_nothing_record_nothing(registry, name):
    method = registry.methods[name]
    model = method.apply(tiny_model("llama"), method_params(method, None))
    assert prepended_attention(model, generation_prompts()[:2], torch.device("cpu")) == {}


def test_tiny_zh_prompts_start_without_the_reset_token(registry):
    from suite.models import loading as models

    _, tokenizer = models.load_base(models.resolve("tiny-zh", registry), torch.float32)
    assert tokenizer("评价：很好").input_ids[0] != tokenizer.bos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert not text.startswith(tokenizer.bos_token)
