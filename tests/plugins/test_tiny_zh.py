"""tiny-zh: the shipped pretrained weights, their checksum, their quality, and a pretraining
corpus free of every built-in task's dev and test text."""
import json
import math
import random
import shutil

import pytest
import torch

import plugins.tiny_zh as tiny_zh
from plugins.models.tiny_zh import pretrain
from plugins.models.tiny_zh.corpus import build_corpus, protected_texts
from suite.data.tasks import normalise


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


def test_loads_the_shipped_weights_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = tiny_zh.TinyZh().load()
    info = json.loads((tiny_zh.HERE / "build.json").read_text(encoding="utf-8"))
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    assert (tiny_zh.HERE / pretrain.WEIGHTS).stat().st_size <= 25_000_000
    assert len(tokenizer) == model.config.vocab_size == info["vocab_size"]
    assert tokenizer.decode(tokenizer("人民日报，１９９８年。").input_ids, skip_special_tokens=True) == "人民日报，１９９８年。"


def test_a_changed_weights_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "tiny_zh"
    shutil.copytree(tiny_zh.HERE, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    with open(copy / pretrain.WEIGHTS, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(tiny_zh, "HERE", copy)
    with pytest.raises(ValueError, match="checksum"):
        tiny_zh.TinyZh().load()


def test_shipped_model_was_built_from_this_corpus(corpus):
    info = json.loads((tiny_zh.HERE / "build.json").read_text(encoding="utf-8"))
    assert info["corpus"]["fingerprint"] == corpus.fingerprint()
    assert info["heldout"]["perplexity"] < info["heldout"]["random_init_perplexity"] / 20
    assert "tiny-zh" in (tiny_zh.HERE / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_beats_random_initialisation_on_held_out_text_by_a_wide_margin(corpus):
    trained, tokenizer = tiny_zh.TinyZh().load()
    random_init, _ = tiny_zh.TinyZhRandom().load()
    data = pretrain.blocks(corpus.heldout[:300], tokenizer, 128)[:16]
    assert data.numel() >= 1000
    ppl_trained = math.exp(pretrain.heldout_loss(trained, data))
    ppl_random = math.exp(pretrain.heldout_loss(random_init, data))
    assert ppl_trained * 20 < ppl_random, (ppl_trained, ppl_random)


def test_no_dev_or_test_example_text_is_in_the_pretraining_corpus(corpus):
    from plugins.tasks.corpora import peoples_daily_heldout

    units = [normalise(u) for u in corpus.train + corpus.heldout]
    protected = protected_texts()
    assert len(protected) > 10_000
    assert not protected & set(units)  # no unit is a dev/test input or answer
    assert not {normalise(t) for t in peoples_daily_heldout()} & set(units)
    # and no long one occurs inside a unit: checked here by plain substring search on a sample
    text = "\n".join(units)
    long = sorted(p for p in protected if len(p) >= 8)
    for p in random.Random(0).sample(long, 1500):
        assert p not in text, p


TINY = pretrain.Recipe(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seq_len=32, batch_size=2,
                       steps=4, warmup=1, checkpoint_every=2, eval_blocks=4)


def test_pretraining_is_deterministic_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    straight = pretrain.build(tmp_path / "a", TINY, progress=False)
    real = pretrain.learning_rate

    def interrupted(step, recipe):
        if step == 3:  # after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(step, recipe)

    monkeypatch.setattr(pretrain, "learning_rate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.build(tmp_path / "b", TINY, progress=False)
    assert torch.load(tmp_path / "b" / pretrain.CHECKPOINT, weights_only=False)["step"] == 2
    monkeypatch.setattr(pretrain, "learning_rate", real)
    resumed = pretrain.build(tmp_path / "b", TINY, resume=True, progress=False)
    assert resumed["heldout"] == straight["heldout"]
    a, b = ((tmp_path / d / pretrain.CHECKSUM).read_text() for d in ("a", "b"))
    assert a == b  # bit-identical weights
