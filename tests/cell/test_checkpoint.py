"""Checkpoints inside a cell (--checkpoint-every) and --resume from them: a cell killed with kill -9
after step 35 of 60 goes on from its checkpoint at step 30 and ends where the uninterrupted cell
ends, to the bit: every step's loss, the saved parameters, the scores. On three methods (LoRA;
AdaLoRA, whose rank budget is state of its own; LST, whose ladder statistics are buffers set at
its first step) and on a sharded cell. tests/crash_at.py is the plugin that kills the cell."""
import json
import os
from pathlib import Path

import pytest
from conftest import CELLS_ONLY, ROOT, leitai

from suite.cell import checkpoint
from suite.config.settings import parse_checkpoint_every
from suite.errors import UsageError

RUN = ["--max-steps", "60", "--batch-size", "4", "--task-size", "32", "--checkpoint-every", "10", *CELLS_ONLY, "-q"]
#: the plugin that kills a cell's main process (SIGKILL) as training reaches step CRASH_AT, once per run
CRASHING = {"LEITAI_PLUGINS": "crash_at", "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT / "tests"),
                                                                                        os.environ.get("PYTHONPATH"))))}


def _records(out: Path) -> dict:
    return {r["method"]: r for r in (json.loads(p.read_text()) for p in out.glob("runs/*/record.json"))}


def _train_losses(record: dict) -> list[float]:
    return [c["loss"] for c in record["curve"] if c["split"] == "train"]


def _files(run: Path) -> dict:
    """What the run saved: its tensors byte for byte, its JSON files read (peft writes the target
    modules, a set, in the process's hash order)."""
    return {p.relative_to(run): _sorted(json.loads(p.read_text())) if p.suffix == ".json" else p.read_bytes()
            for p in sorted((run / "adapter").rglob("*")) if p.is_file()}


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(v) for k, v in value.items()}
    return sorted(value, key=str) if isinstance(value, list) else value


def _killed_and_resumed(out: Path, args: list, step: int | None = 30) -> tuple[dict, dict]:
    """The records of a shootout whose cells are killed after step 35 and then resumed, and of it
    uninterrupted; asserts what the run directories hold on the way (``step``: the checkpoint left,
    None: one, whichever)."""
    crash = {**CRASHING, "CRASH_AT": "36"}
    killed = leitai("run", *args, "--out", out / "killed", env=crash)
    assert killed.returncode == 0, killed.stderr[-2000:]
    first = _records(out / "killed")
    for record in first.values():  # killed from outside (a sharded cell's other rank: its peer gone), the last
        assert record["status"] == "failed", record.get("error")  # checkpoint kept
        left = [p.name for p in (out / "killed" / "runs" / record["run_id"]).glob(checkpoint.PREFIX + "*")]
        assert left == [f"checkpoint-{step}"] if step else len(left) == 1, left  # older ones removed
    resumed = leitai("run", *args, "--out", out / "killed", "--resume", env=crash)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stderr.count("did not finish; it goes on from its checkpoint after step") == len(first), \
        resumed.stderr
    whole = leitai("run", *args, "--out", out / "whole", env=CRASHING)  # the plugin loaded, CRASH_AT unset
    assert whole.returncode == 0, whole.stderr[-2000:]
    return _records(out / "killed"), _records(out / "whole")


def _assert_same_run(out: Path, resumed: dict, whole: dict) -> None:
    assert set(resumed) == set(whole)
    for name, record in resumed.items():
        other = whole[name]
        assert record["status"] == other["status"] == "ok", (name, record.get("error"), other.get("error"))
        m, w = record["metrics"], other["metrics"]
        assert m["resumed_from_step"] == 30 and "resumed_from_step" not in w
        assert _train_losses(record) == _train_losses(other) and len(_train_losses(record)) == 60, name
        for key in ("score", "eval_loss", "final_train_loss", "train_tokens", "forgetting"):
            assert m.get(key) == w.get(key), (name, key)
        assert 0 < m["train_seconds"] and m["checkpoint_seconds"] >= 0
        runs = [out / "killed" / "runs" / record["run_id"], out / "whole" / "runs" / other["run_id"]]
        assert _files(runs[0]) == _files(runs[1]), name  # the trained parameters, byte for byte
        assert checkpoint.last_step(runs[0]) is checkpoint.last_step(runs[1]) is None  # finished: none left


