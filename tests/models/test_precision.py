"""Base weights in bfloat16 (``--dtype``): what trains stays float32, the frozen base halves its
weight memory, and every record says which dtypes ran."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, leitai

from suite.models import loading
from suite.models.precision import cast_weights, dtype_name, mixed_precision, resolve_dtype, upcast_trainable
from suite.testing import tiny_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lora_cells(tmp_path_factory, registry):
    """The same LoRA cell on a float32 and on a bfloat16 tiny-zh, each in a fresh process (as
    the local executor runs it, so neither one's peak memory sees the other), side by side."""
    from suite.cell.run import Cell
    from suite.config.settings import ShootoutConfig
    from suite.methods.method import method_params

    task = registry.tasks["zh-sentiment"]
    settings = dict(model="tiny-zh", max_steps=2, batch_size=8, device="cpu", side_corpus="none", infer_prompts=0)
    procs = {}
    for dtype in ("float32", "bfloat16"):
        cell = Cell(**settings, dtype=dtype, run_id=f"lora-{dtype}",
                    method="lora", task=task.name, seed=0, params=method_params(registry.methods["lora"], None),
                    task_sizes=ShootoutConfig(task_size="16").sizes_for(task))
        run_dir = tmp_path_factory.mktemp(dtype)
        (run_dir / "cell.json").write_text(cell.to_json(), encoding="utf-8")
        env = {**os.environ, "LEITAI_THREADS": "1", "OMP_NUM_THREADS": "1"}
        procs[dtype] = (run_dir, subprocess.Popen([sys.executable, "-m", "suite.cell", str(run_dir / "cell.json")],
                                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    records = {}
    for dtype, (run_dir, proc) in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
        records[dtype] = json.loads((run_dir / "record.json").read_text(encoding="utf-8"))
    return records


def test_a_bf16_base_lowers_lora_memory_and_keeps_what_trains(lora_cells):
    f32, bf16 = (lora_cells[d] for d in ("float32", "bfloat16"))
    for record in (f32, bf16):
        assert record["status"] == "ok", record.get("error")
    a, b = f32["metrics"], bf16["metrics"]
    assert (a["weights_dtype"], a["trainable_dtype"], f32["env"]["dtype"]) == ("float32", "float32", "float32")
    assert (b["weights_dtype"], b["trainable_dtype"], bf16["env"]["dtype"]) == ("bfloat16", "float32", "bfloat16 + bf16 autocast")
    assert b["trainable_params"] == a["trainable_params"] and b["total_params"] == a["total_params"]
    # the frozen base is half the bytes; LoRA's float32 A and B matrices are the same
    lora_bytes = 4 * a["trainable_params"]
    assert b["weights_bytes"] - lora_bytes == (a["weights_bytes"] - lora_bytes) // 2
    assert b["grads_bytes"] == a["grads_bytes"] and b["optimizer_bytes"] == a["optimizer_bytes"]
    assert b["activation_bytes"] < a["activation_bytes"]
    assert b["peak_memory_bytes"] < a["peak_memory_bytes"]
    assert all(v == v for v in (b["final_train_loss"], b["eval_loss"]))  # finite: it trained


def test_the_report_has_the_dtype_columns(lora_cells):
    from suite.report.frames import results_frame

    frame = results_frame(list(lora_cells.values())).set_index("run_id")
    assert frame.loc["lora-bfloat16", ["weights_dtype", "trainable_dtype"]].tolist() == ["bfloat16", "float32"]
    assert frame.loc["lora-float32", "weights_dtype"] == "float32"


@pytest.mark.parametrize("name", ["lora", "prefix-tuning", "p-tuning", "prompt-tuning", "lst", "full"])
def test_each_family_trains_on_a_bf16_base(registry, name):
    """Apply, the core's upcast, one step and a generation under the cell's bf16 autocast on the
    CPU: the loss is finite, every trainable tensor and its gradient float32, the rest bfloat16
    (full fine-tuning trains everything, so all of it is float32)."""
    from suite.methods.method import method_params

    method = registry.methods[name]
    params = method_params(method, None)
    torch.manual_seed(0)
    model = method.apply(cast_weights(tiny_model("llama"), torch.bfloat16), dict(params))
    upcast_trainable(model)
    ids = torch.randint(3, 100, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        with torch.no_grad():
            out = model.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=2,
                                 do_sample=False, pad_token_id=0)
    assert torch.isfinite(loss) and out.shape[1] >= ids.shape[1] + 1
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert dtype_name(trainable) == "float32" and all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert dtype_name(frozen) == (None if name == "full" else "bfloat16")


def test_an_unknown_dtype_is_a_usage_error(tmp_path):
    proc = leitai("run", "--dtype", "bf16", "--out", tmp_path / "out", "-q")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "leitai: error: --dtype takes auto, float32, bfloat16 or float16, not 'bf16'"
    assert not (tmp_path / "out").exists()


def test_auto_and_the_autocast_that_goes_with_each_dtype():
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert mixed_precision(torch.float32, CPU) == "no"
    assert mixed_precision(torch.bfloat16, CPU) == "bf16"
    assert mixed_precision(torch.float32, torch.device("cuda")) == "bf16"  # as before: float32 base, bf16 autocast
    assert mixed_precision(torch.float16, torch.device("cuda")) == "fp16"


def test_a_model_spec_without_a_dtype_argument_is_cast():
    """A ``ModelSpec.load()`` written before ``dtype`` existed still loads in the run's dtype:
    its floating-point parameters are cast, its buffers (rotary tables) are left alone."""

    class OldSpec(loading.ModelSpec):
        name = "old"

        def load(self):
            return tiny_model("llama"), None

    model, _ = loading.load_base(OldSpec(), torch.bfloat16)
    assert dtype_name(model.parameters()) == "bfloat16"
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float32}
    reference = tiny_model("llama")
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight.to(torch.bfloat16))


def test_upcast_trainable_leaves_the_frozen_base_alone():
    model = cast_weights(tiny_model("llama"), torch.float16)
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # tied to the input embeddings here or not: one tensor
    upcast_trainable(model)
    assert model.lm_head.weight.dtype == torch.float32
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and dtype_name(frozen) == "float16"
