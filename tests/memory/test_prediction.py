"""``leitai plan`` (suite/memory/prediction.py): predicted against measured, on tiny models of several
architectures, in process (the arena's own ``train`` and measuring functions); the counting of
saved tensors; the command line's output, budget and errors; one small shootout whose records
carry the prediction and whose ``--memory`` check refuses cells that would not fit."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import CELLS_ONLY, leitai

#: six architectures of the conformance matrix: separate and fused QKV, GQA and multi-query,
#: learned positions, ALiBi, sandwich norms
ARCHS = ("llama", "gpt2", "glm4", "falcon", "phi3", "bloom")
#: a method of each kind: adapters inside the base, every weight, virtual tokens, a side network
METHODS = ("lora", "full", "prompt-tuning", "lst")
#: two batch shapes: (prompt, answer) lengths of each example, right-padded as the arena pads
SHAPES = ([(9, 3), (6, 4), (11, 2), (7, 5)], [(20, 12), (3, 2)])
EXACT = ("weights_bytes", "grads_bytes", "optimizer_bytes")


def _items(lengths, seed=1):
    from suite.data.batches import Encoded
    from suite.testing import EOS, VOCAB

    g = torch.Generator().manual_seed(seed)
    return [Encoded(str(i), torch.randint(3, VOCAB, (p,), generator=g).tolist(),
                    torch.randint(3, VOCAB, (a,), generator=g).tolist() + [EOS]) for i, (p, a) in enumerate(lengths)]


def _measured(method, params, arch, items, dtype, checkpointing=False):
    """What a cell records for one step of ``method`` on the tiny ``arch``: the weights after
    the core's upcast, and train()'s breakdown (grads, optimizer, activations)."""
    from accelerate import Accelerator

    from suite.cell.train import TrainSettings, train
    from suite.measures import resources
    from suite.models.loading import enable_gradient_checkpointing
    from suite.models.precision import cast_weights, mixed_precision, upcast_trainable
    from suite.testing import PAD, tiny_model

    torch.manual_seed(0)
    base = cast_weights(tiny_model(arch), dtype)
    if checkpointing:
        enable_gradient_checkpointing(base)
    model = method.apply(base, dict(params))
    upcast_trainable(model)
    weights = resources.tensor_bytes(resources.unique_parameters(model))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # each cell is a process of its own; here one precision each
    accelerator = Accelerator(cpu=True, mixed_precision=mixed_precision(dtype, torch.device("cpu")))
    result = train(model, [items], PAD, TrainSettings(lr=float(params["lr"])), accelerator, method=method,
                   params=dict(params))
    return {"weights_bytes": weights, **result.breakdown, "answer_head": result.answer_head}


@pytest.mark.parametrize("arch", ARCHS)
def test_predicted_equals_measured(registry, arch):
    """Weights, gradients and optimizer state exactly what the arena measures, activations
    within 5%, for four methods at two shapes (float32), LoRA on a bfloat16 base under
    autocast, without and with gradient checkpointing, AdaLoRA and DoRA."""
    from suite.data.batches import collate
    from suite.memory.prediction import predict
    from suite.methods.method import method_params
    from suite.testing import PAD, tiny_config

    cases = [(name, shape, torch.float32, False) for name in METHODS for shape in SHAPES]
    cases += [("lora", SHAPES[0], torch.bfloat16, False), ("lora", SHAPES[0], torch.bfloat16, True)]
    cases += [("adalora", SHAPES[0], torch.float32, False)]  # a frozen parameter of its own (ranknum) stays frozen
    cases += [("dora", SHAPES[0], torch.float32, False)]  # a branch whose graph is dropped in the forward
    for name, shape, dtype, checkpointing in cases:
        method = registry.method(name)
        params = method_params(method, None)
        items = _items(shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measured = _measured(method, params, arch, items, dtype, checkpointing)
            plan = predict(method, params, tiny_config(arch), collate(items, PAD), dtype, checkpointing)
        what = f"{name} on {arch} at {shape} in {dtype}{' with checkpointing' if checkpointing else ''}"
        for key in EXACT:
            assert getattr(plan, key) == measured[key], f"{what}: {key}"
        assert plan.activation_bytes == pytest.approx(measured["activation_bytes"], rel=0.05), what
        assert plan.answer_head == measured["answer_head"], what
        assert plan.predicted_peak_bytes >= plan.weights_bytes + plan.optimizer_bytes + plan.activation_bytes


def test_saved_tensors_count_a_storage_once():
    """A storage saved by several ops, and through views, counts once; parameters not at all;
    on the meta device as on the CPU, and as the cell's own counter counts it."""
    from suite.measures.resources import saved_for_backward
    from suite.memory.tracing import SavedTensors

    def step(device):
        w = torch.nn.Parameter(torch.ones(256, device=device))
        x = torch.ones(1024, device=device, requires_grad=True)
        y = x.exp()  # exp saves its result: 4 KiB
        z = (y * y).sum() + y[:100].sin().sum() + (y.view(32, 32) @ torch.ones(32, 32, device=device)).sum()
        return w, (z + (w * w).sum())

    counter = SavedTensors()
    with counter.hooks():
        kept = step("meta")  # what is held for backward when the block ends: its graph is kept
    counter_cpu = SavedTensors()
    with counter_cpu.hooks():
        w_cpu, loss_cpu = step("cpu")
    with saved_for_backward() as measured:
        kept_cpu = step("cpu")
    # y once (saved by exp, twice by mul, by sin and by mm through views), the matmul's other
    # operand (4 KiB) and w, saved twice by w * w (1 KiB once: no parameters excluded here)
    expected = 4096 + 4096 + 1024
    assert counter.settle() == counter_cpu.live == measured["bytes"] == expected
    del kept, kept_cpu
    excluded = SavedTensors(exclude=[w_cpu])
    with excluded.hooks():
        (w_cpu * w_cpu).sum()
    assert excluded.live == 0
    w_cpu.register_post_accumulate_grad_hook(counter_cpu.grad_accumulated)
    loss_cpu.backward()  # each storage freed once the last node that saved it has run; w's gradient added
    assert counter_cpu.live == 0 and counter_cpu.grads == 1024
    assert expected <= counter_cpu.peak <= expected + 1024


