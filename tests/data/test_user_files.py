"""Users' own data through ``--tasks file:PATH``: every accepted shape reads to the same
examples and runs; every kind of bad input stops the shootout with one line naming the file,
the line and the field, before anything is trained."""
import json
import re

import pandas as pd
import pytest
from conftest import CELLS_ONLY, leitai

from suite.data.user_files import resolve_task
from suite.errors import UsageError

RECORDS = [
    {"instruction": "把这句话翻译成英文。", "input": f"我有{i}个苹果。", "output": f"I have {i} apples."}
    for i in range(60)
] + [{"instruction": f"写出{i}的平方。", "input": "", "output": str(i * i)} for i in range(20)]


def chatglm(r: dict) -> dict:
    """A record in ChatGLM-tuning's shape (its format_example: no Input line for an empty input)."""
    context = f"Instruction: {r['instruction']}\n" + (f"Input: {r['input']}\n" if r["input"] else "") + "Answer: "
    return {"context": context, "target": r["output"]}


def jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def save_to_disk(records, path, splits=None):
    import datasets

    datasets.disable_progress_bars()
    if splits:
        datasets.DatasetDict({k: datasets.Dataset.from_list(records[a:b]) for k, (a, b) in splits.items()}).save_to_disk(str(path))
    else:
        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    files = {
        "alpaca.json": json.dumps(RECORDS, ensure_ascii=False, indent=2),
        "belle.jsonl": jsonl(RECORDS),
        "chatglm.jsonl": jsonl(map(chatglm, RECORDS)),
        "chatglm.json": json.dumps([chatglm(r) for r in RECORDS], ensure_ascii=False),
    }
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    (d / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl(RECORDS).encode())
    save_to_disk(RECORDS, d / "alpaca_dataset")
    save_to_disk([chatglm(r) for r in RECORDS], d / "chatglm_datasetdict", {"part1": (0, 50), "part2": (50, 80)})  # pooled
    return d


def splits_of(name: str) -> dict:
    return {s: [(e.id, e.instruction, e.input, e.output) for e in v] for s, v in resolve_task(name, None).splits().items()}


def test_every_accepted_shape_reads_to_the_same_examples(data_files):
    reference = splits_of(f"file:{data_files / 'alpaca.json'}")
    assert sum(len(v) for v in reference.values()) == len(RECORDS) and all(reference.values())
    for name in ("belle.jsonl", "chatglm.jsonl", "chatglm.json", "bom.jsonl", "alpaca_dataset", "chatglm_datasetdict"):
        assert splits_of(f"file:{data_files / name}") == reference, name


def test_chatglm_context_is_read_back_into_instruction_and_input():
    from suite.data.user_files import to_example

    ex = to_example("f", "line 1", {"context": "Instruction: 翻译\n成英文\nInput: 你好\nAnswer: ", "target": "hello"})
    assert (ex.instruction, ex.input, ex.output) == ("翻译\n成英文", "你好", "hello")
    ex = to_example("f", "line 1", {"context": "Instruction: 写一首诗\nAnswer:", "target": "床前明月光"})
    assert (ex.instruction, ex.input) == ("写一首诗", "")
    ex = to_example("f", "line 1", {"context": "请写一首诗", "target": "床前明月光"})  # free-form context
    assert (ex.instruction, ex.input) == ("请写一首诗", "")
    assert to_example("f", "line 1", {"instruction": "说你好", "output": "你好"}).input == ""  # input optional


def test_scorer_option(data_files):
    path = data_files / "belle.jsonl"
    assert resolve_task(f"file:{path}", None).score_name == "rouge_l_f1"
    task = resolve_task(f"file:{path}?score=accuracy", None)
    assert task.score_name == "accuracy" and task.score(["a", "b"], ["a", "c"]) == 0.5
    with pytest.raises(UsageError, match="unknown scorer 'bleu' .known: accuracy, bleu4"):
        resolve_task(f"file:{path}?score=bleu", None)
    with pytest.raises(UsageError, match="unknown option.s. metric"):
        resolve_task(f"file:{path}?metric=bleu4", None)


def _lines(records) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in records]


