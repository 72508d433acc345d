"""The conformance kit: does a method do what the arena needs of it?

Plugin authors run it from their own tests::

    from suite.testing import check_method

    def test_conforms():
        check_method("my-method")          # raises ConformanceError, one line per failure

On tiny random Llama, Qwen2 and GPT-2 models (27,000 to 38,000 parameters each, built here, no
download; ``architectures=ALL_ARCHITECTURES`` for the 23 kinds leitai's own methods are tested
on) it checks, each under its own name:

``applies``           ``apply`` returns a model whose forward gives a finite ``.loss`` and ``.logits``
``params``            ``check_params`` accepts the settings ``apply`` just worked with, on a
                      weightless stand-in of the model (built on the meta device, as the core
                      builds it before a shootout): a check that does not would stop every
                      shootout with the method
``starts-from-base``  (methods that claim ``starts_from_base``) the untrained model's logits
                      equal the base model's
``trainable``         the core counts trainable parameters > 0, equal to the method's own
                      count (if it offers one); the optimiser holds exactly the parameters
                      that require grad, and each of them gets a gradient
``frozen``            base parameters the method declares frozen do not require grad, get no
                      gradient, and are bit-identical after an optimisation step
``loss``              one optimisation step (the arena's AdamW, the method's ``lr``) on a fixed
                      batch lowers the loss on that batch
``generation``        cached, batched ``generate`` equals greedy decoding by full forward passes
``save-load``         ``save``, then ``load`` into a fresh base model, reproduces the logits
``seed``              two runs from the same seed give the same losses
``base-view``         (methods that offer ``base_view``) after a step, the model with the method
                      switched off computes the untouched base model's logits
``merge``             (methods that declare ``mergeable``) the merged model's logits equal the
                      unmerged model's
``quantized``         (methods that declare ``quantized_base``; needs bitsandbytes, else
                      skipped) on a 64-wide LLaMA-layout model (Mistral's), loaded in 4 bits (NF4) and in 8 bits
                      and prepared as a cell prepares it: the quantized layers are still there
                      after ``apply``, the method starts from the quantized base (if it claims
                      to), one step lowers the loss, the trainable count is the method's own,
                      and the quantized weights are bit-identical after the step

A failed check is one line naming the method and the check, e.g.
``conformance: lora: generation: cached generate differs from forward decoding on qwen2 (prompt 2)``.

:func:`check_plugin_import` checks a plugin module of any kind: importing it and calling its
``register_*`` hooks, as ``leitai run`` does before it forks its warm-start server, must leave
the process safe to fork cells from (docs/warm-start.md, "What a plugin must not do when imported").
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cell.train import TrainSettings, make_optimizer
from ..data.batches import Encoded, collate
from ..measures.generation import greedy_by_forward, greedy_generate
from ..measures.resources import count_parameters, unique_parameters
from ..methods.guards import leaked_base_parameters, real_logits, starts_from_base_error, trained_base_names
from ..methods.method import Method, method_params
from .tiny_models import ARCHITECTURES, EOS, PAD, VOCAB, tiny_config, tiny_model, tiny_quantized_model

CHECKS = ("applies", "params", "starts-from-base", "trainable", "frozen", "loss", "generation", "save-load", "seed",
          "base-view", "merge", "quantized")


class ConformanceError(AssertionError):
    """Raised by :func:`check_method` when a check fails; its message has one line per failure."""


@dataclass
class CheckResult:
    """One check of one method on one architecture."""

    method: str
    check: str
    architecture: str
    status: str  # passed | failed | skipped
    detail: str = ""  # why it failed, naming the architecture
    seconds: float = 0.0

    @property
    def line(self) -> str:
        """The failure as one line: ``conformance: METHOD: CHECK: DETAIL``."""
        return f"conformance: {self.method}: {self.check}: {self.detail}"


@dataclass
class ConformanceReport:
    """What :func:`check_method` found: one result per check and architecture."""

    method: str
    architectures: tuple
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No check failed."""
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that failed."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def skipped(self) -> list[CheckResult]:
        """The checks that did not apply (``merge`` of a method that is not ``mergeable``...) or
        could not run (every check after a failed ``applies``)."""
        return [r for r in self.results if r.status == "skipped"]

    @property
    def lines(self) -> list[str]:
        """One line per failed check (only the failures; passed and skipped checks are in
        :attr:`results`)."""
        return [r.line for r in self.failures]

    def summary(self) -> str:
        """One line: how many checks passed, failed and were skipped, and which were skipped on
        which architectures."""
        passed = sum(r.status == "passed" for r in self.results)
        skipped: dict[str, list[str]] = {}
        for r in self.skipped:
            skipped.setdefault(r.check, []).append(r.architecture)
        head = (f"conformance: {self.method}: {passed} checks passed, {len(self.failures)} failed, "
                f"{len(self.skipped)} skipped on {', '.join(self.architectures)} ({self.seconds:.1f} s)")
        where = {c: "every architecture" if len(a) == len(self.architectures) else ", ".join(a) for c, a in skipped.items()}
        return head + "".join(f"; skipped {check} on {archs}" for check, archs in where.items())

    def __str__(self) -> str:
        return "\n".join([self.summary(), *self.lines])