def test_parse_bytes():
    from suite.errors import UsageError
    from suite.memory.prediction import parse_bytes

    assert parse_bytes("24GiB") == 24 * 2**30 and parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes("1.5e9") == 1_500_000_000
    for bad in ("", "lots", "-3GB", "24 GiBs", "0"):
        with pytest.raises(UsageError, match="cannot read"):
            parse_bytes(bad)


def test_plan_command(tmp_path, capsys):
    """The table, the chart and the budget on tiny-zh; bad input in one line with status 2."""
    from suite.cli.app import main

    chart = tmp_path / "plan.png"
    assert main(["plan", "--model", "tiny-zh", "--methods", "lora,full", "--batch-size", "2", "--max-len", "32",
                 "--memory", "60MiB", "--chart", str(chart)]) == 0
    out, err = capsys.readouterr()
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| lora") or
            line.startswith("| full")}
    assert set(rows) == {"lora", "full"} and "predicted peak MiB" in out
    assert "| yes" in rows["lora"] and "| NO" in rows["full"], out  # full's AdamW state alone is 43 MiB
    assert "over the 60MiB budget: full" in err
    assert chart.stat().st_size > 1000 and chart.read_bytes()[:4] == b"\x89PNG"

    config_dir = tmp_path / "t5"
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=64).save_pretrained(config_dir)
    for args, message in [
        (["--model", str(tmp_path / "nowhere")], "--model"),
        (["--model", str(config_dir)], "no causal-LM class"),
        (["--model", "tiny-zh", "--memory", "lots"], "--memory: cannot read 'lots'"),
        (["--model", "tiny-zh", "--methods", "nonesuch"], "unknown method 'nonesuch'"),
        (["--model", "tiny-zh", "--methods", "lora", "--set", "lora.r=-1"], "method lora cannot be planned"),
    ]:
        assert main(["plan", *args, "--chart", "none"]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, (args, err)


def test_methods_that_prepend_plan_at_a_real_shape(registry):
    """peft builds the mask of prepended virtual tokens as a float tensor (batch x tokens), and
    transformers reads it (``mask.all()``) to choose its attention path: at 16 x 256 it is larger
    than a float result the shadow keeps by default, and planning once failed there."""
    from suite.memory.plan import read_config
    from suite.memory.prediction import predict, synthetic_batch
    from suite.methods.method import method_params

    config = read_config("tiny-zh", registry)
    batch = synthetic_batch(16, 256, config.vocab_size)
    for name in ("prompt-tuning", "p-tuning"):
        method = registry.methods[name]
        plan = predict(method, method_params(method, {}), config, batch)
        assert plan.activation_bytes > 0 and plan.trainable_params > 0, name


def test_shootout_records_the_prediction_and_refuses_what_would_not_fit(tmp_path):
    """One small shootout: each record carries predicted_peak_bytes, results.csv and the
    summary show it; the same run with a budget too small refuses, one line per cell, before
    any cell runs."""
    out = tmp_path / "out"
    small = ["--model", "tiny-zh", "--methods", "lora", "--tasks", "zh-sentiment", "--max-steps", "2",
             "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "-q"]
    r = leitai("run", *small, "--memory", "1MiB", "--out", out)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("leitai:")]  # not libraries' notices
    assert lines[0].startswith("leitai: zh-sentiment__lora__s0: predicted peak") and "> --memory 1MiB" in lines[0]
    assert "would not fit --memory 1MiB: lora" in lines[-1] and not (out / "runs").exists()

    r = leitai("run", *small, "--memory", "24GiB", "--out", out)
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "runs" / "zh-sentiment__lora__s0" / "record.json").read_text(encoding="utf-8"))
    m = record["metrics"]
    assert m["predicted_peak_bytes"] > m["grads_bytes"] + m["optimizer_bytes"] + m["activation_bytes"]
    for key in ("weights_bytes", "grads_bytes", "optimizer_bytes", "activation_bytes"):  # the real tiny-zh too
        assert record["plan"][key] == m[key], key
    assert "predicted_peak_bytes" in (out / "results.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "predicted peak" in (out / "summary.md").read_text(encoding="utf-8")
