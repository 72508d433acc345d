"""The public API is defined once (suite.api): the built-in plugins import nothing else from the
core, the old import paths still work, and every path and name the docs give exists."""
import ast
import importlib
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from suite import api


def _core_imports(path):
    """``(module, name or None)`` for each import of the core in ``path`` (None: the module itself)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "suite":
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "suite":
                    yield alias.name, None


def test_built_in_plugins_import_only_the_public_api():
    private = sorted(f"{path.relative_to(ROOT)}: {module}{'.' + name if name else ''}"
                     for path in (ROOT / "plugins").rglob("*.py") for module, name in _core_imports(path)
                     if not api.public(module, name))
    assert private == [], "import it from suite.api's HELPERS, or add it there (and to the docs)"


def test_the_public_check_knows_a_private_name():
    assert api.public("suite", "Method") and api.public("suite.data.tasks", "normalise")
    assert api.public("suite.models", "architecture")  # a listed module, from its package
    assert not api.public("suite.cell.run", "main") and not api.public("suite", "quiet")


# What plugins and the docs imported before the regrouping, by their old paths.
OLD_IMPORTS = {
    "suite.tasks": ["assign_splits", "take", "take_short", "split_of", "stable_order", "normalise", "score_answers",
                    "Task", "Example"],
    "suite.scoring": ["micro_f1", "exact_match", "char_accuracy", "bleu4_zh", "mean_rouge_l", "SCORERS"],
    "suite.methods": ["Method", "PeftMethod", "peft_default", "method_params", "tuning_grid", "sweep_bounds"],
    "suite.models": ["ModelSpec", "resolve", "load_base"],
    "suite.architecture": ["find", "ArchitectureError", "Architecture", "linear_modules"],
    "suite.layout": ["probe", "Layout", "layer_weights"],
    "suite.measure": ["count_parameters", "PeakMemory"],
    "suite.precision": ["cast_weights"],
    "suite.chat": ["PLAIN_TEMPLATE"],
    "suite.cache": ["load_json", "store_json"],
    "suite.executors": ["Executor", "run_cell_process", "thread_env", "cpu_count", "RUNNING", "launch_child"],
    "suite.records": ["run_dir", "failed_record", "write_json_atomic", "read_json"],
    "suite.cellspec": ["Cell"],
    "suite.warm": ["WarmServer", "PRELOAD", "fork_probe"],
    "suite.train": ["train", "TrainSettings", "AnswerHead", "mean_loss", "enable_gradient_checkpointing"],
    "suite.forgetting": ["SideCorpus", "Forgetting"],
    "suite.data": ["collate", "Encoded", "IGNORE", "encode"],
    "suite.config": ["build_config", "parse_set"],
    "suite.settings": ["ShootoutConfig", "RunSettings"],
    "suite.cli": ["main"],
    "suite.planner": ["predict", "SavedTensors"],
    "suite.plancmd": ["cmd_plan", "check_budget"],
    "suite.docgen": ["main"],
    "suite.testing": ["check_method", "tiny_model", "ARCHITECTURES"],
    "plugins.lora": ["LoRA"],
    "plugins.targets": ["LinearTuner", "SWEPT"],
    "plugins.tiny_zh": ["TinyZh"],
    "plugins.corpora": ["read_lines"],
    "plugins.lst.config": ["SideShape"],
}


@pytest.mark.parametrize("old", sorted(OLD_IMPORTS))
def test_an_old_import_path_still_works(old):
    module = importlib.import_module(old)
    for name in OLD_IMPORTS[old]:
        assert hasattr(module, name), f"{old}.{name}"
    new = api.MOVED.get(old)
    if new and new not in api.SPLIT and old not in api.PACKAGES:
        assert module is importlib.import_module(new)  # the same module, not a copy


def test_every_moved_path_imports():
    for old, new in api.MOVED.items():
        importlib.import_module(new)
        importlib.import_module(old)


def test_a_plugin_written_against_the_old_paths_runs(tmp_path):
    """A third-party method and task written against the paths before the regrouping: loaded in a
    fresh process, registered, conformant, and its task's examples split."""
    (tmp_path / "old_style.py").write_text(
        "from suite import hookimpl\n"
        "from suite.methods import PeftMethod\n"
        "from suite.tasks import Example, Task, assign_splits\n"
        "from suite.scoring import exact_match\n"
        "from plugins.targets import LinearTuner\n"
        "from plugins.lora import LoRA\n"
        "class OldLoRA(LoRA):\n"
        "    name = 'old-lora'\n"
        "class OldTask(Task):\n"
        "    name = 'old-task'\n"
        "    def examples(self):\n"
        "        return [Example(str(i), 'q', str(i), str(i % 2)) for i in range(40)]\n"
        "    def score(self, predictions, references):\n"
        "        return {'score': exact_match(predictions, references)}\n"
        "@hookimpl\n"
        "def register_methods(register):\n"
        "    assert issubclass(OldLoRA, PeftMethod) and issubclass(LinearTuner, PeftMethod)\n"
        "    register(OldLoRA())\n"
        "@hookimpl\n"
        "def register_tasks(register):\n"
        "    register(OldTask())\n"
    )
    script = ("import old_style\n"
              "from suite.plugins import load_registry\n"
              "from suite.testing import check_method\n"
              "reg = load_registry(extra=[old_style])\n"
              "assert not reg.plugins['old_style'].error, reg.plugins['old_style'].error\n"
              "check_method(reg.methods['old-lora'], architectures=('llama',))\n"
              "print(len(reg.tasks['old-task'].examples()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "40"


# -- every path and name the docs give ---------------------------------------------------------

DOCS = sorted([*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"])
FILE = re.compile(r"(?<![\w./-])((?:suite|plugins|tests|benchmarks|examples)/[\w./*<>-]*[\w/*>])")
DOTTED = re.compile(r"(?<![\w./-])((?:suite|plugins)(?:\.[A-Za-z_]\w*)+)")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for path in set(FILE.findall(text)):
            if "<" in path or "*" in path or "NAME" in path:  # a pattern, not a path
                continue
            if not (ROOT / path).exists() and not (doc.parent / path).exists():  # from the root, or a link
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
        for dotted in set(DOTTED.findall(text)):
            if not _resolves(dotted):
                missing.append(f"{doc.relative_to(ROOT)}: {dotted}")
    assert sorted(missing) == []


def test_suite_exports_the_core_from_where_it_is_defined():
    import suite

    assert [n for n in suite.__all__ if n != "__version__"] == list(api.CORE)
    for name, module in api.CORE.items():
        assert getattr(suite, name) is getattr(importlib.import_module(module), name)