def check_method(method_or_name, architectures=ARCHITECTURES, params: dict | None = None, seed: int = 0,
                 raise_on_failure: bool = True) -> ConformanceReport:
    """Run every check on ``method_or_name`` (a :class:`suite.Method` or a registered method's
    name) for each architecture in ``architectures``.

    ``params`` overrides the method's defaults, as ``--set`` would. Returns the report; when a
    check fails and ``raise_on_failure`` is true, raises :class:`ConformanceError` whose
    message is one line per failed check.
    """
    __tracebackhide__ = True  # pytest: show the failure lines, not this frame
    method = _resolve(method_or_name)
    settings = method_params(method, params)
    report = ConformanceReport(method.name, tuple(architectures))
    start = time.perf_counter()
    from transformers.utils import logging as hf_logging

    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    # Models this small run fastest on one thread, and many times slower on a busy machine
    # when torch's threads wait on each other. Saving needs no progress bar either.
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="leitai-conformance-") as tmp:
            for arch in architectures:
                report.results += _check_architecture(method, settings, arch, seed, Path(tmp) / arch)
            report.results += _check_quantized(method, settings, seed, Path(tmp) / "quantized", architectures)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
    report.seconds = time.perf_counter() - start
    if raise_on_failure and not report.ok:
        raise ConformanceError("\n".join(report.lines))
    return report


_IMPORT_PROBE = """
import importlib, json, sys, threading
import torch
from suite import plugins
from suite.shootout.fork_server import fork_probe
plugins.ENTRY_POINTS = []  # this module alone
registry = plugins.load_registry(extra=[importlib.import_module(m) for m in sys.argv[1:]])
print(json.dumps({"errors": [i.error for i in registry.plugins.values() if i.error],
                  "threads": [t.name for t in threading.enumerate() if t is not threading.main_thread()],
                  "cuda": torch.cuda.is_initialized(), "fork": fork_probe()}))
"""


def check_plugin_import(*modules: str, raise_on_failure: bool = True) -> list[str]:
    """Import plugin ``modules`` and call their ``register_*`` hooks in a fresh process with two
    torch threads, as ``leitai run`` does before it forks its warm-start server, then check that
    the process is still safe to fork a cell from: the hooks raised nothing, no Python thread
    was started, CUDA was not initialised, and a forked child runs a parallel torch operation
    (:func:`suite.shootout.fork_server.fork_probe`: no thread pool was started by computing at import). Returns
    one line per problem (``conformance: MODULE: import: ...``; several modules are checked
    together, and pass only if each would); raises :class:`ConformanceError`
    with them when ``raise_on_failure``."""
    __tracebackhide__ = True
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("LEITAI_PLUGINS", "MKL_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = "2"  # a user's default; on one thread nothing would start a pool
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *modules], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode != 0:
        lines = [f"importing it failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"]
    else:
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        lines = [f"a register hook failed: {e}" for e in found["errors"]]
        if found["threads"]:
            lines.append(f"it starts thread(s) {', '.join(found['threads'])}: start them in a cell, not at import")
        if found["cuda"]:
            lines.append("it initialises CUDA: a process forked after that cannot use it")
        if found["fork"]:
            lines.append(f"{found['fork']}: compute with torch in a cell, not at import")
    lines = [f"conformance: {', '.join(modules)}: import: {line}" for line in lines]
    if raise_on_failure and lines:
        raise ConformanceError("\n".join(lines))
    return lines


def _resolve(method_or_name) -> Method:
    if isinstance(method_or_name, Method):
        return method_or_name
    from ..plugins import registry

    return registry().method(method_or_name)


