"""Faults and bad input: one line, exit status 2, and nothing that finished is lost.

One test per fault of issue 20 (an output path that is a file or cannot be created, a missing
model, bad settings, a damaged record, two runs on one directory) and per fault that already
worked (kill -9 of the driver or of one cell, Ctrl-C, a diverging method). Each asserts the exit
status, the one-line message and that no finished record changed. The shootouts are tiny and
shared: ``finished`` runs two cells once; the others copy it and add a cell.
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import CELLS_ONLY, MISBEHAVING, ROOT, leitai, start

from suite.cell.records import DamagedRecord, load_record, set_aside
from suite.cli.app import main

SMALL = ["--max-steps", "6", "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "-q"]
#: the shared shootout: full fine-tuning, and a LoRA whose lr (1e4) blows its loss up without a NaN
#: (a non-finite loss is tests/shootout/test_runner.py's ``nanner``)
BASE = ["--methods", "full,lora", "--set", "lora.lr=1e4", *SMALL]


def one_line(proc, message: str) -> str:
    """The single stderr line of ``proc``, checked to hold ``message`` and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-3000:]
    return lines[0]


def records(out: Path) -> dict:
    """Every record file's bytes, by run id."""
    return {p.parent.name: p.read_bytes() for p in sorted(Path(out).glob("runs/*/record.json"))}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished shootout (full ok, lora diverged: its loss blew up) and its records' bytes."""
    out = tmp_path_factory.mktemp("faults") / "finished"
    proc = leitai("run", *BASE, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, records(out)


@pytest.fixture
def unruly(tmp_path):
    """The environment of tests/misbehaving.py's ``hangs`` method; it writes its pid to ``markers``."""
    markers = tmp_path / "markers"
    markers.mkdir()
    return {**MISBEHAVING, "UNRULY_DIR": str(markers)}, markers


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Wait until ``path`` exists (while ``proc`` runs); return the number it holds."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.5)
    return int(path.read_text())


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


# -- faults that stop the shootout before anything runs ------------------------------------------

def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("precious")
    proc = leitai("run", "--out", tmp_path / "file", *SMALL)
    assert proc.returncode == 2
    one_line(proc, f"leitai: error: --out {tmp_path / 'file'}: exists and is not a directory; choose another --out")
    assert (tmp_path / "file").read_text() == "precious"


@pytest.mark.parametrize("where, message", [
    ("/proc/leitai-out", "cannot create the directory (No such file or directory)"),
    ("file/sub", "cannot create the directory (Not a directory)"),
    ("ro", "the directory is not writable"),
])
def test_output_path_that_cannot_be_created_or_written(where, message, tmp_path, capsys):
    """The same check in process (the command line's own ``main``), for the other kinds of path."""
    (tmp_path / "file").write_text("precious")
    if where == "ro":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        (tmp_path / "ro").mkdir(mode=0o500)
    out = where if where.startswith("/") else tmp_path / where
    assert main(["run", "--methods", "full", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"leitai: error: --out {out}: {message}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["file"] + (["ro"] if where == "ro" else []))


def test_missing_model_is_one_line_before_anything_runs(tmp_path):
    proc = leitai("run", "--model", "/nonexistent/path", "--out", tmp_path / "o", *SMALL)
    assert proc.returncode == 2
    one_line(proc, "leitai: error: --model /nonexistent/path: no such directory, and not a Hugging Face model id")
    assert not (tmp_path / "o").exists()


def test_model_that_is_not_there_offline(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for model, message in [
        (tmp_path / "empty", "the directory has no config.json (not a model directory)"),
        ("someone/no-such-model", "no such directory, and no local copy of the hub model while HF_HUB_OFFLINE is set (download it first: "
         "hf download someone/no-such-model)"),
    ]:
        assert main(["run", "--model", str(model), "--out", str(tmp_path / "o"), *SMALL]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"leitai: error: --model {model}: {message}" in err, err
    assert not (tmp_path / "o").exists()


def test_model_directory_and_hub_cache_are_read_without_download(tmp_path, monkeypatch, registry):
    """A local model directory gives its config; a hub id is read from the local cache
    (offline), and a cached copy without weights is refused."""
    from huggingface_hub import constants

    from suite.models.loading import model_config

    tiny = ROOT / "plugins" / "models" / "tiny_zh"
    assert model_config(str(tiny), registry).hidden_size == 256
    snapshot = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    shutil.copy(tiny / "config.json", snapshot / "config.json")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"--model someone/tiny: the cached copy .* holds no weights"):
        model_config("someone/tiny", registry)
    (snapshot / "model.safetensors").symlink_to(tiny / "model.safetensors")
    assert model_config("someone/tiny", registry).hidden_size == 256
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert model_config("someone/not-cached", registry) is None  # online: the cells download it


def test_bad_setting_is_one_line_before_anything_runs(tmp_path):
    proc = leitai("run", "--methods", "lora", "--set", "lora.r=-1", "--out", tmp_path / "o", *SMALL)
    assert proc.returncode == 2
    one_line(proc, "leitai: error: lora.r=-1: `r` should be a positive integer value")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("setting, message", [
    ("lora.lr=nan", "lora.lr=nan: the learning rate must be a finite positive number"),
    ("full.lr=0", "full.lr=0: the learning rate must be a finite positive number"),
    ("lora.lr='fast'", "lora.lr='fast': the learning rate must be"),
    ("lora.targets='nope'", "lora.targets='nope': Target modules {'nope'} not found"),
    ("lora.dropout=2", "lora.dropout=2: dropout probability has to be between 0 and 1"),
    ("prefix-tuning.projection_hidden=-5", "prefix-tuning.projection_hidden=-5: RuntimeError"),
    ("p-tuning.encoder='GRU'", "p-tuning.encoder='GRU': Prompt encoder type not recognized"),
    ("lst.reduction=0", "lst.reduction=0: reduction must be an integer from 1 to the model width 256"),
    ("lst.keep_every=99", "lst.keep_every=99: keep_every must be an integer from 1 to the layer count"),
])
def test_every_method_checks_its_settings(setting, message, tmp_path, capsys):
    """The same check in process (the command line's own ``main``), for each kind of setting."""
    code = main(["run", "--methods", setting.split(".")[0], "--set", setting, "--out", str(tmp_path / "o"), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"leitai: error: {message}" in err, err
    assert not (tmp_path / "o").exists()


def test_settings_check_names_the_override_to_blame(registry):
    from suite.methods.method import check_params, method_params
    from suite.models.loading import model_config, stand_in

    lora = registry.get("methods", "lora")
    config = model_config("tiny-zh", registry)
    overrides = {"alpha": 16, "r": 0, "dropout": 0.0}
    with pytest.raises(ValueError, match=r"^lora\.r=0: `r` should be a positive integer"):
        check_params(lora, method_params(lora, overrides), overrides, lambda: stand_in(config))
    check_params(lora, method_params(lora, {"r": 2}), {"r": 2}, lambda: stand_in(config))  # fine


# -- damaged records --------------------------------------------------------------------------

def test_damaged_record_is_set_aside_and_its_cell_runs_again(finished, tmp_path):
    src, before = finished
    out = copy(src, tmp_path / "out")
    damaged = out / "runs" / "zh-sentiment__full__s0" / "record.json"
    cut = before["zh-sentiment__full__s0"][:200]
    damaged.write_bytes(cut)
    report = leitai("report", out)
    assert report.returncode == 2
    one_line(report, f"leitai: error: {damaged}: not a readable record (")
    again = leitai("run", *BASE, "--out", out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    one_line(again, f"leitai: warning: {damaged}: not a readable record (")
    assert "moved to record.json.corrupt, its cell runs again" in again.stderr
    assert "1 runs (1 ok), 1 already done" in again.stdout
    assert (damaged.parent / "record.json.corrupt").read_bytes() == cut
    assert load_record(damaged)["status"] == "ok"
    assert records(out)["zh-sentiment__lora__s0"] == before["zh-sentiment__lora__s0"]
    assert len(pd.read_csv(out / "results.csv")) == 2


def test_report_write_that_fails_part_way_leaves_no_half_file(finished, tmp_path, monkeypatch, capsys):
    """A full disk while results.parquet is being written: the previous file stays whole, no
    temporary file is left, and the error line names the file and the remedy."""
    import errno

    src, _ = finished
    out = copy(src, tmp_path / "out")
    before = (out / "results.parquet").read_bytes()

    def half_then_full(self, path, **kwargs):
        Path(path).write_bytes(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_then_full)
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"leitai: error: {out / 'results.parquet'}: No space left on device; free some space, "
                   f"then write the report again with: leitai report {out}\n")
    assert (out / "results.parquet").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_reading_records_is_checked_in_one_place(tmp_path):
    path = tmp_path / "record.json"
    for text, reason in [('{"run_id": "a", "sta', "Unterminated string"), ("[1]", "a JSON list, not an object"),
                         ('{"status": "ok"}', "no run_id")]:
        path.write_text(text)
        with pytest.raises(DamagedRecord, match=reason) as e:
            load_record(path)
        assert str(e.value).startswith(f"{path}: not a readable record") and e.value.path == path
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DamagedRecord, match="codec can't decode"):
        load_record(path)
    assert set_aside(path).name == "record.json.corrupt"
    path.write_text("{")
    assert set_aside(path).name == "record.json.corrupt.1"  # the earlier one is kept
    assert (tmp_path / "record.json.corrupt").read_bytes() == b"\xff\xfe"
    assert load_record(tmp_path / "none.json") is None


# -- two runs at once, Ctrl-C, kill -9 of the driver, and resume after each -------------------

@pytest.fixture(scope="module")
def interrupted(finished, tmp_path_factory):
    """A resumed shootout with a new, long cell: a second run is started on the same directory
    while it runs; it is stopped by Ctrl-C; started again and stopped with SIGTERM (the driver
    only); started again and killed with SIGKILL (the driver only); and resumed. What each step left is recorded for the tests."""
    src, before = finished
    base = tmp_path_factory.mktemp("interrupted")
    out, markers = copy(src, base / "out"), base / "markers"
    markers.mkdir()
    (out / "results.csv").unlink()  # so that the report after Ctrl-C is seen to be written
    env = {**MISBEHAVING, "UNRULY_DIR": str(markers)}
    args = ["run", "--resume", *BASE, "--methods", "full,lora,hangs", "--out", out]
    pid = markers / "hangs.pid"
    steps = {"before": before}

    first = start(*args, env=env)
    steps["ctrl_c_cell"] = wait_for(pid, first)
    steps["second"] = leitai(*args, env=env)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    _, steps["ctrl_c_stderr"] = first.communicate(timeout=600)  # a loaded machine stops slowly
    steps["ctrl_c"], steps["ctrl_c_pid"] = first.returncode, first.pid
    steps["ctrl_c_records"] = records(out)
    steps["ctrl_c_reported"] = set(pd.read_csv(out / "results.csv").method)

    pid.unlink()  # SIGTERM, as a batch scheduler stops a job, to the driver alone: a stop like Ctrl-C
    (out / "results.csv").unlink()
    term = start(*args, env=env)
    steps["term_cell"] = wait_for(pid, term)
    term.send_signal(signal.SIGTERM)
    _, steps["term_stderr"] = term.communicate(timeout=600)
    steps["term"] = term.returncode
    steps["term_records"] = records(out)
    steps["term_reported"] = set(pd.read_csv(out / "results.csv").method)

    pid.unlink()
    again = start(*args, env=env)
    steps["killed_cell"] = wait_for(pid, again)
    again.kill()  # SIGKILL to the driver alone
    again.wait(timeout=60)
    steps["killed"] = again.returncode
    steps["orphan"] = not gone(steps["killed_cell"])
    steps["killed_records"] = records(out)
    steps["lock_left"] = (out / ".leitai.lock").exists()

    steps["resumed"] = leitai(*args, env={**env, "UNRULY_NO_HANG": "1"})
    steps["resumed_records"] = records(out)
    steps["holder_left"] = (out / ".leitai.lock.json").exists()
    return out, steps


def test_second_run_on_the_same_out_is_refused(interrupted):
    out, steps = interrupted
    proc = steps["second"]
    assert proc.returncode == 2
    line = one_line(proc, f"leitai: error: --out {out} is in use by another leitai run (pid {steps['ctrl_c_pid']} "
                    f"on {socket.gethostname()}, started ")
    assert line.endswith("; wait for it to finish or choose another --out")


def test_ctrl_c_keeps_and_reports_what_finished(interrupted):
    _, steps = interrupted
    assert steps["ctrl_c"] == 130
    assert steps["ctrl_c_stderr"] == "leitai: interrupted; finished runs are kept (rerun with --resume)\n"
    assert gone(steps["ctrl_c_cell"])
    assert steps["ctrl_c_records"] == steps["before"]  # the interrupted cell left no record
    assert steps["ctrl_c_reported"] == {"full", "lora"}


def test_sigterm_is_a_stop_like_ctrl_c(interrupted):
    _, steps = interrupted
    assert steps["term"] == 143
    assert steps["term_stderr"] == "leitai: interrupted; finished runs are kept (rerun with --resume)\n"
    assert gone(steps["term_cell"])  # the driver stopped its cell: none is left running
    assert steps["term_records"] == steps["before"]
    assert steps["term_reported"] == {"full", "lora"}


def test_killed_driver_leaves_no_orphan_and_no_lock(interrupted):
    _, steps = interrupted
    assert steps["killed"] == -signal.SIGKILL
    assert not steps["orphan"], "the cell outlived its driver"
    assert steps["killed_records"] == steps["before"]
    assert steps["lock_left"]  # the lock file stays; the kernel released the lock with the process


def test_resume_completes_after_interruptions(interrupted):
    _, steps = interrupted
    proc = steps["resumed"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "" and "1 runs (1 ok), 2 already done" in proc.stdout
    after = steps["resumed_records"]
    assert set(after) == set(steps["before"]) | {"zh-sentiment__hangs__s0"}
    assert {r: after[r] for r in steps["before"]} == steps["before"]
    assert not steps["holder_left"]  # who held the lock is cleared with the run


# -- kill -9 of one cell, a diverging method ----------------------------------------------------

def test_killed_cell_is_failed_with_a_reason_and_the_rest_finish(finished, tmp_path, unruly):
    src, before = finished
    env, markers = unruly
    out = copy(src, tmp_path / "out")
    driver = start("run", "--resume", *BASE, "--methods", "full,lora,hangs,prompt-tuning", "--out", out, env=env)
    os.kill(wait_for(markers / "hangs.pid", driver), signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr[-3000:]
    assert stderr == "" and "2 runs (1 failed, 1 ok), 2 already done" in stdout
    results = pd.read_csv(out / "results.csv").set_index("method")
    assert results.loc["hangs", "status"] == "failed"
    assert results.loc["hangs", "error"].startswith("cell process killed by SIGKILL (kill -9, or the kernel's out-of-memory")
    assert results.loc["prompt-tuning", "status"] == "ok"
    after = records(out)
    assert {r: after[r] for r in before} == before


def test_diverging_method_is_recorded_while_the_rest_finish(finished):
    """``--set lora.lr=1e4``: the loss blows up but stays finite. The run is ``diverged``, not
    ``ok``, with how far its loss rose; the verdict leaves it out of the means and says why."""
    out, _ = finished
    results = pd.read_csv(out / "results.csv").set_index("method")
    lora = results.loc["lora"]
    assert lora.status == "diverged" and results.loc["full", "status"] == "ok"
    assert lora.final_train_loss > 1.2 * lora.first_train_loss and lora.eval_loss > 1.2 * lora.base_eval_loss
    # six steps: too few for the training loss's test (DIVERGED_MIN_STEPS), the dev loss's names it
    assert lora.error == (f"dev loss {lora.eval_loss:.4g}, more than 20% above the untrained base model's "
                          f"{lora.base_eval_loss:.4g}")
    assert pd.isna(lora.score) and not (out / "runs" / lora.run_id / "adapter").exists()  # not scored
    assert results.loc["full", "base_eval_loss"] == lora.base_eval_loss  # the same untrained model, dev examples
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "zh-sentiment: full is best" in summary
    assert (f"Left out of the means, runs that did not finish ok: lora (diverged in 1 of 1 runs: {lora.error})."
            in summary)


# -- the other commands -----------------------------------------------------------------------

def test_other_commands_give_one_line_for_bad_input(finished, tmp_path, capsys):
    src, _ = finished
    (tmp_path / "file").write_text("x")
    cases = [
        (["report", str(tmp_path)], 2, "no runs/ directory (not a shootout output)"),
        (["report", str(src), "--out", str(tmp_path / "file")], 2, "exists and is not a directory"),
        (["report", str(src), "--out", "/proc/leitai-report"], 2, "cannot create the directory"),
        (["report", str(src), str(src)], 2, "merging several directories needs --out"),
        (["new-plugin", "Bad Name"], 2, "is not a method name"),
        (["new-plugin", "fine-name", "--dir", "/proc/leitai-plugin"], 2, "new-plugin: cannot create /proc/leitai-plugin"),
        (["new-plugin", "fine-name", "--dir", str(tmp_path / "file")], 2, "already exists and is not an empty directory"),
    ]
    for argv, code, message in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    with pytest.raises(SystemExit) as e:  # argparse's own usage error: two lines, no traceback
        main(["list", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
