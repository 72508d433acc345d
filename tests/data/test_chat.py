"""Multi-turn conversations: exact loss masks through two chat templates (checked against the
tokenizer's own character offsets, not the code that builds them), truncation that drops the
oldest turns whole, the per-turn prompts generation starts from, and the conversation
examples of the core."""
import pytest
import torch

from suite.data import chat
from suite.data.batches import IGNORE, collate
from suite.data.tasks import Example, Turn, assign_splits, score_answers

#: Qwen2-Instruct's chat template (a default system message; <|im_start|>role ... <|im_end|>)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
#: Qwen2's pre-tokenizer pattern
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

#: Llama-2-chat's template (the system message inside the first [INST]; no generation prompt)
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

CONVERSATION = Example.conversation([
    ("Segment this sentence into words.", "今天天气很好，我们去公园散步。", "今天 天气 很 好 ， 我们 去 公园 散步 。"),
    ("找出上面那句话中的地名。", "", "地名：无"),
    ("Say it again, user and assistant.", "", "今天天气很好，我们去公园散步。"),
    ("最后一句。", "", "好的 assistant"),
], system="You are a careful annotator.")


@pytest.fixture(scope="module")
def tiny_zh_tokenizer():
    from transformers import AutoTokenizer

    from plugins.models.tiny_zh import HERE

    return AutoTokenizer.from_pretrained(str(HERE))


