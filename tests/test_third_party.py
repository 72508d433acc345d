"""Third-party method packages, as their authors would use them.

One shootout runs the guide's worked example (extracted from docs/plugins/examples.md and installed)
and three methods that cheat (tests/misbehaving.py): the core's guard fails the cheaters' cells and the rest finish.
The package ``leitai new-plugin`` writes is installed with pip, listed, and passes its own
generated test. Both packages are installed into target directories that only these tests'
subprocesses see (``PYTHONPATH``), never into the environment, so tests running beside these
ones (``pytest -n``) never see a method they did not install.
"""
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import MISBEHAVING, ROOT, leitai

SCAFFOLD = "kit-sample"  # the method `leitai new-plugin` writes in these tests

def pip(*args):
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def documented_files(markdown: str) -> dict[str, str]:
    """The code blocks of the guide that carry ``file=NAME`` in their info string."""
    return dict(re.findall(r"^```\w+ file=(\S+)\n(.*?)^```$", markdown, flags=re.S | re.M))


@pytest.fixture(scope="module")
def doc_example(tmp_path_factory):
    """The guide's worked example, written to a fresh directory and installed (into a target
    directory that only this module's subprocesses see)."""
    root = tmp_path_factory.mktemp("doc-example")
    files = documented_files((ROOT / "docs" / "plugins" / "examples.md").read_text(encoding="utf-8"))
    assert set(files) == {"pyproject.toml", "leitai_bottleneck.py", "test_leitai_bottleneck.py"}
    package = root / "leitai-bottleneck"
    package.mkdir()
    for name, text in files.items():
        (package / name).write_text(text, encoding="utf-8")
    pip("install", "-q", "--no-deps", "--no-build-isolation", "--target", str(root / "site"), str(package))
    return package, root / "site"


@pytest.fixture(scope="module")
def scaffold(tmp_path_factory):
    """`leitai new-plugin`'s package, installed by pip (into a target directory), and the
    environment of a process that sees it."""
    from suite.cli.app import main

    root = tmp_path_factory.mktemp("new-plugin")
    package = root / "pkg"
    assert main(["new-plugin", SCAFFOLD, "--dir", str(package)]) == 0
    pip("install", "-q", "--no-deps", "--no-build-isolation", "--target", str(root / "site"), str(package))
    return package, {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "site"), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def shootout(tmp_path_factory, doc_example):
    env = {**MISBEHAVING, "PYTHONPATH": f"{doc_example[1]}:{MISBEHAVING['PYTHONPATH']}"}
    out = tmp_path_factory.mktemp("shootout") / "out"
    proc = leitai("run", "--methods", "bottleneck,leaky,hollow,liar", "--out", out, "--max-steps", "3", "--batch-size", "4",
                  "--task-size", "16", "--side-corpus-size", "8", "--infer-prompts", "0", "--no-baselines", "--workers", "2", "-q", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, pd.read_csv(out / "results.csv").set_index("method")


def test_guide_worked_example_runs_in_a_shootout(shootout):
    out, results = shootout
    row = results.loc["bottleneck"]
    assert row.status == "ok", row.error
    # one adapter per layer: down (d x d/16, + bias) and up (d/16 x d, + bias)
    cfg = json.loads((ROOT / "plugins" / "models" / "tiny_zh" / "config.json").read_text())
    d, b = cfg["hidden_size"], cfg["hidden_size"] // 16
    assert row.trainable_params == cfg["num_hidden_layers"] * (d * b + b + b * d + d)
    assert (out / "runs" / row.run_id / "adapter" / "trainable.safetensors").exists()


def test_guide_worked_example_passes_the_kit(doc_example):
    """What its own test file runs (check_method), here on the installed module's method."""
    import importlib.util

    from suite.testing import check_method

    spec = importlib.util.spec_from_file_location("leitai_bottleneck", doc_example[1] / "leitai_bottleneck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert check_method(module.BottleneckAdapter()).ok


def test_guard_fails_cheating_methods_while_the_rest_finish(shootout):
    _, results = shootout
    assert results.loc["hollow", "error"] == "GuardError: method 'hollow' left no trainable parameters"
    assert re.fullmatch(
        r"GuardError: method 'leaky' declares the base frozen but left [\d,]+ base parameters "
        r"trainable \(e\.g\. model\.embed_tokens\.weight\)", results.loc["leaky", "error"])
    assert results.loc["liar", "error"].startswith(
        "GuardError: method 'liar' claims to start from the base model, but before training its logits "
        "differ from the base model's by up to ")
    assert set(results.index[results.status == "failed"]) == {"leaky", "hollow", "liar"}
    assert list(results.index[results.status == "ok"]) == ["bottleneck"]
    # the core counted before the guard failed the cell, and results.csv keeps the count
    total = results.loc["bottleneck", "total_params"]
    assert (results.loc[["leaky", "hollow", "liar"], "total_params"] == total).all()
    assert results.loc["leaky", "trainable_params"] == total and results.loc["leaky", "trainable_pct"] == 100.0
    assert results.loc["hollow", "trainable_params"] == 0 and results.loc["hollow", "trainable_pct"] == 0.0
    liar = results.loc["liar"]  # LoRA with B initialised away from zero: LoRA's trainable count
    assert 0 < liar.trainable_params < total and liar.trainable_pct == pytest.approx(100 * liar.trainable_params / total)


def test_new_plugin_package_is_listed_with_its_package(scaffold):
    # `leitai list methods` then `leitai list plugins`, in one fresh process
    _, env = scaffold
    listed = subprocess.run(
        [sys.executable, "-c", "from suite.cli.app import main; main(['list', 'methods']); main(['list', 'plugins'])"],
        capture_output=True, text=True, timeout=300, env=env,
    ).stdout
    assert re.search(rf"^{SCAFFOLD} .*\[leitai-{SCAFFOLD} 0\.1\.0\]$", listed, re.M), listed
    assert re.search(rf"^{SCAFFOLD} +leitai-{SCAFFOLD} 0\.1\.0 +methods: {SCAFFOLD}$", listed, re.M), listed


def test_new_plugin_package_passes_its_own_test(scaffold):
    package, env = scaffold
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package)],
                          capture_output=True, text=True, cwd=package, timeout=300, env=env)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("args, message", [
    (["Bad_Name"], "new-plugin: 'Bad_Name' is not a method name"),
    (["lora"], "new-plugin: a method called 'lora' is already installed (leitai "),
    (["fresh", "--dir", "{tmp}"], "already exists and is not an empty directory"),
])
def test_new_plugin_refuses_bad_input_in_one_line(args, message, tmp_path, capsys):
    from suite.cli.app import main

    (tmp_path / "something").write_text("")
    assert main(["new-plugin", *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leitai: error: ") and err.count("\n") == 1 and message in err
