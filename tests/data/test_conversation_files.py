"""Users' conversation files (``--tasks file:PATH``): ShareGPT, OpenAI messages, ChatGLM and BELLE
multi-turn, each as JSON Lines, a JSON array and a ``datasets`` directory, read to the same
conversations; mixed and malformed files stop with one line and exit status 2; a conversation
file and zh-dialogue run as cells, scored per turn, and the report shows the turns."""
import json

import pandas as pd
import pytest

from suite.data.user_files import resolve_task
from suite.errors import UsageError

#: 60 conversations of one to three turns
CONVERSATIONS = [
    [(f"第{i}个问题是什么？", f"这是第{i}个回答。"), (f"再说一遍第{i}个。", f"第{i}个：好的。"),
     (f"第{i}个的下一个是几？", str(i + 1))][: 1 + i % 3]
    for i in range(60)
]


def sharegpt(conv):
    return {"conversations": [m for q, a in conv for m in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]}


def openai(conv):
    return {"messages": [m for q, a in conv for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]}


def chatglm(conv):
    return {"prompt": conv[-1][0], "response": conv[-1][1], "history": [list(t) for t in conv[:-1]]}


def belle(conv):
    turns = "".join(f"Human: {q}\nAssistant: {a}\n" for q, a in conv[:-1])
    return {"instruction": f"{turns}Human: {conv[-1][0]}\nAssistant:", "input": "", "output": conv[-1][1]}


FORMATS = {"sharegpt": sharegpt, "openai": openai, "chatglm": chatglm, "belle": belle}


def jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import datasets

    datasets.disable_progress_bars()
    d = tmp_path_factory.mktemp("conversations")
    for name, to_record in FORMATS.items():
        records = [to_record(c) for c in CONVERSATIONS]
        (d / f"{name}.jsonl").write_text(jsonl(records), encoding="utf-8")
        (d / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
        datasets.Dataset.from_list(records).save_to_disk(str(d / f"{name}_dataset"))
    return d


def conversations_of(name: str) -> dict:
    task = resolve_task(name, None)
    return {s: [(e.id, e.system, e.turns) for e in v] for s, v in task.splits().items()}


def test_every_format_and_container_reads_to_the_same_conversations(files):
    reference = conversations_of(f"file:{files / 'sharegpt.jsonl'}")
    assert sum(len(v) for v in reference.values()) == len(CONVERSATIONS) and all(reference.values())
    turns = sorted(len(t) for v in reference.values() for _, _, t in v)
    assert turns == sorted(len(c) for c in CONVERSATIONS)
    for name in FORMATS:
        for suffix in (".jsonl", ".json", "_dataset"):
            assert conversations_of(f"file:{files / (name + suffix)}") == reference, name + suffix
    assert "ChatGLM" in resolve_task(f"file:{files / 'chatglm.json'}", None).description


def test_system_messages_and_content_parts(tmp_path):
    from suite.data.user_formats import to_example

    ex = to_example("f", "line 1", {"system": "你是助手。", **sharegpt(CONVERSATIONS[2])})
    assert ex.system == "你是助手。" and len(ex.turns) == 3
    msgs = openai(CONVERSATIONS[1])["messages"]
    msgs[1]["content"] = [{"type": "text", "text": "这是第1个"}, {"type": "text", "text": "回答。"}]
    ex = to_example("f", "line 1", {"messages": [{"role": "system", "content": "简短回答。"}] + msgs})
    assert ex.system == "简短回答。" and ex.turns[0].output == "这是第1个回答。"
    # BELLE's input belongs to the last human turn; a single-turn BELLE record stays Alpaca
    ex = to_example("f", "line 1", {**belle(CONVERSATIONS[1]), "input": "补充"})
    assert ex.turns[-1].instruction == "再说一遍第1个。\n补充"
    assert not to_example("f", "line 1", {"instruction": "说你好", "output": "你好"}).is_conversation


GOOD = jsonl(sharegpt(c) for c in CONVERSATIONS[:5]).splitlines()
TURN = {"from": "human", "value": "你好"}
BAD = {
    "mixed formats": ("\n".join(GOOD[:2] + [json.dumps(openai(CONVERSATIONS[2]))] + GOOD[3:]),
                      "bad.jsonl: line 3: the record is OpenAI messages (messages), the first one (line 1) "
                      "ShareGPT (conversations); a file holds records of one format"),
    "mixed single-turn formats": ('{"instruction": "a", "output": "b"}\n{"context": "Instruction: a\\nAnswer: ", "target": "b"}\n',
                                  "bad.jsonl: line 2: the record is ChatGLM-tuning (context, target), the first one "
                                  "(line 1) Alpaca/BELLE"),
    "two user turns": (json.dumps({"conversations": [TURN, TURN]}),
                       "bad.jsonl: line 1: field 'conversations', turn 2: role out of order: 'human' follows 'human'"),
    "starts with the assistant": (json.dumps({"messages": [{"role": "assistant", "content": "你好"}]}),
                                  "bad.jsonl: line 1: field 'messages', turn 1: role out of order: a conversation starts "
                                  "with a user turn, not 'assistant'"),
    "late system message": ("\n".join(GOOD[:1] + [json.dumps({"conversations": [TURN, {"from": "system", "value": "x"}]})]),
                            "bad.jsonl: line 2: field 'conversations', turn 2: role out of order: a system message"),
    "empty turn": (json.dumps({"conversations": [TURN, {"from": "gpt", "value": " "}]}),
                   "bad.jsonl: line 1: field 'conversations', turn 2: empty turn ('gpt' says nothing)"),
    "ends on a user turn": (json.dumps({"conversations": [TURN, {"from": "gpt", "value": "嗯"}, TURN]}),
                            "bad.jsonl: line 1: field 'conversations', turn 3: the conversation ends on a user turn"),
    "unknown role": (json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]}),
                     "bad.jsonl: line 1: field 'messages', turn 2: unknown role 'tool' in 'role' (known: user, assistant, system)"),
    "turn not an object": (json.dumps({"conversations": ["你好"]}),
                           "bad.jsonl: line 1: field 'conversations', turn 1: a turn must be an object with 'from' and 'value'"),
    "history pair": (json.dumps({"prompt": "a", "response": "b", "history": [["q", "a"], ["q"]]}),
                     "bad.jsonl: line 1: field 'history', turn 2: a turn must be a [question, answer] pair"),
    "empty history answer": (json.dumps({"prompt": "a", "response": "b", "history": [["q", ""]]}),
                             "bad.jsonl: line 1: field 'history', turn 1: empty turn (the answer is empty)"),
    "empty response": (json.dumps({"prompt": "a", "response": "", "history": []}),
                       "bad.jsonl: line 1: field 'response' is empty (the conversation ends on a user turn)"),
    "BELLE ending on the assistant": (json.dumps({"instruction": "Human: 你好\nAssistant: 你好！", "output": "再见"}),
                                      "bad.jsonl: line 1: field 'instruction', turn 2: the instruction ends on an assistant turn"),
    "BELLE empty human turn": (json.dumps({"instruction": "Human: \nAssistant: 你好！\nHuman: 再见\nAssistant:", "output": "再见"}),
                               "bad.jsonl: line 1: field 'instruction', turn 1: empty turn ('Human:' says nothing)"),
    "messages not a list": (json.dumps({"messages": "你好"}),
                            "bad.jsonl: line 1: field 'messages' must be an array of turns, not a string"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_conversations_are_one_line_with_exit_status_2(case, tmp_path, capsys):
    from suite.cli.app import main

    content, message = BAD[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["run", "--tasks", f"file:{path}", "--methods", "lora", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"leitai: error: {tmp_path}/{message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_loss_turns_is_a_checked_fair_setting():
    from suite.config.settings import FAIR_SETTINGS
    from suite.config.sources import build_config

    assert "loss_turns" in FAIR_SETTINGS
    assert build_config({"loss_turns": "last"}).loss_turns == "last"
    with pytest.raises(UsageError, match="--loss-turns takes all or last, not 'first'"):
        build_config({"loss_turns": "first"})


@pytest.fixture(scope="module")
def cells(files, tmp_path_factory):
    """One cell on a ShareGPT file (loss on the last turn only) and one on zh-dialogue, run in
    this process, and the report of both."""
    from suite.atomic import write_json_atomic
    from suite.cell.records import run_dir
    from suite.cell.run import run_cell
    from suite.config.sources import build_config
    from suite.plugins import registry
    from suite.report import write_report
    from suite.shootout.runner import cells_of

    out = tmp_path_factory.mktemp("cells")
    records = {}
    for task, extra in ((f"file:{files / 'sharegpt.jsonl'}", {"loss_turns": "last", "task_size": "full"}),
                        ("zh-dialogue", {"task_size": "16"})):
        config = build_config({"tasks": task, "methods": "lora", "max_steps": 2, "batch_size": 4, "max_len": 256,
                               "side_corpus": "none", "infer_prompts": 0, "out": str(out), **extra})
        (cell,) = cells_of(config.fill_defaults(registry()), registry())
        record = run_cell(cell, run_dir(out, cell.run_id))
        write_json_atomic(run_dir(out, cell.run_id) / "record.json", record)
        records[task.partition(":")[0]] = record
    write_report([out], out)
    return records, out


def test_conversations_run_as_cells_and_are_scored_per_turn(cells):
    records, _ = cells
    for name, turns in (("file", 3), ("zh-dialogue", 3)):
        record = records[name]
        assert record["status"] == "ok", record.get("traceback")
        m = record["metrics"]
        assert [k for k in sorted(m) if k.startswith("score_turn")] == [f"score_turn{t}" for t in range(1, turns + 1)]
        assert all(0 <= m[f"score_turn{t}"] <= 1 for t in range(1, turns + 1)) and 0 <= m["score"] <= 1
        gens = record["generations"]
        assert len(gens) == m["test_examples"] and {g["turn"] for g in gens} == set(range(1, turns + 1))
        for g in gens:  # each turn is prompted with the reference answers before it
            assert g["prompt"].count("Assistant: ") == g["turn"] and g["prompt"].endswith("Assistant: ")
    assert records["file"]["config"]["loss_turns"] == "last" and records["zh-dialogue"]["config"]["loss_turns"] == "all"
    dialogue = records["zh-dialogue"]
    by_turn = {}
    for g in dialogue["generations"]:
        by_turn.setdefault(g["example_id"], {})[g["turn"]] = g
    first = next(iter(by_turn.values()))
    assert first[1]["reference"] in first[2]["prompt"] and first[2]["reference"] in first[3]["prompt"]


def test_the_report_shows_the_score_of_each_turn(cells):
    _, out = cells
    gens = pd.read_csv(out / "generations.csv")
    assert list(gens.columns[:3]) == ["run_id", "example_id", "turn"] and set(gens.turn) == {1, 2, 3}
    summary = (out / "summary.md").read_text(encoding="utf-8")
    html = (out / "report.html").read_text(encoding="utf-8")
    for text in (summary, html):
        assert text.count("Score by turn") == 2 and "turn 3" in text and "all turns" in text
    assert "score_turn1" not in summary  # in its own table, not among the further measurements