@pytest.fixture(scope="module")
def qwen2_tokenizer():
    """A small byte-level BPE with Qwen2's pre-tokenizer, special tokens and chat template; its
    end-of-sequence token is <|endoftext|>, as in Qwen2's base models, so answers end at <|im_end|>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    texts = [t.user + "\n" + t.output for t in CONVERSATION.turns] + ["You are a helpful assistant.", "user assistant system"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = QWEN2_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def llama2_tokenizer():
    """A small SentencePiece-style BPE (Metaspace, ▁ for spaces) with Llama-2-chat's template: a
    tokenizer where tokenising the pieces of a conversation one by one would add ▁ tokens that
    the whole text does not have."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t.user + " " + t.output for t in CONVERSATION.turns] + [CONVERSATION.system, "[INST] <<SYS>> [/INST]"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=sorted(set("".join(texts) + "\n")))
    tok.train_from_iterator(texts * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    fast.chat_template = LLAMA2_TEMPLATE
    return fast


#: each template: its tokenizer, and what it writes around an assistant message's text
TEMPLATES = {"tiny-zh": ("tiny_zh_tokenizer", "", "</s>"), "qwen2": ("qwen2_tokenizer", "", "<|im_end|>"),
             "llama2": ("llama2_tokenizer", " ", " </s>")}


def expected(tokenizer, example: Example, before: str, after: str):
    """The conversation as the tokenizer reads its whole rendered text (transformers' own
    ``apply_chat_template``): its ids, and for each assistant answer and each user message the
    token positions inside it (an answer with what the template writes ``before`` and ``after``
    its text, the end marker; a user message's tokens wholly inside it), found from the
    tokenizer's character offsets. What the template writes after the last answer (a newline) is left out."""
    messages = example.messages()
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, pos = {"assistant": [], "user": []}, 0
    for m in messages:
        at = text.index(m["content"], pos)
        pos = at + len(m["content"])
        if m["role"] == "assistant":
            assert text.startswith(after, pos) and text[:at].endswith(before)
            spans["assistant"].append((at - len(before), pos + len(after)))
        elif m["role"] == "user":
            spans["user"].append((at, pos))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    found = {}
    for role, role_spans in spans.items():
        found[role] = []
        for a, b in role_spans:
            inside = [i for i, (s, e) in enumerate(offsets) if a <= s and e <= b and e > s]
            if role == "assistant":  # no token straddles an answer's start or end
                assert not [i for i, (s, e) in enumerate(offsets) if s < a < e or s < b < e]
            assert inside == list(range(inside[0], inside[-1] + 1)) if inside else role == "user"
            found[role].append(inside)
    end = found["assistant"][-1][-1] + 1  # the sequence ends with the last answer's end marker
    return enc["input_ids"][:end], found["assistant"], found["user"]


def built(tokenizer, example: Example, max_len: int = 10_000, last_only: bool = False):
    (item,), cut = chat.encode(tokenizer, [example], max_len)
    if last_only:
        item = item.last_turn_only()
    batch = collate([item], tokenizer.pad_token_id)
    labels = batch["labels"][0]
    assert torch.equal(labels[labels != IGNORE], batch["input_ids"][0][labels != IGNORE])
    return batch["input_ids"][0].tolist(), (labels != IGNORE).nonzero().flatten().tolist(), cut


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_loss_mask_is_exactly_every_assistant_token(template, request):
    fixture, before, end_marker = TEMPLATES[template]
    tokenizer = request.getfixturevalue(fixture)
    ids, turns, _ = expected(tokenizer, CONVERSATION, before, end_marker)
    got_ids, got_loss, cut = built(tokenizer, CONVERSATION)
    assert got_ids == ids and not cut
    assert got_loss == [i for turn in turns for i in turn]
    assert len(turns) == 4 and all(turns)
    # the last turn only, as ChatGLM's P-tuning script trains
    assert built(tokenizer, CONVERSATION, last_only=True)[1] == turns[-1]


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_each_turn_is_prompted_with_the_reference_history(template, request):
    fixture, before, end_marker = TEMPLATES[template]
    tokenizer = request.getfixturevalue(fixture)
    ids, turns, _ = expected(tokenizer, CONVERSATION, before, end_marker)
    (prompts,) = chat.turn_prompts(tokenizer, [CONVERSATION], 10_000)
    assert [p for p, _ in prompts] == [ids[: turn[0]] for turn in turns]
    assert not any(cut for _, cut in prompts)
    end = tokenizer.convert_tokens_to_ids(end_marker.strip())
    assert chat.stop_ids(tokenizer) == list(dict.fromkeys([tokenizer.eos_token_id, end]))


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_truncation_drops_the_oldest_turns_whole(template, request):
    fixture, before, end_marker = TEMPLATES[template]
    tokenizer = request.getfixturevalue(fixture)

    def last(n):
        return Example.conversation(CONVERSATION.turns[-n:], CONVERSATION.system)

    sizes = {n: len(expected(tokenizer, last(n), before, end_marker)[0]) for n in range(1, 5)}
    assert sizes[1] < sizes[2] < sizes[3] < sizes[4]
    ids, turns, _ = expected(tokenizer, last(2), before, end_marker)
    got_ids, got_loss, cut = built(tokenizer, CONVERSATION, max_len=sizes[3] - 1)
    assert (got_ids, got_loss, cut) == (ids, [i for t in turns for i in t], 1)  # system kept, two turns
    # the prompt of each turn: the oldest turns go first, the system message stays
    (prompts,) = chat.turn_prompts(tokenizer, [CONVERSATION], turns[-1][0])
    assert prompts[-1] == (ids[: turns[-1][0]], True)
    first_ids, first_turns, _ = expected(tokenizer, CONVERSATION.upto(1), before, end_marker)
    assert first_turns[0][0] <= turns[-1][0] and prompts[0] == (first_ids[: first_turns[0][0]], False)
    # one turn that alone is too long: the end of the user's message gives way, the answer stays
    one = Example.conversation([("Segment this sentence into words.", "今天天气很好，我们去公园散步。", "地名：无")])
    ids, (answer,), (user,) = expected(tokenizer, one, before, end_marker)
    (item,), cut = chat.encode(tokenizer, [one], len(ids) - 3)
    assert cut == 1 and item.answer == [ids[i] for i in answer]  # the answer stays whole
    assert item.prompt + item.answer == ids[: user[-1] - 2] + ids[user[-1] + 1:]


def test_a_template_that_rewrites_history_is_refused(tiny_zh_tokenizer):
    shifting = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}[answer now]{% endif %}")
    with pytest.raises(chat.TemplateError, match="does not render a conversation as the beginning"):
        chat.rendered(tiny_zh_tokenizer, shifting, CONVERSATION)


