"""Bring your own PEFT config: ``--methods peft:PATH`` and ``[method.NAME] peft_config = "PATH"``."""
import json

import pandas as pd
import pytest
from conftest import CELLS_ONLY, leitai

from suite.errors import UsageError
from suite.methods.peft_file import load_peft_config

SMALL = ["--max-steps", "4", "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "-q"]


@pytest.fixture(scope="module")
def lora_config(tmp_path_factory):
    """A LoRA config as a user writes it, with the arena's LoRA settings."""
    from peft import LoraConfig

    directory = tmp_path_factory.mktemp("my-lora")
    LoraConfig(r=4, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM").save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def shootout(lora_config, tmp_path_factory):
    """``lora``, the same LoRA as ``peft:DIR`` and as a TOML table naming the file, at one lr."""
    root = tmp_path_factory.mktemp("byo")
    toml = root / "shootout.toml"
    toml.write_text(f'[method.prod-lora]\npeft_config = "{lora_config / "adapter_config.json"}"\nlr = 2e-3\n')
    out = root / "out"
    proc = leitai("run", "--config", toml, "--methods", f"lora,peft:{lora_config},prod-lora", "--out", out,
                  "--set", "lora.lr=2e-3", "--set", f"peft:{lora_config}.lr=2e-3", "--workers", "2", *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, pd.read_csv(out / "results.csv").set_index("method")


def test_a_saved_lora_config_trains_exactly_like_lora(shootout, lora_config):
    out, results = shootout
    assert list(results.status) == ["ok"] * 3, results.error
    lora, mine, named = (results.loc[m] for m in ("lora", f"peft:{lora_config}", "prod-lora"))
    for row in (mine, named):
        for column in ("trainable_params", "first_train_loss", "final_train_loss", "eval_loss", "lr"):
            assert row[column] == lora[column], column
    record = json.loads((out / "runs" / named.run_id / "record.json").read_text())
    assert record["config"]["params"] == {"lr": 2e-3, "peft_config": str(lora_config / "adapter_config.json")}
    saved = json.loads((out / "runs" / mine.run_id / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 4


@pytest.mark.parametrize("content, message", [
    (None, "cannot read PEFT config (No such file or directory)"),
    ("{", "not a PEFT config (invalid JSON: Expecting property name enclosed in double quotes at line 1)"),
    ('{"r": 8}', "not a PEFT config (no peft_type)"),
    ('{"peft_type": "NOPE"}', "unknown peft_type 'NOPE' for the installed peft"),
    ('{"peft_type": "LORA", "lora_dropout": 0.1, "layers_pattern": "layers"}',
     "PEFT cannot load this config (When `layers_pattern` is specified, `layers_to_transform` must also be specified.)"),
    ('{"peft_type": "LORA", "task_type": "SEQ_CLS"}', "task_type SEQ_CLS is not CAUSAL_LM, which the arena trains"),
])
def test_a_bad_config_is_one_line_naming_the_file(content, message, tmp_path):
    path = tmp_path / "adapter_config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as err:
        load_peft_config(str(tmp_path))  # the directory: its adapter_config.json
    assert str(err.value) == f"{path}: {message}" and "\n" not in str(err.value)


def test_peft_path_on_the_command_line_exits_2(tmp_path):
    proc = leitai("run", "--methods", f"lora,peft:{tmp_path / 'none.json'}", "--out", tmp_path / "o", *SMALL)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == f"leitai: error: {tmp_path / 'none.json'}: cannot read PEFT config (No such file or directory)\n"
    assert not (tmp_path / "o").exists()
