"""Loading a base: the attention kernel asked for (--attn-implementation) is the one that runs,
recorded and planned; a kernel the model or the machine cannot run is refused before any cell."""
import json

import pytest
from conftest import CELLS_ONLY, leitai

from suite.models.loading import check_attention, set_attention
from suite.testing import tiny_config, tiny_model


def test_the_kernel_asked_for_runs_and_is_recorded(tmp_path):
    out = tmp_path / "o"
    proc = leitai("run", "--methods", "lora", "--attn-implementation", "eager", "--max-steps", "2", "--batch-size", "4",
                  "--task-size", "16", *CELLS_ONLY, "-q", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(next(out.glob("runs/*/record.json")).read_text())
    assert record["status"] == "ok" and record["metrics"]["attn_implementation"] == "eager"
    assert record["config"]["attn_implementation"] == "eager"
    # the planner traced the same kernel: eager keeps the attention weights, and the plan counts them
    assert record["plan"]["activation_bytes"] == record["metrics"]["activation_bytes"]


def test_auto_keeps_transformers_choice():
    model = tiny_model("llama")
    assert set_attention(model, "auto") == model.config._attn_implementation == "sdpa"
    assert set_attention(model, "eager") == "eager"


@pytest.mark.parametrize("kernel, device, message", [
    ("flash_attention_2", "cpu", "--attn-implementation flash_attention_2 runs on CUDA only, not with --device cpu"),
    ("flash_attention_2", "cuda", "--attn-implementation flash_attention_2: FlashAttention2 has been toggled on"),
])
def test_a_kernel_that_cannot_run_is_refused(kernel, device, message, tmp_path):
    with pytest.raises(ValueError, match=message.split(":")[0]):
        check_attention(tiny_config("llama"), kernel, device)
    proc = leitai("run", "--methods", "lora", "--attn-implementation", kernel, "--device", device, "--out", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.startswith(f"leitai: error: {message}") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything ran