def test_a_tokenizer_without_a_template_gets_the_plain_one(qwen2_tokenizer, tiny_zh_tokenizer):
    # tiny-zh ships the plain template as its own, without the start token (its MODEL_CARD.md, "Prompt format")
    assert tiny_zh_tokenizer.chat_template == chat.PLAIN_TEMPLATE.removeprefix("{{ bos_token or '' }}")
    assert chat.template_of(qwen2_tokenizer) == QWEN2_TEMPLATE
    bare = qwen2_tokenizer.__class__(tokenizer_object=qwen2_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    assert chat.template_of(bare) == chat.PLAIN_TEMPLATE
    (item,), _ = chat.encode(bare, [CONVERSATION], 10_000)
    assert bare.decode(item.answer) == "好的 assistant<|endoftext|>"


# ---------------------------------------------------------------- conversations in the core


def test_plugin_examples_and_conversations_share_one_type():
    single = Example("", "翻译。", "你好", "hello")
    assert not single.is_conversation and single.all_turns == (Turn("翻译。", "你好", "hello"),)
    assert single.messages() == [{"role": "user", "content": "翻译。\n你好"}, {"role": "assistant", "content": "hello"}]
    conv = Example.conversation([("a", "", "b"), Turn("c", "d", "e")], system="s")
    assert (conv.instruction, conv.input, conv.output) == ("c", "d", "e")  # the last turn's
    assert conv.upto(1).output == "b" and conv.upto(1).system == "s" and conv.upto(1).is_conversation
    with pytest.raises(ValueError, match="last turn"):
        Example("", "x", "", "y", turns=(Turn("a", "", "b"),))


def test_conversations_split_and_dedupe_as_a_whole():
    base = [("你好", "", "你好！"), ("今天星期几？", "", "星期三。")]
    a = Example.conversation(base)
    same_prompts = Example.conversation([base[0], ("今天星期几？", "", "星期四。")])
    other = Example.conversation([base[0], ("明天呢？", "", "星期四。")])
    kept = [e for v in assign_splits([a, same_prompts, other]).values() for e in v]
    assert len(kept) == 2 and {e.output for e in kept} == {"星期三。", "星期四。"}
    assert len([e for v in assign_splits([a, same_prompts, other], distinct_answers=True).values() for e in v]) == 3
    # a one-turn conversation keys like the single-turn example of the same prompt
    ids = {e.id for v in assign_splits([Example("", "你好", "", "你好！")]).values() for e in v}
    assert ids == {e.id for v in assign_splits([Example.conversation([base[0]])]).values() for e in v}


def test_scores_per_turn_and_overall():
    from suite import Task
    from suite.data.scorers import exact_match

    class Exact(Task):
        def score(self, predictions, references):
            return exact_match(predictions, references)

    task = Exact()
    exs = [Example.conversation([("q1", "", "a"), ("q2", "", "b")], id="x")]
    asked = [exs[0].upto(1), exs[0].upto(2), exs[0].upto(1), exs[0].upto(2)]
    scores = score_answers(task, ["a", "b", "a", "wrong"], ["a", "b", "a", "b"], asked)
    assert scores == {"score": 0.75, "score_turn1": 1.0, "score_turn2": 0.5}
    single = [Example("", "q", "", "a")]
    assert score_answers(task, ["a"], ["a"], single) == {"score": 1.0}  # single-turn: no per-turn scores


def test_piece_by_piece_tokenisation_agrees_where_boundaries_allow(tiny_zh_tokenizer, qwen2_tokenizer):
    """The fallback for tokenizers without offsets (or a token across an answer's edge) gives
    the whole text's ids where no merge crosses a piece boundary, as for these two."""
    for tokenizer in (tiny_zh_tokenizer, qwen2_tokenizer):
        encoder = chat.ChatEncoder(tokenizer)
        lay = encoder.rendered(CONVERSATION)
        assert chat._by_pieces(tokenizer, lay) == encoder.tokens([lay])[0]


# -- single-turn examples through the chat template (--prompt-format) ---------------------------

#: Llama-3-Instruct's template: header tokens around each role, <|eot_id|> closing each message
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
#: GLM-4-chat's (ChatGLM's line): role tokens, and nothing after an answer (the next <|user|> ends it)
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SINGLE = Example("s1", "判断这条评论的情感倾向。", "物流很快，质量不错", "正面")


def _bpe(specials: list[str], eos: str, template: str, bos: str | None = None):
    """A small byte-level BPE with ``specials`` and ``template``, trained on this module's texts."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    texts = [t.user + "\n" + t.output for t in CONVERSATION.turns] + [SINGLE.instruction, SINGLE.input, "正面 负面",
                                                                      "system user assistant"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, bos_token=bos,
                                   additional_special_tokens=[s for s in specials if s not in (eos, bos)])
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module")
def llama3_tokenizer():
    return _bpe(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                "<|end_of_text|>", LLAMA3_TEMPLATE, bos="<|begin_of_text|>")


@pytest.fixture(scope="module")
def glm4_tokenizer():
    return _bpe(["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"], "<|endoftext|>",
                GLM4_TEMPLATE)


#: each model's tokenizer fixture, its rendered single-turn prompt, and the answer tokens the loss is on
SINGLE_TURN = {
    "qwen2": ("qwen2_tokenizer", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              "判断这条评论的情感倾向。\n物流很快，质量不错<|im_end|>\n<|im_start|>assistant\n", "正面<|im_end|>"),
    "llama3": ("llama3_tokenizer", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n判断这条评论的情感倾向。\n"
               "物流很快，质量不错<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "正面<|eot_id|>"),
    # the template writes nothing after an answer: leitai ends it with EOS, so that training teaches the stop
    "glm4": ("glm4_tokenizer", "[gMASK]<sop><|user|>\n判断这条评论的情感倾向。\n物流很快，质量不错<|assistant|>\n",
             "正面<|endoftext|>"),
}


@pytest.mark.parametrize("model", list(SINGLE_TURN))
def test_a_single_turn_example_through_the_chat_template(model, request):
    """--prompt-format chat: the exact ids (decoded), the loss on the assistant's part only, the
    generation prompt, and generation stopping at the template's end of turn."""
    from suite.data import prepared

    fixture, prompt, answer = SINGLE_TURN[model]
    tokenizer = request.getfixturevalue(fixture)
    assert chat.own_template(tokenizer) and chat.chat_format(tokenizer, "auto")
    (item,), cut = prepared.encode(tokenizer, [SINGLE], 256, chat_format=True)
    assert not cut
    assert tokenizer.decode(item.prompt) == prompt and tokenizer.decode(item.answer) == answer
    batch = collate([item], tokenizer.pad_token_id)
    assert batch["labels"][0][batch["labels"][0] != IGNORE].tolist() == item.answer  # the loss: the answer only
    asks, ids, texts, cut = prepared.eval_prompts(tokenizer, [SINGLE], 200, chat_format=True)
    assert asks == [SINGLE] and ids == [item.prompt] and texts == [prompt] and not cut  # scored as itself
    assert item.answer[-1] in chat.stop_ids(tokenizer)
    # the plain format keeps the instruction prompt
    (plain,), _ = prepared.encode(tokenizer, [SINGLE], 256, chat_format=False)
    assert "判断这条评论的情感倾向。" in tokenizer.decode(plain.prompt) and "<|" not in tokenizer.decode(plain.prompt)


def test_auto_keeps_the_instruction_prompt_where_the_template_is_leitais_own(tiny_zh_tokenizer, qwen2_tokenizer):
    """tiny-zh ships leitai's plain Human/Assistant template for conversations, not a chat
    model's own: ``auto`` keeps its single-turn prompts as they were; ``chat`` asks for the template."""
    assert not chat.own_template(tiny_zh_tokenizer)
    assert not chat.chat_format(tiny_zh_tokenizer, "auto") and chat.chat_format(tiny_zh_tokenizer, "chat")
    assert not chat.chat_format(qwen2_tokenizer, "plain")


def test_the_prompt_format_is_recorded_and_keys_the_cache(tmp_path):
    import json

    from conftest import CELLS_ONLY, leitai

    out = tmp_path / "o"
    proc = leitai("run", "--methods", "lora", "--prompt-format", "chat", "--max-steps", "2", "--batch-size", "4",
                  "--task-size", "16", *CELLS_ONLY, "-q", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(next(out.glob("runs/*/record.json")).read_text())
    assert record["status"] == "ok" and record["metrics"]["prompt_format"] == "chat"
    assert record["generations"][0]["prompt"].startswith("Human: ")  # tiny-zh's plain roles
