"""Batches never mix examples: each example's logits in a batch are its logits alone, the
arena's batch loss is the token-weighted mean of the examples' own losses, and the cached
task data is exactly what tokenising again gives (and is rebuilt when the task or the
tokenizer changes)."""
import dataclasses

import pytest
import torch

from suite.data import batches as data
from suite.data import cache, prepared
from suite.data.batches import Encoded
from suite.data.tasks import Example, Task, prompt_parts
from suite.measures.loss import AnswerHead, loss_index
from suite.methods.method import method_params
from suite.models.loading import enable_gradient_checkpointing
from suite.testing import EOS, PAD, VOCAB, tiny_model

LENGTHS = [(5, 3), (9, 2), (3, 4), (12, 1), (7, 5), (4, 2)]  # (prompt, answer) tokens, answer ends with EOS


def examples(seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, a) in enumerate(LENGTHS):
        ids = torch.randint(3, VOCAB, (p + a,), generator=g).tolist()
        out.append(Encoded(str(i), ids[:p], ids[p:-1] + [EOS]))
    return out


def arena_batches(items: list[Encoded]) -> list[list[Encoded]]:
    """The batches the arena builds: seeded, length-grouped (two batches of three)."""
    order = data.batch_order([e.length for e in items], batch_size=3, steps=2, seed=0, group=2)
    assert sorted(i for b in order for i in b) == list(range(len(items)))
    return [[items[i] for i in b] for b in order]


def with_method(arch: str, name: str, registry):
    model = tiny_model(arch)
    with torch.no_grad():  # sharper logits: examples' losses differ, so weighting them matters
        model.get_output_embeddings().weight.mul_(10)
    if name != "base":
        method = registry.get("methods", name)
        torch.manual_seed(0)
        model = method.apply(model, method_params(method, None))
        for p in model.parameters():  # untrained adapters are often the identity: make them count
            if p.requires_grad:
                p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


CASES = [("llama", "base"), ("qwen2", "base"), ("gpt2", "base"), ("llama", "lora"), ("llama", "prefix-tuning"),
         ("qwen2", "prompt-tuning"), ("llama", "p-tuning"), ("llama", "lst")]


