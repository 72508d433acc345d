"""The training loop's protocol: gradient accumulation equals one batch of the step's size,
--epochs sets the steps, dev evaluations during training make the curve and --keep best restores
the best one's parameters."""
import json
import types

import pytest
import torch
from conftest import CELLS_ONLY, leitai

from suite.cell.train import DevCurve, TrainSettings, train
from suite.data import replay
from suite.data.batches import Encoded, batch_order, batches_per_epoch
from suite.testing import EOS, tiny_model


def _examples(n: int, seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, 120, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
        answer = torch.randint(3, 120, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist() + [EOS]
        out.append(Encoded(str(i), [1, *prompt], answer))
    return out


def _run(batches, micro: int, replay_batches=None):
    from accelerate import Accelerator

    model = tiny_model("llama", seed=3)
    for name, p in model.named_parameters():
        p.requires_grad = "layers.1" in name  # a part of the model trains, as a method leaves it
    settings = TrainSettings(lr=1e-2, warmup=0.0, log_every=1)
    result = train(model, batches, 0, settings, Accelerator(cpu=True), micro_batches=micro, replay=replay_batches)
    return result, torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("with_replay", [False, True])
def test_four_micro_batches_of_4_equal_one_batch_of_16(with_replay):
    """Same losses at every step and the same parameters after 5 steps, within float32 rounding:
    the micro-batches' gradients are summed in another order than one batch's (relative
    differences of ~1e-7), so losses agree to rtol 1e-5. AdamW divides each update by the
    gradient's running size, so where a gradient is near zero that rounding can move one
    element's update by a visible part of a step (seen: 1.9e-5 on one element of 2,048 with
    replay, against updates of up to 1e-2): the parameters agree to a thousandth of how far
    training moved them (the norm of the difference), and each element to a hundredth of one
    step's largest update (atol 1e-4)."""
    examples = _examples(80)
    order = batch_order([e.length for e in examples], 16 if not with_replay else 12, 5, seed=0)
    batches = [[examples[i] for i in b] for b in order]
    extra = [[Encoded(f"r{j}", [1], e.answer + e.prompt[1:]) for j, e in enumerate(_examples(4, seed=s))]
             for s in range(5)] if with_replay else None
    one, params_one = _run(batches, 1, extra)
    four, params_four = _run(batches, 4, extra)
    assert len(one.losses) == len(four.losses) == 5
    torch.testing.assert_close(torch.tensor(four.losses), torch.tensor(one.losses), rtol=1e-5, atol=1e-6)
    if with_replay:
        torch.testing.assert_close(torch.tensor(four.replay_losses), torch.tensor(one.replay_losses), rtol=1e-5, atol=1e-6)
    start = torch.cat([p.detach().flatten() for n, p in tiny_model("llama", seed=3).named_parameters() if "layers.1" in n])
    assert (params_four - params_one).norm() <= 1e-3 * (params_one - start).norm()
    torch.testing.assert_close(params_four, params_one, rtol=0, atol=1e-4)
    assert one.tokens == four.tokens
    # what a step keeps for backward is one micro-batch's
    assert four.breakdown["activation_bytes"] < one.breakdown["activation_bytes"] / 2


def test_epochs_set_the_steps_from_the_train_split():
    assert batches_per_epoch(512, 16) == 32 and batches_per_epoch(100, 16) == 7  # 6 full and a short one
    assert batches_per_epoch(600, 16) == 32 + 6  # chunks of 32 batches: 512, then 88 (5 full, a short one)
    cell = types.SimpleNamespace(batch_size=16, grad_accum=1, epochs=2, max_steps=150, replay="none", seed=0)
    train_set = _examples(512)
    mix = replay.batches(cell, None, None, train_set)
    assert len(mix.task) == 64 and sum(map(len, mix.task)) == 2 * 512
    cell.batch_size, cell.grad_accum = 4, 4  # the step's batch: 16 examples, whatever the micro-batch
    assert len(replay.batches(cell, None, None, train_set).task) == 64


def test_a_constructed_curve_keeps_the_best_point_not_the_last():
    model = torch.nn.Linear(2, 1)
    curve = []
    scores = iter([0.5, 0.9, 0.9, 0.3])
    losses = iter([1.0, 0.8, 0.85, 0.7])  # step 4: the lowest loss, but the worst score
    dev = DevCurve(model, lambda head, score: (next(losses), next(scores)), curve, keep_best=True)
    kept = {}
    for step in (1, 2, 3, 4):
        with torch.no_grad():
            model.weight.fill_(step)
        kept[step] = model.weight.detach().clone()
        dev.at(step, float(step), answer_head=True)
    assert dev.best["step"] == 2  # tied at 0.9 with step 3, which has the higher loss
    assert dev.restore_best() == 2 and torch.equal(model.weight, kept[2])
    assert [p["step"] for p in curve] == [1, 2, 3, 4] and curve[1] == {"step": 2, "split": "dev", "loss": 0.8,
                                                                       "score": 0.9, "seconds": 2.0}


def test_a_best_last_point_restores_nothing():
    model = torch.nn.Linear(2, 1)
    dev = DevCurve(model, lambda head, score: (1.0, 0.5), [], keep_best=True)
    dev.at(5, 1.0, True)
    assert dev.restore_best() is None


def test_a_shootout_with_epochs_eval_every_and_keep_best(tmp_path):
    """--epochs 2 on 64 training examples at a step of 4 x 4: 8 steps, recorded; --eval-every 4: dev
    loss and score at steps 4 and 8 in curves.csv, the best step in results.csv; --keep best."""
    out = tmp_path / "out"
    proc = leitai("run", "--methods", "lora", "--epochs", "2", "--batch-size", "4", "--grad-accum", "4",
                  "--task-size", "64", "--eval-every", "4", "--keep", "best", *CELLS_ONLY, "-q", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(next(out.glob("runs/*/record.json")).read_text())
    m = record["metrics"]
    assert record["status"] == "ok", record.get("error")
    assert m["steps"] == 8 and m["epochs"] == 2.0 and record["config"]["grad_accum"] == 4
    assert record["plan"]["activation_bytes"] == m["activation_bytes"]  # one micro-batch's, planned and measured
    import pandas as pd

    curves = pd.read_csv(out / "curves.csv")
    dev = curves[curves.split == "dev"]
    assert dev.step.tolist() == [4, 8] and dev.score.notna().all() and (dev.seconds > 0).all()
    results = pd.read_csv(out / "results.csv")
    best = dev.sort_values(["score", "loss"], ascending=[False, True]).iloc[0]
    assert results.best_dev_step.iloc[0] == best.step and results.kept_step.iloc[0] == best.step


@pytest.mark.parametrize("args, message", [
    (["--epochs", "2", "--max-steps", "10"], "give --epochs or --max-steps, not both"),
    (["--keep", "best"], "--keep best needs --eval-every N"),
    (["--grad-accum", "0"], "--grad-accum must be a positive whole number"),
])
def test_budget_settings_refused_in_one_line(args, message, tmp_path):
    proc = leitai("run", "--methods", "lora", *args, "--out", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"leitai: error: {message}"] \
        or message in proc.stderr, proc.stderr


def test_the_plan_of_an_accumulated_batch_is_one_micro_batch():
    plain = leitai("plan", "--methods", "lora,full", "--batch-size", "4", "--max-len", "64", "--chart", "none")
    accumulated = leitai("plan", "--methods", "lora,full", "--batch-size", "4", "--grad-accum", "4", "--max-len", "64",
                         "--chart", "none")
    assert plain.returncode == accumulated.returncode == 0, accumulated.stderr[-2000:]
    head, *table = accumulated.stdout.splitlines()
    assert "(x4 accumulated: memory is one micro-batch's)" in head
    assert table == plain.stdout.splitlines()[1:]
