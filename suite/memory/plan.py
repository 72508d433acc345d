"""A model's plan: every method's predicted training memory at one shape, against a budget
(what ``leitai plan`` prints, and the check ``leitai run --memory`` makes before any cell)."""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

from ..errors import UsageError
from .prediction import MethodPlan, fit, gib, parse_bytes, predict, synthetic_batch


def read_config(name: str, registry, trust_remote_code: bool = False):
    """The config of ``--model name``: a registered model's, a local directory's config.json,
    or a Hugging Face id's (the cache, else the hub: config.json only, never weights)."""
    from transformers import AutoConfig

    from ..models.loading import resolve

    spec = resolve(name, registry, trust_remote_code)
    try:
        if name in registry.models:
            config = spec.load_config()
            if config is None:
                raise ValueError("this registered model gives no config to plan from")
            return config
        path = Path(name).expanduser()
        if path.exists() and not (path / "config.json").is_file():
            raise ValueError("no config.json there (not a model directory)")
        return AutoConfig.from_pretrained(str(path) if path.exists() else name, trust_remote_code=trust_remote_code)
    except Exception as e:  # OSError (no such repo, offline), ValueError (unknown model type)...
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--model {name}: {text}") from None


def plan_dtype(dtype: str, device: str):
    import torch

    from ..models.precision import DTYPES

    if dtype != "auto":
        return DTYPES[dtype]
    return torch.bfloat16 if device == "cuda" else torch.float32


def plan_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def plan_model(config, methods: dict, params: dict, batch_size: int, max_len: int, dtype, device: str,
               gradient_checkpointing: bool = False, budget: int | None = None, trust_remote_code: bool = False,
               label: str = "", processes: int = 1, **run) -> list[MethodPlan]:
    """One :class:`MethodPlan` per method at ``batch_size`` x ``max_len`` (every token after the
    first carries the loss: the largest logits), per process of a cell of ``processes`` (each
    takes its share of the batch; ``run``: the trainable dtype, optimiser and sharding,
    :func:`suite.memory.prediction.predict`); a one-line UsageError for a model with no causal-LM
    class or a method that cannot be built on it (the method's own message)."""
    from .prediction import build_meta

    vocab = getattr(config.get_text_config(), "vocab_size", None) or 2
    batch = synthetic_batch(math.ceil(batch_size / processes), max_len, vocab)
    try:
        build_meta(config, dtype, trust_remote_code)  # the causal-LM class exists: checked once
    except ValueError as e:
        raise UsageError(f"--model {label}: {e}") from None
    plans = []
    for name, method in methods.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = predict(method, params[name], config, batch, dtype, gradient_checkpointing, device,
                               trust_remote_code, processes=processes, **run)
        except Exception as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"method {name} cannot be planned on {label}: {type(e).__name__}: {text}") from None
        plan = fit(plan, math.ceil(batch_size / processes), budget)
        if plan.max_batch_size and processes > 1:  # the batch of the whole cell, shared out as training does
            plan.max_batch_size *= processes
        plans.append(plan)
    return plans


def check_budget(config, resolved, cells) -> None:
    """``leitai run --memory``: before any cell starts, one line per cell whose predicted peak
    would not fit the budget, then a UsageError (exit status 2). Nothing when no budget is set."""
    if not config.memory:
        return
    from ..models.precision import DTYPES
    from ..plugins import registry

    budget = parse_bytes(config.memory)
    reg = registry()
    device = plan_device(config.device)
    dtype = plan_dtype(config.dtype, device)
    model_config = read_config(config.model, reg, config.trust_remote_code)
    over = {}
    for kind in sorted({(c.trainable_dtype, c.optimizer) for c in cells}):  # each a variant of the methods
        names = sorted({c.method for c in cells if c.method in resolved.methods and (c.trainable_dtype, c.optimizer) == kind})
        plans = plan_model(model_config, {n: resolved.methods[n] for n in names}, resolved.params, config.batch_size,
                           config.max_len, dtype, device, config.gradient_checkpointing, budget,
                           config.trust_remote_code, label=config.model, processes=config.gpus_per_cell,
                           trainable_dtype=DTYPES[kind[0]], optimizer=kind[1], shard=config.shard)
        over.update({(p.method, *kind): p for p in plans if p.fits is False})
    for cell in cells:
        p = over.get((cell.method, cell.trainable_dtype, cell.optimizer))
        if p is not None:
            print(f"leitai: {cell.run_id}: predicted peak {gib(p.predicted_peak_bytes)} GiB > --memory {config.memory}"
                  f" (largest batch that fits at --max-len {config.max_len}: {p.max_batch_size})", file=sys.stderr)
    if over:
        names = sorted({key[0] for key in over})
        raise UsageError(f"{len(names)} method(s) would not fit --memory {config.memory}: {', '.join(names)} "
                         "(leitai plan shows why; lower --batch-size or --max-len, or drop them)")
