"""``leitai plan``: each method's training memory for a model, from its config alone, as a table
and a chart against the budget (docs/plan.md); the plan itself is :mod:`suite.memory.plan`."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config.sources import DIMENSION_CHOICES, parse_choices
from ..errors import UsageError
from ..memory.plan import plan_device, plan_dtype, plan_model, read_config
from ..memory.prediction import MethodPlan, parse_bytes
from ..models.loading import check_attention
from ..models.precision import DTYPES

#: the run settings ``leitai plan`` takes (one definition each, in suite/config/settings.py)
PLAN_SETTINGS = ("methods", "model", "batch_size", "grad_accum", "max_len", "dtype", "gradient_checkpointing", "device",
                 "attn_implementation", "gpus_per_cell", "shard", "trainable_dtype", "optimizer", "trust_remote_code",
                 "memory")
#: columns of the table, with their headers
COLUMNS = {"method": "method", "trainable_params": "trainable", "weights_bytes": "weights GiB",
           "grads_bytes": "grads GiB", "optimizer_bytes": "optimizer GiB", "activation_bytes": "activations GiB",
           "peak_activation_bytes": "act.+grads peak GiB", "transient_bytes": "logits GiB",
           "predicted_peak_bytes": "predicted peak GiB", "fits": "fits", "max_batch_size": "max batch"}


def add_arguments(parser) -> None:
    from ..config import settings

    settings.add_arguments(parser, only=PLAN_SETTINGS)
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="override a method setting, e.g. --set lora.r=16 (repeatable)")
    parser.add_argument("--chart", default="plan.png", metavar="PATH",
                        help="where to write the chart: .png or .svg, or none (default: plan.png)")


def table(plans: list[MethodPlan], budget: int | None):
    """The plans as a table, in GiB (MiB when every peak is under 1 GiB)."""
    import pandas as pd

    small = max((p.predicted_peak_bytes for p in plans), default=0) < 2**30
    unit, scale = ("MiB", 2**20) if small else ("GiB", 2**30)
    rows = []
    for p in plans:
        row = {COLUMNS[k]: v for k, v in p.row().items() if k in COLUMNS}
        for k in COLUMNS:
            if k.endswith("_bytes"):
                row[COLUMNS[k]] = round(getattr(p, k) / scale, 2)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS.values()))
    frame.columns = [c.replace("GiB", unit) for c in frame.columns]
    if budget is None:
        frame = frame.drop(columns=["fits", "max batch"])
    else:
        frame["fits"] = frame["fits"].map({True: "yes", False: "NO"})
        frame["max batch"] = frame["max batch"].map(lambda v: "" if v is None or v != v else str(int(v)))
    return frame


def chart(plans: list[MethodPlan], budget: int | None, path: Path, title: str) -> Path:
    """Each method's predicted peak as stacked bars (weights, gradients, optimizer, activations
    with gradients at their peak, logits) against the budget line, in the report's style."""
    from ..report.figures import _figure, _style

    parts = [("weights", lambda p: p.weights_bytes), ("optimizer", lambda p: p.optimizer_bytes),
             ("activations + grads (peak)", lambda p: p.peak_activation_bytes),
             ("logits", lambda p: p.transient_bytes)]
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    with _style():
        fig = _figure(7, 0.9 + 0.32 * len(plans))
        ax = fig.subplots()
        names = [p.method for p in plans]
        left = [0.0] * len(plans)
        for (label, value), colour in zip(parts, colours):
            widths = [value(p) / 2**30 for p in plans]
            ax.barh(names, widths, left=left, color=colour, height=0.6, label=label)
            left = [a + b for a, b in zip(left, widths)]
        if budget is not None:
            ax.axvline(budget / 2**30, color="black", ls="--", lw=1, label=f"budget {budget / 2**30:.1f} GiB")
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("predicted peak training memory (GiB)")
        ax.set_title(title, loc="left", fontsize=9)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5 / (0.9 + 0.32 * len(plans))), ncol=5, fontsize=7)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return path


