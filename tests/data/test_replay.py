"""--replay: general text mixed into training against forgetting (suite/data/replay.py), a dimension
of the shootout (suite/config/variants.py), and the score-against-forgetting trade-off in the report."""
import json
import math
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import leitai
from report_fixture import record as fixture_record

from suite.data import replay
from suite.data.batches import Encoded, collate
from suite.errors import UsageError


class Corpus:
    def __init__(self, texts):
        self._texts = texts

    def texts(self, count):
        return self._texts[:count]


def char_tokenizer(texts, truncation=True, max_length=64, verbose=False):
    """One id per character, a start token (1) first: enough for batching."""
    return {"input_ids": [([1] + [2 + ord(c) % 60 for c in t])[:max_length] for t in texts]}


def test_replay_and_measurement_texts_are_disjoint(registry):
    side = registry.side_corpora["zh-news-side"]
    measured = side.texts(replay.MEASURED)  # forgetting reads a prefix of these (--side-corpus-size <= MEASURED)
    replayed = replay.source_texts("zh-news-side", registry)
    assert len(measured) == replay.MEASURED and len(replayed) > 500
    assert not set(measured) & set(replayed)
    # and replay never reaches past what it leaves out: a larger measurement is refused
    config = SimpleNamespace(replay="zh-news-side:0.25", batch_size=8, grad_accum=1, side_corpus="zh-news-side",
                             side_corpus_size=replay.MEASURED + 1)
    with pytest.raises(UsageError, match="--side-corpus-size 256 or less"):
        replay.resolve([config.replay], config, registry)
    config.side_corpus_size = replay.MEASURED
    assert replay.resolve([config.replay], config, registry) == "zh-news-side:0.25"


def test_a_batch_holds_the_asked_share_of_replay_sequences():
    # the corpus's replay part repeats one measured text: it must never be replayed
    texts = [f"量{i}" * 3 for i in range(replay.MEASURED)] + ["量0量0量0"] + [f"新闻{i}" * (1 + i % 5) for i in range(40)]
    reg = SimpleNamespace(side_corpora={"fake": Corpus(texts)})
    train_set = [Encoded(f"ex{i}", [1] * (3 + i % 7), [5, 6]) for i in range(23)]
    cell = SimpleNamespace(replay="fake:0.3", batch_size=10, grad_accum=1, epochs=0, max_steps=9, seed=1, max_len=16, side_corpus="fake",
                           side_corpus_size=4)
    mix = replay.batches(cell, reg, char_tokenizer, train_set)
    assert len(mix.task) == len(mix.replay) == 9
    for task, extra in zip(mix.task, mix.replay):
        assert (len(task), len(extra)) == (7, 3)  # round(0.3 * 10) of 10, exactly, every step
        assert all(e.example_id.startswith("ex") for e in task)
        assert all(e.example_id.startswith("replay:") for e in extra)
    replayed = {tuple(e.prompt + e.answer) for b in mix.replay for e in b}
    measured = {tuple(ids) for ids in char_tokenizer(texts[:4])["input_ids"]}
    assert replayed and not replayed & measured
    # the same batches for every method: they depend on the data, the seed and the sizes only
    again = replay.batches(cell, reg, char_tokenizer, train_set)
    assert [[e.example_id for e in b] for b in again.task] == [[e.example_id for e in b] for b in mix.task]
    # without replay: exactly the task batches of today (suite.data.batches.batch_order)
    from suite.data.batches import batch_order

    cell.replay = "none"
    plain = replay.batches(cell, reg, char_tokenizer, train_set)
    assert plain.replay is None
    assert [[e.example_id for e in b] for b in plain.task] == [
        [train_set[i].example_id for i in b] for b in batch_order([e.length for e in train_set], 10, 9, 1)]
    with pytest.raises(UsageError, match="gives 0 replay sequences"):
        replay.counts(10, 0.04)


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def independent_losses(model, task, extra):
    """Each part's loss, one sequence at a time, unpadded: the task's mean cross-entropy over
    answer tokens, the replay's over every token after the first."""
    def summed(seq, start):  # sum and count of the cross-entropy of predicting seq[start:]
        logits = model(input_ids=torch.tensor([seq])).logits[0]
        return F.cross_entropy(logits[start - 1:-1], torch.tensor(seq[start:]), reduction="sum").item(), len(seq) - start

    with torch.no_grad():
        t = [summed(e.prompt + e.answer, len(e.prompt)) for e in task]
        r = [summed(e.prompt + e.answer, 1) for e in extra]
    task_loss, replay_loss = sum(s for s, _ in t) / sum(n for _, n in t), sum(s for s, _ in r) / sum(n for _, n in r)
    return task_loss, replay_loss, (len(task) * task_loss + len(extra) * replay_loss) / (len(task) + len(extra))