GOOD = _lines(RECORDS)
BAD = {
    "empty": ("\n  \n", "empty.jsonl: empty file (no records)"),
    "empty array": ("[\n]\n", "empty.json: line 2: empty JSON array (no records)"),
    "invalid JSON": ("\n".join(GOOD[:3] + ['{"instruction": "x", "output": }'] + GOOD[3:]),
                     "invalid.jsonl: line 4: invalid JSON (Expecting value at column 32)"),
    "truncated last line": ("\n".join(GOOD[:-1] + [GOOD[-1][:30]]),
                            "truncated.jsonl: line 80: the record is cut off at the end of the file"),
    "truncated array": (json.dumps(RECORDS, ensure_ascii=False, indent=1)[:2000],
                        "truncated.json: line 110: the record is cut off at the end of the file"),
    "missing field": ("\n".join(GOOD[:5] + ['{"instruction": "x", "input": ""}'] + GOOD[5:]),
                      "missing.jsonl: line 6: field 'output' is missing"),
    "missing field in an array": (json.dumps(RECORDS[:3] + [{"instruction": "x"}], indent=1),
                                  "missing.json: line 17: field 'output' is missing"),
    "non-string field": ("\n".join(GOOD[:7] + ['{"instruction": "x", "input": "", "output": 3}'] + GOOD[7:]),
                         "nonstring.jsonl: line 8: field 'output' must be a string, not a number"),
    "null input": ("\n".join(GOOD[:2] + ['{"instruction": "x", "input": null, "output": "y"}'] + GOOD[2:]),
                   "null.jsonl: line 3: field 'input' must be a string, not null"),
    "non-string target": ("\n".join([json.dumps(chatglm(r), ensure_ascii=False) for r in RECORDS[:9]]
                                    + ['{"context": "Instruction: x\\nAnswer: ", "target": ["y"]}']),
                          "target.jsonl: line 10: field 'target' must be a string, not an array"),
    "no known fields": ('{"question": "x", "answer": "y"}\n', "fields.jsonl: line 1: a record needs the fields instruction, input, output"),
    "not an object": ("\n".join(GOOD[:1] + ['["x", "y"]']), "object.jsonl: line 2: a record must be a JSON object, not an array"),
    "not UTF-8": (("\n".join(GOOD[:60]) + "\n").encode() + '{"instruction": "café", "output": "x"}\n'.encode("latin-1"),
                  "latin1.jsonl: line 61: not UTF-8 (byte 0xe9"),
    "GBK": ("\n".join(GOOD[:2]).encode("gbk"), "gbk.jsonl: line 1: not UTF-8"),
    "too few records": ("\n".join(GOOD[:3]), "few.jsonl: 3 distinct records leave the"),
    "a directory that is no dataset": (None, "nodata: not a directory written by datasets' save_to_disk"),
}
FILE_NAMES = {"empty": "empty.jsonl", "empty array": "empty.json", "invalid JSON": "invalid.jsonl",
              "truncated last line": "truncated.jsonl", "truncated array": "truncated.json",
              "missing field": "missing.jsonl", "missing field in an array": "missing.json",
              "non-string field": "nonstring.jsonl", "null input": "null.jsonl", "non-string target": "target.jsonl",
              "no known fields": "fields.jsonl", "not an object": "object.jsonl", "not UTF-8": "latin1.jsonl",
              "GBK": "gbk.jsonl", "too few records": "few.jsonl", "a directory that is no dataset": "nodata"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_before_anything_runs(case, tmp_path, capsys):
    from suite.cli.app import main

    content, message = BAD[case]
    path = tmp_path / FILE_NAMES[case]
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "out"
    code = main(["run", "--tasks", f"zh-numbers,file:{path}", "--methods", "lora", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"leitai: error: {tmp_path}/{message}") and err.count("\n") == 1, err
    assert not out.exists()  # nothing ran, nothing was written


def test_bad_input_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "x", "input": "", "output": 3}\n', encoding="utf-8")
    proc = leitai("run", "--tasks", f"file:{path}", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr == f"leitai: error: {path}: line 1: field 'output' must be a string, not a number\n"
    assert not (tmp_path / "out").exists()


def test_a_file_task_runs_and_long_records_are_reported(tmp_path):
    long = dict(RECORDS[0], input="很长的输入。" * 2000, output="很长的回答" * 500)
    (tmp_path / "long.json").write_text(json.dumps(RECORDS + [long], ensure_ascii=False), encoding="utf-8")
    name, out = f"file:{tmp_path / 'long.json'}", tmp_path / "out"
    proc = leitai("run", "--tasks", name, "--methods", "lora", "--task-size", "full", "--max-steps", "1",
                  "--batch-size", "4", "--max-len", "64", *CELLS_ONLY, "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = pd.read_csv(out / "results.csv").iloc[0]
    assert run.status == "ok" and run.task == name and run.score_name == "rouge_l_f1" and 0 <= run.score <= 1
    assert run.truncated_examples + run.truncated_eval_examples >= 1
    warning = [line for line in proc.stderr.splitlines() if line.startswith(f"leitai: warning: {name}:")]
    assert len(warning) == 1 and "longer than --max-len 64 tokens and were truncated" in warning[0], proc.stderr
    assert len(pd.read_csv(out / "generations.csv")) == run.test_examples


@pytest.mark.parametrize("name", ["chatglm.jsonl?score=exact_match", "chatglm_datasetdict"])
def test_jsonl_and_dataset_directories_run_as_cells(name, data_files, tmp_path):
    """The cell itself (in this process, to spare a child's start-up) on the other containers."""
    from suite.cell.run import run_cell
    from suite.config.sources import build_config
    from suite.plugins import registry
    from suite.shootout.runner import cells_of

    config = build_config({"tasks": f"file:{data_files / name}", "methods": "lora", "max_steps": 1, "batch_size": 4,
                           "max_len": 64, "task_size": "full", "out": str(tmp_path)}).fill_defaults(registry())
    (cell,) = cells_of(config, registry())
    record = run_cell(cell, tmp_path)
    assert record["status"] == "ok", record.get("traceback")
    assert record["metrics"]["score_name"] == (name.partition("?score=")[2] or "rouge_l_f1")
    assert 0 <= record["metrics"]["score"] <= 1
    assert len(record["generations"]) == record["metrics"]["test_examples"] > 0


# -- a user's own splits, used as given -----------------------------------------------------------

def _split_files(directory, sizes=(40, 10, 12), names=("train", "dev", "test")):
    """Split files of RECORDS in ``directory``: ``sizes`` records each, one of the test ones sharing
    its prompt with a training record (a reported overlap)."""
    directory.mkdir(exist_ok=True)
    at = 0
    for name, n in zip(names, sizes):
        records = RECORDS[at: at + n]
        if name == "test":
            records = records + [dict(RECORDS[0], output="Something else.")]
        (directory / f"{name}.jsonl").write_text(jsonl(records), encoding="utf-8")
        at += n
    return directory


@pytest.mark.parametrize("shape", ["named files", "a directory", "a DatasetDict"])
def test_a_users_own_splits_are_used_as_given(shape, tmp_path):
    d = _split_files(tmp_path / "splits")
    if shape == "named files":
        name = f"file:{d / 'train.jsonl'},dev={d / 'dev.jsonl'},test={d / 'test.jsonl'}"
    elif shape == "a directory":
        name = f"file:{d}"
    else:  # validation: the dev split's name in many datasets
        rows = RECORDS[:62] + [dict(RECORDS[0], output="x")]
        name = f"file:{save_to_disk(rows, tmp_path / 'dd', {'train': (0, 40), 'validation': (40, 50), 'test': (50, 63)})}"
    task = resolve_task(name, None)
    splits = task.splits(dict(task.default_sizes))
    assert {s: len(v) for s, v in splits.items()} == {"train": 40, "dev": 10, "test": 13}  # as given: none re-split
    assert [e.input for e in splits["dev"]] == [r["input"] for r in RECORDS[40:50]]  # in the file's order
    assert task.overlap == ["1 of the 13 test examples have a prompt the train split has too"]


def test_named_split_files_on_the_command_line_run_a_cell(tmp_path):
    d = _split_files(tmp_path / "splits")
    out = tmp_path / "out"
    name = f"file:{d / 'train.jsonl'},dev={d / 'dev.jsonl'},test={d / 'test.jsonl'}"
    proc = leitai("run", "--tasks", name, "--methods", "lora", "--max-steps", "1", "--batch-size", "4", *CELLS_ONLY, "-q",
                  "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "leitai: warning: file:" in proc.stderr and "1 of the 13 test examples have a prompt the train split" in proc.stderr
    assert set(pd.read_csv(out / "results.csv").task) == {name}
    (record,) = [json.loads(p.read_text()) for p in out.glob("runs/*/record.json")]
    assert (record["metrics"]["train_examples"], record["metrics"]["dev_examples"], record["metrics"]["test_examples"]) \
        == (40, 10, 13)  # the files' record counts


@pytest.mark.parametrize("files, message", [
    ({"test": 12}, "no train split (given: test); a test split alone cannot train anything"),
    ({"train": 40, "test": 12}, "no dev split: give dev=PATH"),
    ({"train": 40, "dev": 10}, "no test split: give test=PATH"),
])
def test_incomplete_own_splits_are_refused_in_one_line(files, message, tmp_path):
    d = _split_files(tmp_path / "splits", tuple(files.values()), tuple(files))
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_task(f"file:{d}", None)
    proc = leitai("run", "--tasks", f"file:{d}", "--out", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_split_files_stay_with_their_task_in_a_list_of_tasks():
    from suite.config.sources import build_config

    config = build_config({"tasks": "file:a.jsonl,dev=b.jsonl,test=c.jsonl,zh-ner,file:d.jsonl"})
    assert config.tasks == ["file:a.jsonl,dev=b.jsonl,test=c.jsonl", "zh-ner", "file:d.jsonl"]
