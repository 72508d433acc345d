"""The built-in tasks: each scorer on hand-written answers (partial credit included), splits that
are stable, order-independent and free of cross-split duplicates, and the sizes users see."""
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from suite.data.scorers import bleu4_zh, char_accuracy, exact_match, mean_rouge_l, rouge_l_f1
from suite.data.tasks import Example, assign_splits, normalise, take

BUILT_IN = ["zh-sentiment", "zh-idiom", "zh-segment", "zh-ner", "zh-t2s", "zh-numbers", "zh-dialogue"]
#: where each People's Daily task's example holds its sentence
PEOPLES_DAILY = {"zh-segment": lambda e: e.input, "zh-ner": lambda e: e.input, "zh-t2s": lambda e: e.output,
                 "zh-dialogue": lambda e: e.turns[0].input}


@pytest.fixture(scope="module")
def tasks():
    """The process-wide registry's tasks, so parsed corpora are shared with ``leitai list``."""
    from suite.plugins import registry

    return {name: registry().tasks[name] for name in BUILT_IN}


# ---------------------------------------------------------------- scorers


def test_exact_match_strips_whitespace_only():
    assert exact_match(["正面", " 负面\n", "正面。"], ["正面", "负面", "正面"]) == pytest.approx(2 / 3)
    assert math.isnan(exact_match([], []))


def test_character_rouge_l_gives_partial_credit():
    # LCS 7 of a 7-character prediction and a 16-character reference: P = 1, R = 7/16
    assert rouge_l_f1("比喻黑暗的社会", "常用来比喻黑暗的社会和严酷的牢狱") == pytest.approx(2 * (7 / 16) / (1 + 7 / 16))
    assert rouge_l_f1("一 心 一 意", "一心一意") == 1.0  # whitespace is not a character of the answer
    assert rouge_l_f1("心意", "一心一意") == pytest.approx(2 * 1 * 0.5 / 1.5)  # in order, with gaps
    assert rouge_l_f1("意心", "一心一意") == pytest.approx(2 * 0.5 * 0.25 / 0.75)  # order matters
    assert rouge_l_f1("", "一心一意") == 0.0 and rouge_l_f1("", "") == 1.0
    assert mean_rouge_l(["一心一意", "天"], ["一心一意", "地"]) == 0.5


def test_character_accuracy_is_one_minus_cer():
    assert char_accuracy(["后来我們"], ["后来我们"]) == pytest.approx(0.75)  # one substitution in four
    assert char_accuracy(["后来"], ["后来我们"]) == pytest.approx(0.5)  # two deletions
    assert char_accuracy(["这是一个很长很长的错误回答"], ["后来"]) == 0.0  # floored, never negative
    assert char_accuracy(["后来", "我们"], ["后来", "我们"]) == 1.0


def test_bleu4_uses_the_zh_tokenizer():
    assert bleu4_zh(["常用来比喻黑暗的社会"], ["常用来比喻黑暗的社会"]) == pytest.approx(100.0)
    # every n-gram of the 7-character prediction is right; only the brevity penalty exp(1 - 16/7) remains
    partial = bleu4_zh(["比喻黑暗的社会"], ["常用来比喻黑暗的社会和严酷的牢狱"])
    assert partial == pytest.approx(100 * math.exp(1 - 16 / 7), rel=1e-3)
    assert bleu4_zh(["完全无关"], ["常用来比喻黑暗的社会"]) == 0.0


def test_segmentation_word_f1():
    from plugins.tasks.zh_segment import word_f1

    # 我 爱 right, 北京天安门 wrong: P = 2/3, R = 2/4
    assert word_f1(["我 爱 北京天安门"], ["我 爱 北京 天安门"]) == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert word_f1(["我 爱 北京 天安门"], ["我 爱 北京 天安门"]) == 1.0
    # a right word at the wrong place does not count: 爱 starts at 2 in the prediction
    assert word_f1(["我们 爱"], ["我 们 爱"]) == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # micro-averaged over sentences: 2 of 2 right, 0 of 1 right
    assert word_f1(["你 好", "谢谢"], ["你 好", "谢 谢"]) == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert word_f1([""], ["你 好"]) == 0.0


