"""Diagnostics that tell a handicapped method from a weak one (DESIGN.md, "Fair comparison
protocol", point 6), computed by the core from what a cell has anyway:

- :func:`linear_probe`: what the frozen base already holds. A multinomial logistic regression
  on the base's final hidden state at the answer position (the last prompt token, where the
  answer's first token is predicted), fitted on the train split and scored on test. A method
  below it used less of the base than a linear map does.
- :func:`learning_tail`: whether the training loss was still falling over the last 20% of the
  steps (least-squares slope, one-sided t-test, and a fall large enough to matter): more steps
  would change the run's row.
- :func:`answer_format`: the share of greedy answers that are non-empty and, for a task with a
  closed answer set, one of its answers. Below :data:`FORMAT_MIN` the run did not learn the
  answer format, whatever its choice accuracy says about the labels.
- :func:`divergence`: whether the run's loss blew up: its training loss ended, or its dev loss
  is, more than :data:`DIVERGED_ABOVE` above where it started (its first step, in a run of at
  least :data:`DIVERGED_MIN_STEPS` steps; the untrained base model's dev loss). Such a run's record is ``diverged``, not ``ok``.
"""
from __future__ import annotations

import math

import torch

#: the probe's L2 penalty on the standardised features: loss = mean CE + PROBE_L2 / 2 · ‖W‖²
PROBE_L2 = 1e-2
#: the share of the training curve the still-learning test looks at (its last steps)
TAIL = 0.2
#: fewest tail points the slope test runs on (fewer: no verdict)
TAIL_MIN_POINTS = 5
#: one-sided significance level of the slope test
TAIL_ALPHA = 0.05
#: a fall over the tail below this share of the tail's mean loss is too small to matter
TAIL_MIN_FALL = 0.02
#: below this share of well-formed answers a run has not learned the answer format
FORMAT_MIN = 0.5
#: a run whose loss ends more than this share above where it started has diverged
#: (:func:`divergence`); why 20%, measured (a run that learns nothing ends 4% above its first
#: step, an untrained method's dev loss up to 3% above the base's): docs/diagnostics.md,
#: "Diverged runs"
DIVERGED_ABOVE = 0.2
#: fewer steps than this: the training loss's test does not apply (its tail mean would be one
#: step's loss, on one batch, against the first's: a batch of 4 alone can be 20% above another)
DIVERGED_MIN_STEPS = 20


# ---------------------------------------------------------------- linear probe


@torch.inference_mode()
def answer_features(model, prompts: list[list[int]], pad_id: int, device, batch_size: int = 32) -> torch.Tensor:
    """``(prompts, hidden)`` float64: the model's last hidden state (``output_hidden_states``'s
    last entry, as transformers returns it) at each prompt's last token. Right padding: a causal
    model's positions before the padding do not see it."""
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):
            ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states[-1]
        last = torch.tensor([len(p) - 1 for p in chunk], device=hidden.device)
        out.append(hidden[torch.arange(len(chunk), device=hidden.device), last].double().cpu())
    return torch.cat(out)


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets scaled by the train features' mean and standard deviation per dimension."""
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = PROBE_L2) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(features, classes)`` and biases of the multinomial logistic regression that
    minimises mean cross-entropy + ``l2`` / 2 · ‖W‖² (biases not penalised): full-batch LBFGS
    from zero in float64, so the same data give the same probe."""
    x = x.double()
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 / 2 * (w * w).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    return w.detach(), b.detach()


def linear_probe(model, train: list[tuple[list[int], str]], test_prompts: list[list[int]], choices: tuple[str, ...],
                 pad_id: int, device, batch_size: int = 32) -> list[str]:
    """The probe's answer (one of ``choices``) to each test prompt, fitted on ``train``'s
    (prompt ids, answer) pairs whose answer is one of ``choices``."""
    train = [(p, choices.index(a)) for p, a in train if a in choices]
    x_train = answer_features(model, [p for p, _ in train], pad_id, device, batch_size)
    x_test = answer_features(model, test_prompts, pad_id, device, batch_size)
    x_train, x_test = standardise(x_train, x_test)
    w, b = fit_probe(x_train, torch.tensor([c for _, c in train]), len(choices))
    return [choices[int(i)] for i in (x_test @ w + b).argmax(1)]


# ---------------------------------------------------------------- still learning


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` (a whole number ≥ 1) degrees of freedom, exact
    (Abramowitz & Stegun 26.7.3 and 26.7.4: a finite series in cos θ, θ = atan(t / √df))."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: 2/π (θ + sin θ cos θ (1 + 2/3 cos² θ + 2·4/(3·5) cos⁴ θ + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        inside = 2 / math.pi * (theta + s * math.cos(theta) * total)
    else:  # even: sin θ (1 + 1/2 cos² θ + 1·3/(2·4) cos⁴ θ + ...)
        term = total = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        inside = s * total
    tail = (1 - inside) / 2  # P(T > |t|)
    return tail if t >= 0 else 1 - tail


def learning_tail(losses: list[float]) -> dict:
    """The still-learning test on a run's per-step training losses: over the last :data:`TAIL`
    of the steps, the least-squares slope of loss against step (``tail_slope``, loss per step),
    the one-sided p-value that it is negative (``tail_slope_p``), and ``still_learning``: p <
    :data:`TAIL_ALPHA` and the fitted fall over the tail at least :data:`TAIL_MIN_FALL` of the
    tail's mean loss. Empty when the tail has fewer than :data:`TAIL_MIN_POINTS` finite losses."""
    n = len(losses)
    tail = [(float(i), float(v)) for i, v in enumerate(losses[n - max(1, round(n * TAIL)):]) if math.isfinite(v)]
    if len(tail) < TAIL_MIN_POINTS:
        return {}
    xs, ys = zip(*tail)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in tail) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in tail)
    se = math.sqrt(residual / (len(tail) - 2) / sxx)
    p = (0.0 if slope < 0 else 1.0) if se == 0 else 1 - t_sf(slope / se, len(tail) - 2)  # P(T < t)
    fall = -slope * (xs[-1] - xs[0])
    relevant = fall >= TAIL_MIN_FALL * abs(my)
    return {"tail_slope": slope, "tail_slope_p": p, "still_learning": bool(p < TAIL_ALPHA and relevant)}