def fixed_batch(generator_seed: int = 1) -> dict:
    """Four examples of different lengths, right-padded as the arena pads (loss on answers only)."""
    g = torch.Generator().manual_seed(generator_seed)
    items = [
        Encoded(str(i), torch.randint(3, VOCAB, (p,), generator=g).tolist(),
                torch.randint(3, VOCAB, (a,), generator=g).tolist() + [EOS])
        for i, (p, a) in enumerate([(9, 3), (6, 4), (11, 2), (7, 5)])
    ]
    return collate(items, PAD)


def generation_prompts(generator_seed: int = 2) -> list[list[int]]:
    """Prompts of two lengths, so batches of several equal-length prompts are exercised."""
    g = torch.Generator().manual_seed(generator_seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (5, 5, 8)]


@dataclass
class _Run:
    """One seeded run: the base's state before the method, the model after one step, the losses."""

    base_named: list
    trained: set  # the base parameters the method declares it trains (Method.trained_base)
    base_before: dict
    base_logits: torch.Tensor
    model: torch.nn.Module
    loss_before: float = math.nan
    step_loss: float = math.nan
    loss_after: float = math.nan
    optimizer_params: list = field(default_factory=list)


def _eval_loss(model, batch) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss
    model.train(was_training)
    return float(loss)


def _start(method, params, arch, seed, batch) -> _Run:
    """A fresh base model, its logits, then the method applied from ``seed`` (as a cell does)."""
    base = tiny_model(arch, seed=0)
    base_named = list(base.named_parameters())
    before = {n: p.detach().clone() for n, p in base_named}
    base_logits = real_logits(base, batch)
    trained = trained_base_names(method, base, dict(params))
    torch.manual_seed(seed)
    model = method.apply(base, dict(params))
    return _Run(base_named, trained, before, base_logits, model)


def _step(method, run: _Run, params, batch) -> None:
    """The loss before, one step of the arena's optimiser (with the method's parameter groups
    and its ``after_step``) in train mode, the loss after."""
    run.loss_before = _eval_loss(run.model, batch)
    settings = TrainSettings(lr=float(params["lr"]), warmup=0.0)
    optimizer, schedule = make_optimizer(run.model, settings, steps=1, method=method, params=dict(params))
    run.optimizer_params = [p for group in optimizer.param_groups for p in group["params"]]
    run.model.train()
    loss = run.model(**batch).loss
    loss.backward()
    run.step_loss = loss.item()
    if settings.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.optimizer_params, settings.grad_clip)
    optimizer.step()
    schedule.step()
    method.after_step(run.model, 0, 1)
    run.loss_after = _eval_loss(run.model, batch)


def _check_architecture(method, params, arch, seed, directory: Path) -> list[CheckResult]:
    results: list[CheckResult] = []

    def record(check: str, fn) -> bool:
        start = time.perf_counter()
        try:
            detail = fn()
        except Exception as e:  # a check that raises is a failed check, reported in one line
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            detail = f"raised {type(e).__name__}: {message} on {arch}"
        status = "failed" if detail else "passed"
        results.append(CheckResult(method.name, check, arch, status, detail or "", time.perf_counter() - start))
        return not detail

    def skip(*checks):
        results.extend(CheckResult(method.name, c, arch, "skipped") for c in checks)

    batch = fixed_batch()
    state: dict = {}

    def applies():
        state["run"] = run = _start(method, params, arch, seed, batch)
        with torch.random.fork_rng(devices=[]):  # leave the RNG as a cell would find it
            out = run.model(**batch)
        loss, logits = getattr(out, "loss", None), getattr(out, "logits", None)
        if not torch.is_tensor(loss) or loss.dim() != 0 or not torch.isfinite(loss):
            return f"forward with labels gives no finite scalar .loss on {arch}"
        if not torch.is_tensor(logits) or logits.shape[0] != batch["input_ids"].shape[0]:
            return f"forward gives no .logits with one row per example on {arch}"
        run.model.zero_grad(set_to_none=True)
        return None

    if not record("applies", applies):
        skip(*CHECKS[1:-1])  # the last, quantized, is checked once per method
        return results
    run: _Run = state["run"]

    record("params", lambda: _params(method, params, arch))
    if method.starts_from_base:
        record("starts-from-base", lambda: _on(arch, starts_from_base_error(run.model, batch, run.base_logits)))
    else:
        skip("starts-from-base")

    leaked = leaked_base_parameters(run.trained, run.base_named)
    stepped = record("loss", lambda: _loss(method, run, params, batch, arch))
    record("trainable", lambda: _trainable(method, run, arch, stepped))
    record("frozen", lambda: _frozen(method, run, leaked, arch, stepped))
    record("generation", lambda: _generation(run.model, arch))
    record("save-load", lambda: _save_load(method, params, run.model, arch, batch, directory))
    if stepped:
        record("seed", lambda: _seed(method, params, arch, seed, batch, run))
    else:
        skip("seed")
    if method.base_view(run.model) is not None:
        record("base-view", lambda: _base_view(method, run, batch, arch))
    else:
        skip("base-view")
    if method.mergeable:  # last: merging may change the model in place
        record("merge", lambda: _merge(method, run.model, arch))
    else:
        skip("merge")
    return sorted(results, key=lambda r: CHECKS.index(r.check))


