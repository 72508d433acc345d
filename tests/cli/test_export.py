"""``leitai export`` (suite/cli/export.py): each exported directory loads as documented, in a fresh
process where leitai cannot be imported, and answers the run's first test prompt as the run did."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CELLS_ONLY, ROOT, leitai

METHODS = ("lora", "prompt-tuning", "lst", "full")

#: run first in the fresh process: leitai's packages cannot be imported there
NO_LEITAI = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("suite", "plugins"):
            raise ImportError(f"{name}: leitai is not importable here")
sys.meta_path.insert(0, Block())
try:
    import suite
except ImportError:
    pass
else:
    raise SystemExit("leitai was importable")
"""


@pytest.fixture(scope="module")
def shootout(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    proc = leitai("run", "--methods", ",".join(METHODS), "--max-steps", "5", "--task-size", "16", *CELLS_ONLY,
                  "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    return out


def _first_prompt(run: Path) -> tuple[list[int], str, int]:
    """The run's first test prompt as the arena tokenised it, the run's answer, the generation limit."""
    from suite.data.prepared import prepare
    from suite.data.user_files import resolve_task
    from suite.models.loading import prepare_tokenizer, resolve
    from suite.plugins import registry

    record = json.loads((run / "record.json").read_text(encoding="utf-8"))
    config, reg = record["config"], registry()
    _, tokenizer = resolve(config["model"], reg).load()
    prepared = prepare(resolve_task(record["task"], reg), config["task_sizes"], config["max_len"], prepare_tokenizer(tokenizer))
    return prepared.test_prompts[0], record["generations"][0]["output"], prepared.max_new_tokens


def _answer_without_leitai(load: str, directory: Path, ids: list[int], new_tokens: int, tmp_path: Path) -> str:
    """Load ``directory`` with ``load`` (Python using transformers/peft alone) in a fresh process
    whose working directory is not leitai's, and decode its greedy answer to ``ids``."""
    code = NO_LEITAI + f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
DIR = {str(directory)!r}
{load}
ids = torch.tensor([{ids!r}])
with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens={new_tokens}, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
print(json.dumps(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOADS = {
    "lora": ("from peft import PeftModel\n"
             "base = json.load(open(DIR + '/adapter_config.json'))['base_model_name_or_path']\n"
             "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), DIR).eval()\n"
             "tokenizer = AutoTokenizer.from_pretrained(DIR)"),
    "lora --merge": "model = AutoModelForCausalLM.from_pretrained(DIR).eval()\ntokenizer = AutoTokenizer.from_pretrained(DIR)",
    "full": "model = AutoModelForCausalLM.from_pretrained(DIR).eval()\ntokenizer = AutoTokenizer.from_pretrained(DIR)",
    "lst": ("model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)\n"
            "tokenizer = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)"),
    "prompt-tuning": ("from peft import PeftModel\n"
                      "base = json.load(open(DIR + '/adapter_config.json'))['base_model_name_or_path']\n"
                      "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), DIR).eval()\n"
                      "tokenizer = AutoTokenizer.from_pretrained(DIR)"),
}
FORMATS = {"lora": "peft", "lora --merge": "transformers", "full": "transformers", "lst": "transformers-remote-code",
           "prompt-tuning": "peft"}


@pytest.mark.parametrize("what", list(LOADS))
def test_each_export_checks_and_loads_as_documented_without_leitai(shootout, tmp_path, what):
    method, *flags = what.split()
    run = shootout / "runs" / f"zh-sentiment__{method}__s0"
    out = tmp_path / "export"
    proc = leitai("export", run, "--out", out, "--check", *flags)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the libraries' noise (suite/quiet.py) is kept quiet here too
    assert "leitai: check passed: the export's greedy answers equal the run's on its first 8 test prompts" in proc.stdout
    info = json.loads((out / "leitai-export.json").read_text(encoding="utf-8"))
    assert info["format"] == FORMATS[what] and info["merged"] == bool(flags) and info["check"]["same"] == 8
    assert info["run"]["run_id"] == run.name and info["config"]["params"] and info["scores"]["score_name"] == "accuracy"
    assert info["export_env"]["versions"]["transformers"] and "git_commit" in info["export_env"]
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    assert not list(tmp_path.glob("*.tmp"))
    ids, answer, new_tokens = _first_prompt(run)
    assert _answer_without_leitai(LOADS[what], out, ids, new_tokens, tmp_path) == answer


def test_merge_is_refused_in_one_line_where_peft_cannot_merge(shootout, tmp_path):
    out = tmp_path / "export"
    proc = leitai("export", shootout / "runs" / "zh-sentiment__prompt-tuning__s0", "--out", out, "--merge")
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == ("leitai: error: --merge: peft cannot merge 'prompt-tuning': a prompt-learning method "
                                   "trains inputs to the model (virtual tokens, prefix keys and values), not changes "
                                   "to its weights; export the adapter")


def test_best_names_the_method_and_seed_it_chose_and_why(shootout, tmp_path):
    from suite.cell.records import read_records
    from suite.report import content

    report = content.build(read_records(shootout), with_figures=False)
    best = report.sections[0].verdict.best[0]
    proc = leitai("export", shootout, "--best", "--out", tmp_path / "best")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[0]
    assert line.startswith(f"leitai: best on zh-sentiment: {best}, the verdict's best by mean accuracy ")
    assert "; seed 0, the lowest dev loss of its seeds (seed 0: " in line
    info = json.loads((tmp_path / "best" / "leitai-export.json").read_text(encoding="utf-8"))
    assert info["run"]["method"] == best and info["chosen"] == line.removeprefix("leitai: ")


@pytest.mark.parametrize("args, line", [
    (["--out", "{tmp}/x"], "{shootout} is a shootout directory: pass --best, or a run directory {shootout}/runs/<run_id>"),
    (["--best", "--task", "zh-idiom", "--out", "{tmp}/x"], "{shootout}: no finished runs on task 'zh-idiom' (tasks: zh-sentiment)"),
])
def test_bad_input_is_one_line_with_exit_status_2(shootout, tmp_path, args, line):
    proc = leitai("export", shootout, *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2 and proc.stderr.strip() == "leitai: error: " + line.format(shootout=shootout)


def test_lsts_network_code_imports_nothing_of_leitai():
    """What an LST export carries (modeling_lst.py, model.py) must load where leitai is not installed."""
    for name in ("modeling_lst.py", "model.py"):
        tree = ast.parse((ROOT / "plugins" / "methods" / "lst" / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(m.split(".")[0] in ("suite", "plugins") for m in modules), (name, modules)