def test_task_and_replay_losses_are_each_an_independent_computation():
    from accelerate import Accelerator

    from suite.cell.train import TrainSettings, train
    from suite.measures.loss import AnswerHead, loss_index, mixed_loss

    model = tiny_model()
    task = [Encoded("a", [1, 7, 8, 9], [10, 2]), Encoded("b", [1, 7], [11, 12, 2]), Encoded("c", [1, 5, 6, 7, 8], [13, 2])]
    extra = [Encoded("replay:0", [1], [20, 21, 22, 23, 24, 25]), Encoded("replay:1", [1], [30, 31])]
    expected = independent_losses(model, task, extra)
    batch = collate(task + extra, pad_id=0)
    index = loss_index(batch["labels"])
    is_task = index[0] < len(task)
    for active in (True, False):  # the answer-only head, and full logits (a model it does not fit)
        head = AnswerHead(model)
        if not active:
            head.remove()
        with torch.no_grad():
            got = mixed_loss(head.logits(model, batch, index), index[2], is_task, len(task), len(extra))
        head.remove()
        for value, want in zip(got, (expected[2], *expected[:2])):
            assert math.isclose(value.item(), want, rel_tol=1e-5), (active, value.item(), want)
    # and the training loop records each part: at lr 0 the first step's figures are the model's
    result = train(model, [task], 0, TrainSettings(lr=0.0, log_every=1), Accelerator(cpu=True), replay=[extra])
    assert math.isclose(result.losses[0], expected[0], rel_tol=1e-5)
    assert math.isclose(result.replay_losses[0], expected[1], rel_tol=1e-5)
    assert result.answer_head


def test_bad_replay_input_is_one_line_before_anything_runs(tmp_path, capsys):
    from suite.cli.app import main

    empty, lines = tmp_path / "empty.txt", tmp_path / "bad.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    lines.write_text('{"text": "好"}\n{"title": 1}\n', encoding="utf-8")
    cases = {
        "no-such-corpus:0.2": "not a side corpus",
        "zh-news-side:0": "between 0 and 1",
        "zh-news-side:1.5": "between 0 and 1",
        "zh-news-side": "takes none or SOURCE:FRACTION",
        f"{tmp_path}/missing.txt:0.2": "cannot read it",
        f"{empty}:0.2": "holds no text",
        f"{lines}:0.2": "bad.jsonl, line 2: text: expected a string",
        "none,zh-news-side:0.01": "gives 0 replay sequences",
    }
    out = tmp_path / "out"
    for value, message in cases.items():
        assert main(["run", "--methods", "lora", "--replay", value, "--no-baselines", "--out", str(out)]) == 2, value
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (value, err)
    assert not out.exists()