def _on(arch: str, error: str | None) -> str | None:
    return f"{error} on {arch}" if error else None


def _params(method, params, arch) -> str | None:
    from ..models.loading import stand_in

    try:
        with torch.random.fork_rng(devices=[]):  # building a model draws random numbers; the run's stay as they were
            method.check_params(dict(params), stand_in(tiny_config(arch)))
    except ValueError as e:
        return f"check_params rejects the settings apply() worked with ({str(e).strip().splitlines()[0]}) on {arch}"
    return None


def _loss(method, run: _Run, params, batch, arch) -> str | None:
    if count_parameters(run.model, trainable_only=True) == 0:
        return f"nothing to optimise: no parameter requires grad on {arch}"
    _step(method, run, params, batch)
    if not math.isfinite(run.loss_after):
        return f"loss is {run.loss_after} after one step on {arch}"
    if not run.loss_after < run.loss_before:
        return (f"one step with lr {params['lr']:g} did not lower the loss on a fixed batch "
                f"({run.loss_before:.5f} -> {run.loss_after:.5f}) on {arch}")
    return None


def _trainable(method, run: _Run, arch: str, stepped: bool) -> str | None:
    model = run.model
    count = count_parameters(model, trainable_only=True)
    if count == 0:
        return f"no parameter requires grad on {arch}"
    claimed = method.trainable_count(model)
    if claimed is not None and claimed != count:
        return f"the method counts {claimed:,} trainable parameters, the core counts {count:,} on {arch}"
    if not stepped:
        return None
    trainable = {id(p) for p in unique_parameters(model, trainable_only=True)}
    seen = {id(p) for p in run.optimizer_params}
    if seen != trainable:
        return f"the optimiser holds {len(seen)} tensors, {len(trainable)} require grad on {arch}"
    names = {id(p): n for n, p in model.named_parameters()}
    dead = [names.get(id(p), "?") for p in unique_parameters(model, trainable_only=True) if p.grad is None]
    if dead:
        return f"{len(dead)} trainable tensors get no gradient (e.g. {dead[0]}) on {arch}"
    return None


def _frozen(method, run: _Run, leaked, arch: str, stepped: bool) -> str | None:
    if leaked:
        total = sum(n for _, n in leaked)
        return f"{total:,} base parameters declared frozen require grad (e.g. {leaked[0][0]}) on {arch}"
    frozen = [(n, p) for n, p in run.base_named if n not in run.trained]
    with_grad = [n for n, p in frozen if p.grad is not None]
    if with_grad:
        return f"base parameters declared frozen got a gradient (e.g. {with_grad[0]}) on {arch}"
    changed = [n for n, p in frozen if not torch.equal(p.detach().to(run.base_before[n].device), run.base_before[n])]
    if changed:
        when = "after one step" if stepped else "after apply"
        return f"{len(changed)} base tensors declared frozen changed {when} (e.g. {changed[0]}) on {arch}"
    return None


def _generation(model, arch: str) -> str | None:
    prompts = generation_prompts()
    cached = greedy_generate(model, prompts, max_new_tokens=6, eos_id=EOS, pad_id=PAD, device="cpu")
    for i, (prompt, got) in enumerate(zip(prompts, cached)):
        if got != greedy_by_forward(model, prompt, 6, eos_id=EOS, device="cpu"):
            return f"cached generate differs from forward decoding on {arch} (prompt {i})"
    return None


def _save_load(method, params, model, arch, batch, directory: Path) -> str | None:
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    method.save(model, directory, dict(params))
    loaded = method.load(tiny_model(arch, seed=0), directory, dict(params))
    loaded.eval()
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if got.shape != want.shape:
        return f"the loaded model's logits have shape {tuple(got.shape)}, the saved model's {tuple(want.shape)} on {arch}"
    diff = (got - want).abs().max().item()
    if not diff <= 1e-5:
        return f"the loaded model's logits differ from the saved model's by up to {diff:.3g} on {arch}"
    return None


