"""The ``leitai`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError

EPILOG = (
    "Writing a plugin: docs/plugins/index.md (start with 'leitai new-plugin NAME'). "
    "What a shootout writes (results.csv, summary.md, report.html, runs/): docs/reading-a-report.md and docs/records.md."
)


CORE_COMMANDS = ("run", "report", "list", "new-plugin", "plan", "export")


def _parser(plugin_commands=(), executors=None) -> argparse.ArgumentParser:
    """The command line; ``executors`` (name -> class) add their own options to ``run``."""
    from ..config import settings

    p = argparse.ArgumentParser(
        prog="leitai", description="擂台 leitai: a shootout of fine-tuning methods on Chinese instruction tasks.",
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a shootout and write its report", epilog=EPILOG)
    settings.add_arguments(run)  # one flag per setting; only flags the user gives override the TOML config
    run.add_argument("--config", help="TOML file with the same settings and [method.NAME] tables")
    run.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                     help="override a method setting, e.g. --set lora.r=16 (repeatable)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    for name, cls in sorted((executors or {}).items()):
        group = run.add_argument_group(f"options of the {name} executor")
        before = len(run._actions)
        try:
            cls.add_arguments(group)
        except Exception:  # a broken executor plugin, or one whose flag clashes: it adds none
            continue
        for action in run._actions[before:]:
            action.default = argparse.SUPPRESS  # given flags only, like the settings

    rep = sub.add_parser("report", help="rebuild the report files from DIR/runs/*/record.json")
    rep.add_argument("dirs", nargs="+", help="shootout directories (several are merged)")
    rep.add_argument("--out", help="where to write (default: DIR itself; required with several DIRs, "
                     "which then gets a copy of every merged record.json)")

    ls = sub.add_parser("list", help="show what the plugins registered")
    ls.add_argument("what", nargs="?", default="methods",
                    choices=["methods", "tasks", "models", "executors", "side-corpora", "commands", "plugins"])

    from .plan import add_arguments as plan_arguments

    plan_arguments(sub.add_parser("plan", help="predict each method's training memory for a model from its config "
                                  "alone, against a budget (docs/plan.md)"))
    from .export import add_arguments as export_arguments

    export_arguments(sub.add_parser("export", help="a finished run's trained model in the form people deploy: "
                                    "PEFT adapter, merged or whole model, tokenizer (docs/after-the-shootout.md)"))
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
    plugin_commands, executors = {}, {}
    if not argv or argv[0] not in ("report", "list", "new-plugin"):  # plugins add commands and run's options
        from ..plugins import registry

        plugin_commands, executors = registry().commands, registry().executors
    args = _parser(plugin_commands.values(), executors).parse_args(argv)
    from ..stopping import SIGTERM_STATUS, Terminated, sigterm_stops

    try:
        from .export import cmd_export
        from .plan import cmd_plan

        commands = {"run": cmd_run, "report": cmd_report, "list": cmd_list, "new-plugin": cmd_new_plugin,
                    "plan": cmd_plan, "export": cmd_export}
        with sigterm_stops():  # a batch scheduler's stop is handled as Ctrl-C is
            if args.command in commands:
                return commands[args.command](args)
            return plugin_commands[args.command].run(args)
    except UsageError as e:
        print(f"leitai: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the command could not read or write (disk full, permissions...)
        where = f"{e.filename}: " if e.filename else ""
        then = f"; {e.remedy}" if getattr(e, "remedy", None) else ""  # a full disk (suite.atomic.remedy)
        print(f"leitai: error: {where}{e.strerror or e}{then}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        print("leitai: interrupted; finished runs are kept (rerun with --resume)", file=sys.stderr)
        return SIGTERM_STATUS if isinstance(e, Terminated) else 130


def _warn_failures(registry) -> None:
    for info in registry.failures:
        print(f"leitai: warning: skipped plugin {info.name} ({info.source}): {info.error}", file=sys.stderr)


def cmd_run(args) -> int:
    from ..cell.records import read_records
    from ..config.sources import build_config, parse_set
    from ..plugins import registry
    from ..shootout.executors import option_owners
    from ..shootout.runner import run_shootout, truncation_warnings

    reg = registry()
    owners = option_owners(reg)
    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config", "set", "quiet") and k not in owners}
    cli["method_overrides"] = parse_set(args.set)
    cli["executor_options"] = {k: v for k, v in vars(args).items() if k in owners}
    config = build_config(cli, args.config, frozenset(owners))
    _warn_failures(reg)
    config.fill_defaults(reg)
    outcome = run_shootout(config, reg, progress=not args.quiet)
    for line in truncation_warnings(read_records(outcome.out_dir), config.max_len):
        print(f"leitai: warning: {line}", file=sys.stderr)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.statuses.items())) or "nothing new"
    more = "".join(f", {n} {what}" for n, what in ((outcome.tuning, "tuning runs"), (outcome.baselines, "baseline runs")) if n)
    print(f"leitai: {outcome.ran} runs ({counts}), {outcome.skipped} already done{more}; report in {outcome.out_dir}")
    print(f"leitai: summary: {outcome.out_dir / 'summary.md'}")
    return 0


def cmd_report(args) -> int:
    from ..report import write_report
    from ..shootout import outdir

    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not (d / "runs").is_dir():
            raise UsageError(f"{d}: no runs/ directory (not a shootout output)")
    if len(dirs) > 1 and not args.out:
        raise UsageError("merging several directories needs --out (the merged report gets its own directory)")
    out = outdir.prepare(args.out) if args.out else dirs[0]
    results = write_report(dirs, out)
    print(f"leitai: report of {len(results)} runs written to {out}")
    return 0


def cmd_list(args) -> int:
    from ..plugins import registry

    reg = registry()
    if args.what == "plugins":
        for info in sorted(reg.plugins.values(), key=lambda i: i.name):
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.registered.items()) or "-"
            state = f"FAILED: {info.error}" if info.error else what
            print(f"{info.name:<16} {info.source:<22} {state}")
        return 0
    kind = args.what.replace("-", "_")
    table = getattr(reg, kind)
    marked = defaults_of(reg, kind)
    for name in sorted(table):
        obj = table[name]
        origin = reg.plugins[reg.origin[(kind, name)]].source
        mark = "(default) " if name in marked else ""
        line = f"{name:<16} {mark}{obj.description}  [{origin}]"
        if args.what == "methods":
            line += "\n" + " " * 17 + "defaults: " + ", ".join(f"{k}={v}" for k, v in obj.defaults.items())
        elif args.what == "tasks":
            line += "\n" + _task_sizes(obj)
        print(line)
    if args.what == "models":  # what --model takes besides the registered names
        from ..testing import ALL_ARCHITECTURES

        print(f"{'(any)':<16} a Hugging Face causal LM id or path; every built-in method is tested on tiny models "
              f"of {', '.join(ALL_ARCHITECTURES)} (docs/real-models.md, Architectures)")
    if marked:
        print(f"(default): {DEFAULT_MEANS[kind]}")
    _warn_failures(reg)
    return 0


#: what ``(default)`` means in ``leitai list KIND``
DEFAULT_MEANS = {
    "methods": "in the shootout leitai run runs without --methods (--methods all runs every one)",
    "tasks": "in the shootout leitai run runs without --tasks",
    "models": "the model used without --model",
    "executors": "the executor used without --executor",
    "side_corpora": "the side corpus used without --side-corpus",
}


def defaults_of(reg, kind: str) -> set[str]:
    """The names ``leitai run`` uses of ``kind`` when the user names none: every method and task
    marked ``default`` (a method is unless it says otherwise), the one model, executor and side
    corpus :meth:`~suite.plugins.Registry.default` picks; commands have none."""
    if kind in ("methods", "tasks"):
        return set(reg.in_default_run(kind))
    if kind in DEFAULT_MEANS:
        return {reg.default(kind, none="")} - {""}
    return set()


def cached_split_sizes(task) -> tuple[dict, dict]:
    """A task's split sizes for the default run and the full task, kept in leitai's cache
    (:mod:`suite.data.cache`, entry ``task-sizes.json``) by name, version, source and caps: counting
    them means reading whole corpora, which takes seconds; a task bumps ``version`` when its
    examples change."""
    from ..data import cache

    key = f"{task.name}|{task.version}|{task.source}|{sorted(task.default_sizes.items())}|{task.max_chars or ''}"
    sizes = cache.load_json("task-sizes.json") or {}
    if key not in sizes:
        sizes[key] = [task.split_sizes(dict(task.default_sizes)), task.split_sizes(None)]
        cache.store_json("task-sizes.json", sizes)
    default, full = sizes[key]
    return default, full


def _task_sizes(task) -> str:
    """A task's score and split sizes, for the default run and for ``--task-size full``."""
    def fmt(sizes):
        return "/".join(str(sizes.get(s, "?")) for s in ("train", "dev", "test"))

    try:
        default, full = (fmt(s) for s in cached_split_sizes(task))
    except Exception as e:  # a broken task plugin is listed, not fatal
        default = full = f"? ({type(e).__name__}: {e})"
    extra = f"; max {task.max_chars} characters in capped runs" if task.max_chars else ""
    return f"{'':17}score: {task.score_name}; train/dev/test default {default}{extra}; full {full}"


def cmd_new_plugin(args) -> int:
    from ..plugins import registry
    from .scaffold import new_plugin

    root, files = new_plugin(args.name, Path(args.dir) if args.dir else None, registry())
    print(f"leitai: wrote the plugin package for method {args.name!r} in {root}:")
    for f in files:
        print(f"  {f.relative_to(root)}")
    print(f"next: pip install -e {root} && leitai list methods && pytest {root}")
    return 0

