"""Library noise (suite/quiet.py): what a shootout prints on stderr is leitai's own."""
from conftest import foreign_lines, leitai


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
    assert foreign_lines(proc.stderr, runs) == []


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
    assert foreign_lines(proc.stderr, runs) == []