def _methods(names: list, registry, overrides: dict) -> tuple[dict, dict]:
    from ..methods.method import method_params

    if not names:
        names = registry.in_default_run("methods")
    elif names == ["all"]:
        names = sorted(registry.methods)
    methods = {n: registry.method(n, overrides.get(n)) for n in names}
    try:
        params = {n: method_params(m, overrides.get(n)) for n, m in methods.items()}
    except ValueError as e:
        raise UsageError(str(e)) from None
    return methods, params


def cmd_plan(args) -> int:
    from ..config import settings
    from ..config.sources import parse_set
    from ..plugins import registry

    reg = registry()
    given = {k: v for k, v in vars(args).items() if k in PLAN_SETTINGS}
    settings.check({k: v for k, v in given.items() if k != "methods"})
    defaults = settings.ShootoutConfig()
    get = lambda k: given.get(k, getattr(defaults, k))  # noqa: E731
    methods_arg = [m.strip() for m in str(given.get("methods", "")).split(",") if m.strip()]
    overrides = parse_set(args.set)
    methods, params = _methods(methods_arg, reg, overrides)
    model = get("model") or reg.default("models")
    budget = parse_bytes(get("memory")) if get("memory") else None
    device = plan_device(get("device"))
    dtype = plan_dtype(get("dtype"), device)
    config = read_config(model, reg, get("trust_remote_code"))
    if get("attn_implementation") != "auto":  # the kernel the plan traces (eager keeps the attention weights)
        try:
            check_attention(config, get("attn_implementation"), device, get("trust_remote_code"))
        except ValueError as e:
            raise UsageError(str(e)) from None
        config._attn_implementation = get("attn_implementation")
    run = {}
    for key in DIMENSION_CHOICES:  # one value each: leitai plan plans one variant
        (run[key],) = parse_choices(get(key), DIMENSION_CHOICES[key], "--" + key.replace("_", "-"))[:1] or [None]
        if "," in str(get(key)):
            raise UsageError(f"--{key.replace('_', '-')}: leitai plan plans one value, not a list ({get(key)})")
    processes, shard = get("gpus_per_cell"), get("shard")
    if shard != "none" and processes < 2:
        raise UsageError(f"--shard {shard} shards a cell over its processes: give --gpus-per-cell 2 or more")
    plans = plan_model(config, methods, params, get("batch_size"), get("max_len"), dtype, device,
                       get("gradient_checkpointing"), budget, get("trust_remote_code"), label=model, processes=processes,
                       trainable_dtype=DTYPES[run["trainable_dtype"]], optimizer=run["optimizer"], shard=shard)
    accum = f" (x{get('grad_accum')} accumulated: memory is one micro-batch's)" if get("grad_accum") > 1 else ""
    per = (f", per GPU of {processes} ({'FSDP-sharded' if shard != 'none' else 'data parallel'}; each takes "
           f"{-(-get('batch_size') // processes)} of the batch)" if processes > 1 else "")
    print(f"leitai plan: {model}, batch {get('batch_size')} x {get('max_len')} tokens{accum}, {str(dtype)[6:]} weights "
          f"(trainable {run['trainable_dtype']}), {run['optimizer']}, {device}"
          f"{', gradient checkpointing' if get('gradient_checkpointing') else ''}{per}")
    print(table(plans, budget).to_markdown(index=False))
    if args.chart != "none":
        title = f"{model}: batch {get('batch_size')} x {get('max_len')}, {str(dtype)[6:]}"
        print(f"leitai plan: chart in {chart(plans, budget, Path(args.chart), title)}")
    refused = [p.method for p in plans if p.fits is False]
    if refused:
        print(f"leitai plan: over the {get('memory')} budget: {', '.join(refused)}", file=sys.stderr)
    return 0