def _base_view(method, run: _Run, batch, arch) -> str | None:
    with method.base_view(run.model) as base:
        got = real_logits(base, batch)
    diff = (got - run.base_logits).abs().max().item()
    if not diff <= 1e-5 + 1e-5 * run.base_logits.abs().max().item():
        return f"with the method switched off (base_view) the logits differ from the base model's by up to {diff:.3g} on {arch}"
    return None


def _merge(method, model, arch) -> str | None:
    from ..measures.inference import logits_on, merge_check

    prompts = generation_prompts()
    before = logits_on(model, prompts)
    merged = method.merge(model)
    diff, ok = merge_check(before, logits_on(merged, prompts), rtol=1e-5)
    return None if ok else f"merged logits differ from unmerged ones by up to {diff:.3g} on {arch}"


def _seed(method, params, arch, seed, batch, first: _Run) -> str | None:
    again = _start(method, params, arch, seed, batch)
    _step(method, again, params, batch)
    a = (first.loss_before, first.step_loss, first.loss_after)
    b = (again.loss_before, again.step_loss, again.loss_after)
    if not all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(a, b)):
        return f"two runs from seed {seed} give different losses ({a[2]:.6f} vs {b[2]:.6f}) on {arch}"
    return None


#: the architecture of the ``quantized`` check: LLaMA's layout 64 wide (bitsandbytes' CPU 4-bit
#: kernels need layers at least one 64-weight block wide, wider than the 32 of the kit's llama)
QUANTIZED_ARCHITECTURE = "mistral"


def _check_quantized(method, params, seed, directory: Path, architectures,
                     arch: str = QUANTIZED_ARCHITECTURE) -> list[CheckResult]:
    """The ``quantized`` check: a ``quantized_base`` claim holds on ``arch`` in each kind it
    claims (NF4 standing for FP4, the same layers with another code book); skipped on every
    one of ``architectures`` when there is no claim, or no bitsandbytes."""
    import importlib.util

    from ..models.quantize import kinds

    claimed = [q for q in kinds(method) if q != "fp4"] or list(kinds(method))  # fp4 runs as nf4 does
    if not claimed or importlib.util.find_spec("bitsandbytes") is None:
        return [CheckResult(method.name, "quantized", a, "skipped") for a in architectures]
    start = time.perf_counter()
    try:
        detail = next(filter(None, (_quantized(method, params, arch, seed, directory, q) for q in claimed)), None)
    except Exception as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail = f"raised {type(e).__name__}: {message} on {arch}"
    return [CheckResult(method.name, "quantized", arch, "failed" if detail else "passed", detail or "",
                        time.perf_counter() - start)]


def _quantized(method, params, arch, seed, directory: Path, q: str) -> str | None:
    from ..models.quantize import RTOL, quantized_layers

    where = f"{arch} in {q}"
    base = tiny_quantized_model(arch, q, directory / q)
    layers = quantized_layers(base)
    batch = fixed_batch()
    base_logits = real_logits(base, batch)  # on the CPU the first forward repacks 4-bit weights: copy them after it
    # the quantized weights, and a copy: peft wraps their layers, the tensors stay the same objects
    packed = [(n, p, p.detach().clone()) for n, p in base.named_parameters() if p.dtype in (torch.uint8, torch.int8)]
    torch.manual_seed(seed)
    model = method.apply(base, dict(params))
    if not quantized_layers(model) or len(quantized_layers(model)) < len(layers):
        return f"apply() replaced the quantized layers of the base ({len(layers)} before) on {where}"
    if method.starts_from_base:
        error = starts_from_base_error(model, batch, base_logits, rtol=RTOL)
        if error:
            return f"{error} on {where}"
    count = count_parameters(model, trainable_only=True)
    claimed = method.trainable_count(model)
    if count == 0 or (claimed is not None and claimed != count):
        return f"the core counts {count:,} trainable parameters, the method {claimed} on {where}"
    run = _Run([], set(), {}, base_logits, model)
    _step(method, run, params, batch)
    if not run.loss_after < run.loss_before:
        return f"one step did not lower the loss ({run.loss_before:.5f} -> {run.loss_after:.5f}) on {where}"
    changed = [n for n, p, before in packed if p.requires_grad or not torch.equal(p.detach(), before)]
    if changed:
        return f"{len(changed)} quantized base weights changed or require grad after one step (e.g. {changed[0]}) on {where}"
    return None