def test_entity_f1_and_answer_format():
    from plugins.tasks.zh_ner import entity_f1, format_entities, parse_entities

    gold = "人名：江泽民；地名：中国、香港；机构名：无"
    assert format_entities({"人名": ["江泽民"], "地名": ["中国", "香港"]}) == gold
    assert parse_entities(gold) == {("人名", "江泽民"), ("地名", "中国"), ("地名", "香港")}
    assert parse_entities("人名:江泽民; 地名: 中国,香港") == parse_entities(gold)  # ASCII separators
    assert parse_entities("这句话里没有实体") == set() and parse_entities("国家：中国") == set()
    # 江泽民 and 中国 right, 新华社 wrong, 香港 missed: P = R = 2/3
    assert entity_f1(["人名：江泽民；地名：中国；机构名：新华社"], [gold]) == pytest.approx(2 / 3)
    # a sentence without entities adds nothing unless something is predicted for it
    assert entity_f1([gold, "人名：无；地名：无；机构名：无"], [gold, "人名：无；地名：无；机构名：无"]) == 1.0
    assert entity_f1([gold, "人名：李鹏；地名：无；机构名：无"], [gold, "人名：无；地名：无；机构名：无"]) == pytest.approx(
        2 * 0.75 * 1 / 1.75)


def test_corpus_helpers():
    from plugins.tasks.corpora import entities, split_sentences

    tagged = (("“", "w"), ("江", "nr"), ("泽民", "nr"), ("访问", "v"), ("北京", "ns"), ("。", "w"), ("”", "w"),
              ("新华社", "nt"), ("报道", "v"), ("北京", "ns"))
    first, second = split_sentences(tagged)
    assert "".join(w for w, _ in first) == "“江泽民访问北京。”"  # the closing quote stays with its sentence
    assert "".join(w for w, _ in second) == "新华社报道北京"  # an unterminated tail is a sentence
    assert entities(tagged) == {"人名": ["江泽民"], "地名": ["北京"], "机构名": ["新华社"]}


def test_numbers_are_cn2an_conversions():
    import cn2an

    from plugins.tasks.zh_numbers import TO_ARABIC, TO_CHINESE, TO_RMB, examples, number

    assert [number(i) for i in range(5)] == [number(i) for i in range(5)]  # a fixed sequence
    exs = examples(60)
    assert {e.instruction for e in exs} == {TO_ARABIC, TO_CHINESE, TO_RMB}
    for e in exs:
        if e.instruction == TO_ARABIC:
            assert float(cn2an.cn2an(e.input, "strict")) == float(e.output)
        elif e.instruction == TO_RMB:
            assert e.output == cn2an.an2cn(e.input, "rmb") and ("元" in e.output or "角" in e.output)
    assert any(e.input.startswith("-") for e in exs) and any("." in e.input for e in exs)


# ---------------------------------------------------------------- splits and sizes


def test_list_tasks_shows_every_task_with_sizes_and_scores(tasks, capsys, tmp_path, monkeypatch):
    from suite.cli.app import main
    monkeypatch.setenv("LEITAI_CACHE_DIR", str(tmp_path / "leitai"))
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "leitai" / "task-sizes.json").exists()
    assert main(["list", "tasks"]) == 0 and capsys.readouterr().out == out  # the second time from the cache
    for name, task in tasks.items():
        block = out[out.index(name):].split("\n")[1]
        full = task.split_sizes(None)
        assert task.score_name in block
        assert f"default {task.default_sizes['train']}/{task.default_sizes['dev']}/{task.default_sizes['test']}" in block
        assert f"full {full['train']}/{full['dev']}/{full['test']}" in block


def test_default_runs_are_cpu_sized(tasks):
    from suite.config.settings import ShootoutConfig

    for name, task in tasks.items():
        splits = task.splits(ShootoutConfig().sizes_for(task))
        assert {s: len(v) for s, v in splits.items()} == task.default_sizes, name
        for ex in (e for v in splits.values() for e in v):
            if task.max_chars:
                assert min(len(ex.all_turns[0].input), len(ex.all_turns[0].output)) <= task.max_chars, (name, ex)
            assert all(len(t.output) <= task.max_new_tokens for t in ex.all_turns), (name, ex)
        # --task-size N keeps working, and a larger N gives a superset
        small = task.splits(ShootoutConfig(task_size="40").sizes_for(task))
        assert len(small["train"]) == 40 and {e.id for e in small["test"]} <= {e.id for e in splits["test"]}, name


