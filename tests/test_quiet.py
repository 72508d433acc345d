"""Library noise (suite/quiet.py): what a shootout prints on stderr is leitai's own."""
import re

from conftest import leitai


def test_a_quantized_shootout_prints_only_leitais_own_lines(tmp_path):
    """A shootout on a float and a 4-bit base, with every bar on (each cell's stderr is passed
    through): stderr holds the shootout's bar, each cell's step bar and leitai's lines, and
    nothing else: not bitsandbytes' line about the missing ``kernels`` package, not
    transformers' ``Loading weights`` bar for each base a cell loads (twice with inference
    timing)."""
    out = tmp_path / "out"
    proc = leitai("run", "--methods", "lora", "--quantize", "none,nf4", "--max-steps", "2", "--batch-size", "4",
                  "--task-size", "16", "--no-baselines", "--side-corpus", "none", "--infer-prompts", "2",
                  "--out", out, env={"LEITAI_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["zh-sentiment__lora__nf4__s0", "zh-sentiment__lora__s0"]
    assert _strangers(proc.stderr, runs) == []


def test_boft_and_full_fine_tuning_print_only_leitais_own_lines(tmp_path):
    """Without a GPU, peft's BOFT warns twice that its CUDA kernel did not build; full
    fine-tuning's save draws transformers' ``Writing model shards`` bar. Neither reaches a user."""
    out = tmp_path / "out"
    proc = leitai("run", "--methods", "boft,full", "--max-steps", "2", "--batch-size", "4", "--task-size", "16",
                  "--no-baselines", "--side-corpus", "none", "--infer-prompts", "0", "--out", out,
                  env={"LEITAI_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["zh-sentiment__boft__s0", "zh-sentiment__full__s0"]
    assert _strangers(proc.stderr, runs) == []


def _strangers(stderr: str, runs: list[str]) -> list[str]:
    """The lines of ``stderr`` that are not leitai's: its own start with ``leitai: ``, the
    shootout's bar or a cell's bar (of which at least one must have come through)."""
    own = ("leitai: ", "shootout: ", *(f"{run}: " for run in runs))
    lines = [line for line in re.split(r"[\r\n]", stderr) if line.strip()]
    assert any(line.startswith(f"{runs[0]}: ") for line in lines)  # a cell's own bar came through
    return [line for line in lines if not line.startswith(own)]
