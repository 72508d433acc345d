"""The ``leitai`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UsageError

EPILOG = (
    "Writing a method plugin: docs/plugins.md (start with 'leitai new-plugin NAME'). "
    "Output files: README.md, 'Output'."
)


CORE_COMMANDS = ("run", "report", "list", "new-plugin")


def _parser(plugin_commands=()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leitai", description="擂台 leitai: a shootout of fine-tuning methods on Chinese instruction tasks.",
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a shootout and write its report", epilog=EPILOG)
    S = argparse.SUPPRESS  # only flags the user gives override the TOML config
    run.add_argument("--methods", default=S,
                     help="comma-separated method names, peft:PATH for your own PEFT config, or all "
                          "(default: the default shootout's methods)")
    run.add_argument("--tasks", default=S,
                     help="comma-separated task names, or file:PATH[?score=NAME] for your own data (default: zh-sentiment)")
    run.add_argument("--model", default=S, help="tiny-zh (default) or a Hugging Face model id / local path")
    run.add_argument("--seeds", default=S, help="number of seeds (0..N-1) or a comma-separated list (default 1)")
    run.add_argument("--max-steps", type=int, default=S, dest="max_steps", help="training steps per run (default 150)")
    run.add_argument("--batch-size", type=int, default=S, dest="batch_size", help="examples per step (default 16)")
    run.add_argument("--max-len", type=int, default=S, dest="max_len", help="tokens per example at most (default 256)")
    run.add_argument("--task-size", default=S, dest="task_size",
                     help="default (CPU-sized splits), full, or a number of training examples")
    run.add_argument("--out", default=S, help="output directory (default reports/<timestamp>)")
    run.add_argument("--resume", action="store_true", default=S, help="skip runs already finished in --out")
    run.add_argument("--device", default=S, help="auto (default), cpu or cuda")
    run.add_argument("--config", help="TOML file with the same settings and [method.NAME] tables")
    run.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                     help="override a method setting, e.g. --set lora.r=16 (repeatable)")
    run.add_argument("--trust-remote-code", action="store_true", default=S, dest="trust_remote_code",
                     help="allow a hub model's own code to run (off by default)")
    run.add_argument("--gradient-checkpointing", action="store_true", default=S, dest="gradient_checkpointing",
                     help="recompute activations in backward: less memory, about a third more time per step")
    run.add_argument("--executor", default=S, help="where cells run: local (default), ray, or a plugin's")
    run.add_argument("--workers", type=int, default=S, help="cells at once with the local executor (default 1)")
    run.add_argument("--devices", default=S, help="GPU ids to share out among local workers, e.g. 0,1,2,3")
    run.add_argument("--gpus-per-cell", type=int, default=S, dest="gpus_per_cell",
                     help="GPUs per cell; more than 1 runs the cell under accelerate's distributed launch (DDP)")
    run.add_argument("--cpus-per-cell", type=int, default=S, dest="cpus_per_cell",
                     help="CPU threads per cell (default: local cores / workers; ray 1)")
    run.add_argument("--ray-address", default=S, dest="ray_address", help="an existing Ray cluster (default: start a local one)")
    run.add_argument("--max-retries", type=int, default=S, dest="max_retries",
                     help="ray: re-runs of a cell whose worker died (default 2)")
    run.add_argument("--side-corpus", default=S, dest="side_corpus",
                     help="text forgetting is measured on: zh-news-side (default), another registered one, or none")
    run.add_argument("--side-corpus-size", type=int, default=S, dest="side_corpus_size",
                     help="side-corpus texts to measure forgetting on (default 128)")
    run.add_argument("--infer-prompts", type=int, default=S, dest="infer_prompts",
                     help="test prompts to time inference on, per run (default 8; 0: no timing)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    rep = sub.add_parser("report", help="rebuild the report files from DIR/runs/*/record.json")
    rep.add_argument("dirs", nargs="+", help="shootout directories (several are merged)")
    rep.add_argument("--out", help="where to write (default: DIR itself; required with several DIRs, "
                     "which then gets a copy of every merged record.json)")

    ls = sub.add_parser("list", help="show what the plugins registered")
    ls.add_argument("what", nargs="?", default="methods",
                    choices=["methods", "tasks", "models", "executors", "side-corpora", "commands", "plugins"])

    new = sub.add_parser("new-plugin", help="write an installable method-plugin package to start from",
                         epilog=EPILOG)
    new.add_argument("name", help="the method's name, e.g. my-adapter (lower case, digits, hyphens)")
    new.add_argument("--dir", help="where to write the package (default: ./leitai-NAME)")
    for command in plugin_commands:
        if command.name in CORE_COMMANDS:
            continue
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plugin_commands = {}
    if not argv or argv[0] not in CORE_COMMANDS:  # only then load plugins for their commands
        from .plugins import registry

        plugin_commands = registry().commands
    args = _parser(plugin_commands.values()).parse_args(argv)
    try:
        commands = {"run": cmd_run, "report": cmd_report, "list": cmd_list, "new-plugin": cmd_new_plugin}
        if args.command in commands:
            return commands[args.command](args)
        return plugin_commands[args.command].run(args)
    except UsageError as e:
        print(f"leitai: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leitai: interrupted; finished runs are kept (rerun with --resume)", file=sys.stderr)
        return 130


def _warn_failures(registry) -> None:
    for info in registry.failures:
        print(f"leitai: warning: skipped plugin {info.name} ({info.source}): {info.error}", file=sys.stderr)


def cmd_run(args) -> int:
    from .config import build_config, parse_set
    from .plugins import registry
    from .records import read_records
    from .runner import run_shootout, truncation_warnings

    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config", "set", "quiet")}
    cli["method_overrides"] = parse_set(args.set)
    config = build_config(cli, args.config)
    reg = registry()
    _warn_failures(reg)
    config.fill_defaults(reg)
    outcome = run_shootout(config, reg, progress=not args.quiet)
    for line in truncation_warnings(read_records(outcome.out_dir), config.max_len):
        print(f"leitai: warning: {line}", file=sys.stderr)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.statuses.items())) or "nothing new"
    print(f"leitai: {outcome.ran} runs ({counts}), {outcome.skipped} already done; report in {outcome.out_dir}")
    print(f"leitai: summary: {outcome.out_dir / 'summary.md'}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not (d / "runs").is_dir():
            raise UsageError(f"{d}: no runs/ directory (not a shootout output)")
    if len(dirs) > 1 and not args.out:
        raise UsageError("merging several directories needs --out (the merged report gets its own directory)")
    out = Path(args.out) if args.out else dirs[0]
    results = write_report(dirs, out)
    print(f"leitai: report of {len(results)} runs written to {out}")
    return 0


def cmd_list(args) -> int:
    from .plugins import registry

    reg = registry()
    if args.what == "plugins":
        for info in sorted(reg.plugins.values(), key=lambda i: i.name):
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.registered.items()) or "-"
            state = f"FAILED: {info.error}" if info.error else what
            print(f"{info.name:<16} {info.source:<22} {state}")
        return 0
    kind = args.what.replace("-", "_")
    table = getattr(reg, kind)
    for name in sorted(table):
        obj = table[name]
        origin = reg.plugins[reg.origin[(kind, name)]].source
        line = f"{name:<16} {obj.description}  [{origin}]"
        if args.what == "methods":
            line += "\n" + " " * 17 + "defaults: " + ", ".join(f"{k}={v}" for k, v in obj.defaults.items())
        elif args.what == "tasks":
            line += "\n" + _task_sizes(obj)
        print(line)
    _warn_failures(reg)
    return 0


def cached_split_sizes(task) -> tuple[dict, dict]:
    """A task's split sizes for the default run and the full task, cached on disk
    (``task-sizes.json`` in :func:`suite.taskdata.cache_dir`) by name, version and source: counting them
    means reading whole corpora, which takes seconds; a task bumps ``version`` when its
    examples change."""
    import json

    from .records import write_json_atomic
    from .taskdata import cache_dir

    root = cache_dir()
    if root is None:  # LEITAI_CACHE_DIR=off
        return task.split_sizes(dict(task.default_sizes)), task.split_sizes(None)
    path = root / "task-sizes.json"
    key = f"{task.name}|{task.version}|{task.source}|{sorted(task.default_sizes.items())}|{getattr(task, 'max_chars', '')}"
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = [task.split_sizes(dict(task.default_sizes)), task.split_sizes(None)]
        try:
            write_json_atomic(path, cache)
        except OSError:
            pass  # a read-only home only makes the next listing slow again
    default, full = cache[key]
    return default, full


def _task_sizes(task) -> str:
    """A task's score and split sizes, for the default run and for ``--task-size full``."""
    def fmt(sizes):
        return "/".join(str(sizes.get(s, "?")) for s in ("train", "dev", "test"))

    try:
        default, full = (fmt(s) for s in cached_split_sizes(task))
    except Exception as e:  # a broken task plugin is listed, not fatal
        default = full = f"? ({type(e).__name__}: {e})"
    extra = f"; max {task.max_chars} characters in capped runs" if getattr(task, "max_chars", None) else ""
    return f"{'':17}score: {task.score_name}; train/dev/test default {default}{extra}; full {full}"


def cmd_new_plugin(args) -> int:
    from .plugins import registry
    from .scaffold import new_plugin

    root, files = new_plugin(args.name, Path(args.dir) if args.dir else None, registry())
    print(f"leitai: wrote the plugin package for method {args.name!r} in {root}:")
    for f in files:
        print(f"  {f.relative_to(root)}")
    print(f"next: pip install -e {root} && leitai list methods && pytest {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