def test_no_example_in_two_splits(tasks):
    for name, task in tasks.items():
        seen: dict[str, str] = {}
        ids = set()
        for split, examples in task.splits(None).items():
            assert examples, (name, split)
            for ex in examples:
                first = ex.all_turns[0]  # a conversation: its first turn holds what it is about
                for text in {normalise(first.instruction + "\n" + first.input), normalise(first.input)}:
                    assert seen.setdefault(text, split) == split, (name, ex)
                ids.add(ex.id)
        assert len(ids) == sum(len(v) for v in task.splits(None).values()), f"{name}: repeated ids"


def test_peoples_daily_tasks_put_each_sentence_in_one_split(tasks):
    from plugins.tasks.corpora import peoples_daily_heldout, peoples_daily_split

    heldout = {normalise(t) for t in peoples_daily_heldout()}
    for name, sentence_of in PEOPLES_DAILY.items():
        for split, examples in tasks[name].splits(None).items():
            for ex in examples:
                sentence = sentence_of(ex)
                assert peoples_daily_split(sentence) == split, (name, sentence)
                assert (normalise(sentence) in heldout) == (split != "train"), (name, sentence)


def test_zh_dialogue_splits_its_sentences_as_zh_segment_does(tasks):
    """Each dialogue is about one sentence, in that sentence's zh-segment split, and each turn's
    reference is the single-turn tasks' answer for it."""
    import opencc

    segment = {ex.input: (split, ex.output) for split, exs in tasks["zh-segment"].splits(None).items() for ex in exs}
    ner = {ex.input: ex.output for exs in tasks["zh-ner"].splits(None).values() for ex in exs}
    s2t = opencc.OpenCC("s2t")
    dialogues = tasks["zh-dialogue"].splits(None)
    assert {s: len(v) for s, v in dialogues.items()} == {s: len(v) for s, v in tasks["zh-segment"].splits(None).items()}
    for split, exs in dialogues.items():
        for ex in exs:
            sentence = ex.turns[0].input
            assert len(ex.turns) == 3 and segment[sentence] == (split, ex.turns[0].output), sentence
            assert ex.turns[1].output == ner[sentence] and ex.turns[2].output == s2t.convert(sentence)
            assert "上面那句话" in ex.turns[1].instruction and "上面那句话" in ex.turns[2].instruction
    capped = tasks["zh-dialogue"].splits(dict(tasks["zh-dialogue"].default_sizes))
    assert all(segment[ex.turns[0].input][0] == split for split, exs in capped.items() for ex in exs)


def test_zh_dialogue_scores_each_turn_its_own_way(tasks):
    from suite.data.tasks import score_answers

    task = tasks["zh-dialogue"]
    ex = next(e for e in task.splits(dict(task.default_sizes))["test"] if e.turns[1].output.count("无") < 3)
    asked = [ex.upto(1), ex.upto(2), ex.upto(3)]
    refs = [t.output for t in ex.turns]
    perfect = score_answers(task, refs, refs, asked)
    assert perfect == {"score": 1.0, "score_turn1": 1.0, "score_turn2": 1.0, "score_turn3": 1.0}
    unsegmented = score_answers(task, [ex.turns[0].input, refs[1], ""], refs, asked)
    assert unsegmented["score_turn1"] < 1 and unsegmented["score_turn2"] == 1 and unsegmented["score_turn3"] == 0
    assert unsegmented["score"] == pytest.approx((unsegmented["score_turn1"] + 1) / 3)


def _split_ids(task_list) -> dict:
    return {t.name: {s: [e.id for e in v] for s, v in t.splits(dict(t.default_sizes)).items()} for t in task_list}