# ---------------------------------------------------------------- answer format


def answer_format(answers: list[str], choices: tuple[str, ...] | None) -> dict:
    """``format_share``: the share of ``answers`` that are non-empty and, when the task has a
    closed answer set (``choices``), one of its answers; ``format_learned``: that share is at
    least :data:`FORMAT_MIN`. Empty for no answers."""
    if not answers:
        return {}
    ok = [bool(a.strip()) and (choices is None or a.strip() in choices) for a in answers]
    share = sum(ok) / len(ok)
    return {"format_share": share, "format_learned": share >= FORMAT_MIN}


def probe_baseline(task, model, prepared, pad_id: int, device, batch_size: int = 32) -> dict:
    """The linear-probe baseline of a task with a closed answer set, as a baseline cell records
    it beside the trivial answers: its answers to the test prompts, scored by the task
    (``score``, ``generations``), and ``choice_accuracy`` (the share that is the reference)."""
    from .task_scores import scored

    train = [(e.prompt, a) for e, a in zip(prepared.train, prepared.train_answers)]
    answers = linear_probe(model, train, prepared.test_prompts, task.choices, pad_id, device, batch_size)
    scores, generations = scored(task, answers, prepared.test, prepared.test_texts)
    right = [a == ex.output for a, ex in zip(answers, prepared.test)]
    return {"kind": "probe", "score": scores["score"], "choice_accuracy": sum(right) / len(right) if right else math.nan,
            "generations": generations}


# ---------------------------------------------------------------- divergence


def divergence(first_train_loss: float | None, final_train_loss: float | None, eval_loss: float | None = None,
               base_eval_loss: float | None = None, steps: int = DIVERGED_MIN_STEPS) -> str | None:
    """Why a run diverged, or None: its training loss ended (``final_train_loss``, the mean of
    the last 10% of the steps) more than :data:`DIVERGED_ABOVE` above its first step's (a run of
    at least :data:`DIVERGED_MIN_STEPS` ``steps``), or its
    dev loss is more than that above the untrained base model's (``base_eval_loss``, measured in
    the same cell on the same dev examples). A non-finite loss is caught while training
    (:func:`suite.cell.train.train`)."""
    limit, above = 1 + DIVERGED_ABOVE, f"more than {DIVERGED_ABOVE:.0%} above"
    if steps >= DIVERGED_MIN_STEPS and _above(final_train_loss, first_train_loss, limit):
        return (f"training loss rose from {first_train_loss:.4g} (step 1) to {final_train_loss:.4g} (the mean of "
                f"the last 10% of the steps), {above}")
    if _above(eval_loss, base_eval_loss, limit):
        return f"dev loss {eval_loss:.4g}, {above} the untrained base model's {base_eval_loss:.4g}"
    return None


def _above(value: float | None, start: float | None, limit: float) -> bool:
    return value is not None and start is not None and math.isfinite(start) and start > 0 and value > limit * start