def test_a_killed_cell_resumes_to_the_uninterrupted_run(tmp_path):
    """LoRA (dropout: the random states matter), AdaLoRA (its budget is allocated between steps 6
    and 42 of 60: the importance scores and rank pattern at step 30 are its own state) and LST (its
    ladder statistics, buffers calibrated on the first batch)."""
    resumed, whole = _killed_and_resumed(tmp_path, ["--methods", "lora,adalora,lst", *RUN])
    _assert_same_run(tmp_path, resumed, whole)


def test_a_killed_sharded_cell_resumes_to_the_uninterrupted_run(tmp_path):
    """Sharded over two processes (FSDP2 over gloo), each process writes its shards of what trains
    and of the optimiser's state (torch's distributed checkpoint) and reads them back: LoRA on a
    sharded frozen base, which the checkpoint leaves out (reading it back strictly failed), and
    AdaLoRA, whose trained matrices every process keeps whole (Method.shards_trained). Killing the
    first process ends the second (torchrun)."""
    resumed, whole = _killed_and_resumed(tmp_path, ["--methods", "lora,adalora", "--gpus-per-cell", "2",
                                                    "--shard", "fsdp", *RUN])
    _assert_same_run(tmp_path, resumed, whole)
    assert all(record["metrics"]["processes"] == 2 for record in resumed.values())


def test_a_checkpoint_of_other_settings_is_not_used(tmp_path):
    """A checkpoint written under another learning rate: the cell starts over, saying why."""
    args = ["--methods", "lora", *RUN, "--max-steps", "20"]
    out = tmp_path / "o"
    killed = leitai("run", *args, "--out", out, env={**CRASHING, "CRASH_AT": "16"})
    assert killed.returncode == 0, killed.stderr[-2000:]
    (written,) = out.glob("runs/*/checkpoint-10/cell.json")
    identity = json.loads(written.read_text())
    written.write_text(json.dumps({**identity, "params": {**identity["params"], "lr": 1.0}}))
    resumed = leitai("run", *args, "--out", out, "--resume", env=CRASHING)
    assert ("zh-sentiment__lora__s0: did not finish; its checkpoint (checkpoint-10) was written with other settings "
            "(params): it starts over") in resumed.stderr
    record = _records(out)["lora"]
    assert record["status"] == "ok" and "resumed_from_step" not in record["metrics"]
    assert len(_train_losses(record)) == 20


def test_checkpoints_by_time_with_the_dev_curve(tmp_path):
    """--checkpoint-every 0.2s: written at a step whose losses were read back (--log-every 5), at
    least 0.2 s after the last; the resumed run is the uninterrupted one, its dev curve
    (--eval-every 10) and the parameters --keep best restores included."""
    args = ["--methods", "lora", *RUN, "--max-steps", "40", "--checkpoint-every", "0.2s", "--log-every", "5",
            "--eval-every", "10", "--keep", "best"]
    resumed, whole = _killed_and_resumed(tmp_path, args, step=None)
    step = resumed["lora"]["metrics"]["resumed_from_step"]
    assert step % 5 == 0 and 0 < step < 36, step
    assert _train_losses(resumed["lora"]) == _train_losses(whole["lora"])
    dev = [[(c["step"], c["loss"], c["score"]) for c in r["curve"] if c["split"] == "dev"]
           for r in (resumed["lora"], whole["lora"])]
    assert dev[0] == dev[1] and [s for s, _, _ in dev[0]] == [10, 20, 30, 40]
    for key in ("kept_step", "best_dev_step", "score"):
        assert resumed["lora"]["metrics"][key] == whole["lora"]["metrics"][key], key
    assert _files(tmp_path / "killed" / "runs" / resumed["lora"]["run_id"]) == \
        _files(tmp_path / "whole" / "runs" / whole["lora"]["run_id"])


@pytest.mark.parametrize("text, parsed", [("50", (50, 0.0)), ("30m", (0, 1800.0)), ("0.5s", (0, 0.5)),
                                          ("none", (0, 0.0)), ("0", (0, 0.0))])
def test_checkpoint_every_is_steps_or_a_duration(text, parsed):
    assert parse_checkpoint_every(text) == parsed


def test_a_bad_checkpoint_every_is_refused_in_one_line(tmp_path):
    with pytest.raises(UsageError, match="--checkpoint-every: cannot read 'often'"):
        parse_checkpoint_every("often")
    proc = leitai("run", "--checkpoint-every", "often", "--out", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--checkpoint-every: cannot read 'often' as a duration" in proc.stderr