@pytest.mark.parametrize("arch,method", CASES)
def test_each_example_in_a_batch_gets_exactly_its_logits_alone(arch, method, registry):
    """No example attends to another and padding changes nothing: every real position of a
    batch row has the logits that example gets in a batch of its own."""
    model = with_method(arch, method, registry)
    items = examples()
    with torch.no_grad():
        for batch_items in arena_batches(items):
            batch = data.collate(batch_items, PAD)
            assert (batch["attention_mask"].sum(1) < batch["input_ids"].shape[1]).any() or len(
                {e.length for e in batch_items}) == 1
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            width = batch["input_ids"].shape[1]
            logits = logits[:, -width:]  # prompt-learning methods prepend virtual tokens
            for row, e in enumerate(batch_items):
                ids = torch.tensor([e.prompt + e.answer])
                alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -e.length:]
                torch.testing.assert_close(logits[row, : e.length], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,method", CASES)
def test_batch_loss_is_the_token_weighted_mean_of_the_example_losses(arch, method, registry):
    """The loss the arena trains on (answer-only head) equals the model's own loss on the padded
    batch and the mean of each example's own loss weighted by its answer tokens."""
    model = with_method(arch, method, registry)
    head = AnswerHead(model)
    for batch_items in arena_batches(examples(1)):
        batch = data.collate(batch_items, PAD)
        index = loss_index(batch["labels"])
        assert head.check(model, batch, index), f"answer-only head rejected for {method} on {arch}"
        with torch.no_grad():
            arena = head.loss(model, batch, index)
            own = model(**batch).loss
            per_example = []
            for e in batch_items:
                alone = data.collate([e], PAD)
                per_example.append((model(**alone).loss, len(e.answer)))
        weighted = sum(loss * n for loss, n in per_example) / sum(n for _, n in per_example)
        torch.testing.assert_close(arena, weighted, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(own, weighted, rtol=1e-4, atol=1e-5)
        unweighted = sum(loss for loss, _ in per_example) / len(per_example)
        assert not torch.isclose(arena, unweighted, rtol=1e-4)  # the weighting is what is tested
    head.remove()


def test_answer_head_gives_the_same_gradients_and_runs_the_head_on_answers_only():
    model = tiny_model("llama").train()
    batch = data.collate(examples(), PAD)
    index = loss_index(batch["labels"])
    head = AnswerHead(model)
    assert head.check(model, batch, index)
    shapes = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    head.loss(model, batch, index).backward()
    ours = [p.grad.clone() for p in model.parameters()]
    hook.remove()
    head.remove()
    model.zero_grad()
    model(**batch).loss.backward()
    for a, b in zip(ours, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert shapes == [(sum(len(e.answer) for e in examples()), VOCAB)]


def test_answer_head_falls_back_where_it_would_change_the_loss():
    """A model that appends positions after the tokens (so real tokens are not the last ones)
    fails the check and is trained on the model's own loss."""
    model = tiny_model("llama").eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    batch = data.collate(examples(), PAD)

    def append(m, args):  # two extra positions after the real tokens...
        return (torch.cat([args[0], args[0][:, :2]], dim=1),)

    def drop(m, args, out):  # ...that the model's own logits leave out again
        return out[:, :-2].contiguous() if out.dim() == 3 else out

    model.lm_head.register_forward_pre_hook(append)
    model.lm_head.register_forward_hook(drop)
    head = AnswerHead(model)
    index = loss_index(batch["labels"])
    assert not head.check(model, batch, index)
    with torch.no_grad():
        torch.testing.assert_close(head.loss(model, batch, index), model(**batch).loss)


def test_gradient_checkpointing_gives_the_same_gradients(registry):
    batch = data.collate(examples(), PAD)
    grads = []
    for checkpointing in (False, True):
        model = with_method("llama", "lora", registry).train()
        if checkpointing:
            enable_gradient_checkpointing(model.base_model.model)
        for m in model.modules():  # no dropout: the two runs must be comparable
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model(**batch).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# -- tokenisation and its cache ------------------------------------------------------------

class ListTask(Task):
    name = "test-list"
    source = "in memory"
    score_name = "exact_match"
    max_new_tokens = 8

    def __init__(self, version="1", n=40):
        self.version = version
        self.items = [Example(f"e{i}", "判断情感。", f"第{i}条评论：很好" * (1 + i % 3), "正面" if i % 2 else "负面")
                      for i in range(n)]

    def splits(self, sizes=None):
        return {"train": self.items[:30], "dev": self.items[30:35], "test": self.items[35:]}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from plugins.models.tiny_zh import HERE
    from suite.models.loading import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(HERE)))


def encode_one_by_one(tokenizer, examples, max_len):
    """The per-example tokenisation the batched one replaced (the reference)."""
    out = []
    for ex in examples:
        answer = tokenizer(ex.output, add_special_tokens=False).input_ids[: max_len // 2 - 1] + [tokenizer.eos_token_id]
        head, body, tail = prompt_parts(ex)
        h = tokenizer(head).input_ids
        b = tokenizer(body, add_special_tokens=False).input_ids
        t = tokenizer(tail, add_special_tokens=False).input_ids
        room = max(max_len - len(answer) - len(h) - len(t), 0)
        out.append(Encoded(ex.id, h + b[:room] + t, answer))
    return out


@pytest.mark.parametrize("max_len", [256, 40])  # 40 truncates the longer inputs
def test_batched_encoding_equals_one_by_one(tokenizer, max_len):
    task = ListTask()
    encoded, truncated = data.encode(tokenizer, task.items, max_len)
    assert encoded == encode_one_by_one(tokenizer, task.items, max_len)
    assert (truncated > 0) == (max_len == 40)


def test_cache_returns_the_same_data_and_is_keyed_by_version_and_tokenizer(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LEITAI_CACHE_DIR", str(tmp_path))
    task = ListTask()
    built = prepared.prepare(task, None, 64, tokenizer)
    assert not built.cached
    again = prepared.prepare(task, None, 64, tokenizer)
    assert again.cached
    fields = [f.name for f in dataclasses.fields(prepared.TaskData) if f.name not in ("cached", "seconds")]
    for name in fields:
        assert getattr(again, name) == getattr(built, name), name
    assert again.train == data.encode(tokenizer, task.items[:30], 64)[0]
    assert len(list((tmp_path / "tasks").iterdir())) == 1

    # a new task version (its examples changed) is not served the old encodings
    changed = ListTask(version="2")
    changed.items[0] = dataclasses.replace(changed.items[0], output="中性")
    fresh = prepared.prepare(changed, None, 64, tokenizer)
    assert not fresh.cached and fresh.train[0].answer != built.train[0].answer

    # nor is another tokenizer, even one that differs by one added token
    other = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    other.add_tokens(["评论"])
    assert prepared.tokenizer_fingerprint(other) != prepared.tokenizer_fingerprint(tokenizer)
    by_other = prepared.prepare(task, None, 64, other)
    assert not by_other.cached and by_other.train != built.train
    # other sizes or max_len are other entries too
    assert not prepared.prepare(task, None, 48, tokenizer).cached
    assert len(list((tmp_path / "tasks").iterdir())) == 4


def test_cache_off_and_unreadable_entries(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LEITAI_CACHE_DIR", "off")
    task = ListTask()
    assert cache.cache_dir() is None
    assert not prepared.prepare(task, None, 64, tokenizer).cached
    assert not prepared.prepare(task, None, 64, tokenizer).cached
    monkeypatch.setenv("LEITAI_CACHE_DIR", str(tmp_path))
    prepared.prepare(task, None, 64, tokenizer)
    (entry,) = (tmp_path / "tasks").iterdir()
    entry.write_text("{not json", encoding="utf-8")  # a torn or corrupted entry is rebuilt
    assert not prepared.prepare(task, None, 64, tokenizer).cached
    assert prepared.prepare(task, None, 64, tokenizer).cached