def test_a_replay_shootout(tmp_path):
    """Two replay settings as a dimension, the runs without replay as today's, --resume comparing
    the replay setting, and the report rebuilt from runs/ alone."""
    common = ["--methods", "lora", "--max-steps", "3", "--task-size", "16", "--batch-size", "8", "--no-baselines",
              "--infer-prompts", "0", "--side-corpus-size", "8", "-q"]
    out, plain = tmp_path / "replay", tmp_path / "plain"
    proc = leitai("run", *common, "--replay", "none,zh-news-side:0.25", "--out", out)
    assert proc.returncode == 0, proc.stderr
    with_replay = "zh-sentiment__lora__replay-zh-news-side-0.25__s0"
    assert {p.name for p in (out / "runs").iterdir()} == {"zh-sentiment__lora__s0", with_replay}
    proc = leitai("run", *common, "--out", plain)  # no --replay at all: today's shootout
    assert proc.returncode == 0, proc.stderr

    def rec(d, rid):
        return json.loads((d / "runs" / rid / "record.json").read_text(encoding="utf-8"))

    today, none = rec(plain, "zh-sentiment__lora__s0"), rec(out, "zh-sentiment__lora__s0")
    assert none["curve"] == today["curve"]  # the same losses, step by step
    for key in ("score", "eval_loss", "forgetting", "final_train_loss", "train_tokens"):
        assert none["metrics"][key] == today["metrics"][key], key
    assert none["config"]["replay"] == "none" and "final_replay_loss" not in none["metrics"]

    mixed = rec(out, with_replay)
    m = mixed["metrics"]
    assert (m["task_examples_per_step"], m["replay_sequences_per_step"]) == (6, 2) and m["steps"] == 3
    splits = [p["split"] for p in mixed["curve"]]
    assert splits.count("train") == splits.count("replay") == 3
    assert m["final_replay_loss"] == [p["loss"] for p in mixed["curve"] if p["split"] == "replay"][-1]
    # the planner models task batches only: no prediction beside replay's measured peak
    assert "predicted_peak_bytes" not in m and none["metrics"]["predicted_peak_bytes"] > 0

    import pandas as pd

    results = pd.read_csv(out / "results.csv").set_index("run_id")
    assert results.loc[with_replay, ["method", "plain_method", "replay"]].tolist() == [
        "lora + replay 0.25", "lora", "zh-news-side:0.25"]
    assert results.loc["zh-sentiment__lora__s0", ["method", "replay"]].tolist() == ["lora", "none"]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| lora + replay 0.25 |" in summary and "zh-sentiment, lora: " in summary
    assert "runs differ in the setting replay" not in summary  # a dimension differs on purpose
    assert 'aria-label="tradeoff-zh-sentiment"' in (out / "report.html").read_text(encoding="utf-8")

    # --resume keeps finished cells of the same settings, and compares the replay setting
    proc = leitai("run", *common, "--replay", "none,zh-news-side:0.25", "--out", out, "--resume")
    assert proc.returncode == 0 and "0 runs (nothing new), 2 already done" in proc.stdout, proc.stderr
    path = out / "runs" / with_replay / "record.json"
    changed = json.loads(path.read_text(encoding="utf-8"))
    changed["config"]["replay"] = "zh-news-side:0.5"  # as if run under this id with another setting
    path.write_text(json.dumps(changed), encoding="utf-8")
    proc = leitai("run", *common, "--replay", "none,zh-news-side:0.25", "--out", out, "--resume")
    assert proc.returncode == 2 and "replay='zh-news-side:0.5'" in proc.stderr, proc.stderr
    path.write_text(json.dumps(mixed, ensure_ascii=False, indent=1), encoding="utf-8")

    # the report from runs/ alone, elsewhere: the same files
    proc = leitai("report", out)
    assert proc.returncode == 0, proc.stderr
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")
    proc = leitai("report", copy)
    assert proc.returncode == 0, proc.stderr
    for name in ("results.csv", "curves.csv", "summary.md", "report.html"):
        assert (copy / name).read_bytes() == (out / name).read_bytes(), name