def test_splits_are_the_same_in_another_process(tasks):
    # zh-ner and zh-t2s split the People's Daily sentences exactly as zh-segment does (tested above)
    names = ["zh-sentiment", "zh-idiom", "zh-segment", "zh-numbers"]
    code = (
        "import json; from suite.plugins import registry; import test_tasks as t; "
        f"print(json.dumps(t._split_ids([registry().tasks[n] for n in {names!r}])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "plugins"), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == _split_ids([tasks[n] for n in names])


def test_splits_do_not_depend_on_corpus_order(tasks, monkeypatch):
    import plugins.corpora as corpora
    from plugins.tasks.zh_idiom import ZhIdiom
    from plugins.tasks.zh_segment import ZhSegment
    from plugins.tasks.zh_sentiment import ZhSentiment

    sentences, idioms, read_lines = corpora.peoples_daily_tagged_sentences(), corpora.chengyu_entries(), corpora.read_lines
    monkeypatch.setattr(corpora, "peoples_daily_tagged_sentences", lambda: tuple(reversed(sentences)))
    monkeypatch.setattr(corpora, "chengyu_entries", lambda: list(reversed(idioms)))
    monkeypatch.setattr(corpora, "read_lines", lambda path: list(reversed(read_lines(path))))
    reordered = _split_ids([ZhSentiment(), ZhIdiom(), ZhSegment()])
    assert reordered == _split_ids([tasks["zh-sentiment"], tasks["zh-idiom"], tasks["zh-segment"]])


def test_assign_splits_dedupes_and_keys_on_the_given_text():
    exs = [Example("", "翻译。", "１９９８年", "1998"), Example("", "翻译。", "1998 年", "一九九八"),
           Example("", "另一个指令。", "1998年", "x")]
    splits = assign_splits(exs)
    kept = [e for v in splits.values() for e in v]
    assert len(kept) == 2  # the first two are one prompt once normalised; the smaller one stays
    assert {e.output for e in kept} == {"一九九八", "x"}  # "1998 年" < "１９９８年"
    assert assign_splits(list(reversed(exs))) == splits  # whatever the order they come in
    assert len([e for v in assign_splits(exs, distinct_answers=True).values() for e in v]) == 3
    by_input = assign_splits(exs, key=lambda e: e.input)
    assert len({s for s, v in by_input.items() for e in v}) == 1  # one key text: one split
    assert take(splits, {"train": 0, "dev": 0, "test": 0}) == {"train": [], "dev": [], "test": []}


def test_extra_metrics_are_checked_and_recorded(tasks):
    from suite.data.batches import Encoded
    from suite.data.prepared import generation_budget
    from suite.data.tasks import extra_metrics

    preds, refs = ["比喻黑暗的社会"], ["常用来比喻黑暗的社会和严酷的牢狱"]
    assert extra_metrics(tasks["zh-idiom"], preds, refs, {"score": 0.5})["bleu4"] == pytest.approx(27.65, abs=0.01)
    assert extra_metrics(tasks["zh-t2s"], ["后来我們"], ["后来我们"], {})["char_accuracy"] == pytest.approx(0.75)
    assert extra_metrics(tasks["zh-numbers"], preds, refs, {}) == {}
    with pytest.raises(ValueError, match="clashes"):
        extra_metrics(tasks["zh-idiom"], preds, refs, {"bleu4": 1.0})
    train = [Encoded("a", [1, 2], [5, 6, 2]), Encoded("b", [1], [7, 2])]
    assert generation_budget(32, train) == 3 and generation_budget(2, train) == 2


TINY_TASK = '''
from suite import Example, Task, hookimpl
from suite.scoring import exact_match
from suite.tasks import assign_splits, take


class Tiny(Task):
    name = "zh-tiny"
    description = "eight words, repeated"
    source = "the test"
    score_name = "exact_match"
    default_sizes = {"train": 8, "dev": 2, "test": 2}

    def splits(self, sizes=None):
        words = [Example("", "重复这个词。", f"词{i}", f"词{i}") for i in range(COUNT)]
        return take(assign_splits(words), sizes)

    def score(self, predictions, references):
        return exact_match(predictions, references)


@hookimpl
def register_tasks(register):
    register(Tiny())
'''


def test_a_plugin_task_with_an_empty_split_is_refused_before_anything_runs(tmp_path):
    """Eight keys leave the test split empty (assign_splits' hash): one line, exit status 2,
    no output directory; with enough keys the same task passes the check (--methods names an
    unknown method there, so nothing trains and the next check is what stops it)."""
    from conftest import leitai, plugin_env

    env = plugin_env(tmp_path, "tiny_task", "COUNT = 8\n" + TINY_TASK, ROOT)
    out = tmp_path / "out"
    done = leitai("run", "--tasks", "zh-tiny", "--methods", "lora", "--out", out, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("leitai: error: task zh-tiny: its splits hold train 7, dev 1, test 0 examples, leaving the "
                           "test split(s) empty (assign_splits sends about 10% of the distinct split keys to each of "
                           "dev and test); give the task more examples, or a larger --task-size\n")
    assert not out.exists()
    env = plugin_env(tmp_path, "tiny_task", "COUNT = 100\n" + TINY_TASK, ROOT)
    done = leitai("run", "--tasks", "zh-tiny", "--methods", "no-such-method", "--out", out, env=env)
    assert done.returncode == 2 and "no-such-method" in done.stderr and "zh-tiny" not in done.stderr, done.stderr