def replay_record(method, replay_value, forgetting, scores, seed=0):
    """A hand-written final record of ``method`` at ``replay_value`` with per-example scores."""
    r = fixture_record("zh-demo", method, seed, score=sum(scores) / len(scores), dev=2.0,
                       extra={"forgetting": forgetting})
    r["config"].update(replay=replay_value, side_corpus="zh-news-side")
    from suite.config.variants import slug

    part = slug(r["config"])
    r["run_id"] = f"zh-demo__{method}__{part + '__' if part else ''}s{seed}"
    for g, s in zip(r["generations"], scores):
        g["example_score"] = s
    return r


def test_the_report_weighs_score_against_forgetting(tmp_path):
    from report_fixture import write

    from suite.report import write_report

    good, bad = [1.0] * 10, [0.0] * 10
    records = [
        # full: replay 0.1 keeps the score at less forgetting; replay 0.3 forgets least but scores lower
        replay_record("full", "none", 0.9, good),
        replay_record("full", "zh-news-side:0.1", 0.6, good[:9] + [0.0]),
        replay_record("full", "zh-news-side:0.3", 0.3, bad),
        # lora: replay forgets more, so no replay setting helps
        replay_record("lora", "none", 0.3, good),
        replay_record("lora", "zh-news-side:0.3", 0.5, good),
    ]
    out = write(tmp_path / "out", records)
    results = write_report([out], out)
    assert sorted(results.method) == ["full", "full + replay 0.1", "full + replay 0.3", "lora", "lora + replay 0.3"]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert ("zh-demo, full: replay 0.1 keeps the accuracy (0.900 against 1.00 without replay; paired test p = 1) at "
            "the least forgetting (0.600 against 0.900 nats); replay 0.3 forgets less (0.300) but its accuracy is lower "
            "(0, p = 0.002).") in summary
    assert "zh-demo, lora: no replay setting keeps the accuracy at less forgetting than no replay" in summary
    page = (out / "report.html").read_text(encoding="utf-8")
    figure = page[page.index('aria-label="tradeoff-zh-demo"'):]
    figure = figure[:figure.index("</svg>")]
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", figure)  # the SVG keeps text as text
    assert texts[-2:] == ["full", "lora"]  # one line per method in the legend
    labels = texts[texts.index("accuracy") + 1:-3]  # each point labelled with its replay fraction
    assert labels == ["none", "0.1", "0.3", "none", "0.3"]
    assert "against forgetting" in texts[-3] and "Pareto front" in texts[-3]


def test_a_replay_list_is_a_dimension_of_the_plan(tmp_path, registry):
    """A TOML list (or a comma-separated flag) runs every method at each setting; the runs
    without replay keep today's ids; labels name each setting once."""
    from suite.config.sources import build_config
    from suite.config.variants import display, suffix
    from suite.shootout.runner import cells_of

    path = tmp_path / "c.toml"
    path.write_text('methods = ["lora", "full"]\nreplay = ["none", "zh-news-side:0.30", "zh-news-side:.1"]\n')
    cfg = build_config({}, str(path)).fill_defaults(registry)
    assert cfg.replay == "none,zh-news-side:0.3,zh-news-side:0.1"  # checked and normalised once
    cells = cells_of(cfg, registry)
    assert [(c.run_id, c.replay) for c in cells[:3]] == [
        ("zh-sentiment__lora__s0", "none"),
        ("zh-sentiment__lora__replay-zh-news-side-0.3__s0", "zh-news-side:0.3"),
        ("zh-sentiment__lora__replay-zh-news-side-0.1__s0", "zh-news-side:0.1"),
    ]
    assert [display(c.method, vars(c)) for c in cells] == [
        "lora", "lora + replay 0.3", "lora + replay 0.1", "full", "full + replay 0.3", "full + replay 0.1"]
    notes = tmp_path / "notes.txt"
    notes.write_text("一段文字\n", encoding="utf-8")
    cfg = build_config({"methods": "lora", "replay": f"{notes}:0.25", "batch_size": 4}).fill_defaults(registry)
    (cell,) = cells_of(cfg, registry)
    assert suffix(vars(cell)) == " + replay notes.txt 0.25" and cell.run_id == "zh-sentiment__lora__replay-notes.txt-0.25__s0"
