"""The reference parts of the docs (``docs/``), generated from the code so they cannot drift.

``python -m suite.cli.docgen`` rewrites every region of the docs that sits between
``<!-- begin generated: NAME ... -->`` and ``<!-- end generated: NAME -->``;
``python -m suite.cli.docgen --check`` changes nothing and exits 1, naming the regions, when a
file differs from what the code gives (``tests/test_docs.py`` runs the same comparison). The
prose around the regions is written by hand. The regions, and the page each lives in
(:data:`FILES`):

``hooks``      every hook in :mod:`suite.hookspecs`, with its docstring (``docs/plugins/index.md``)
``api``        the plugin-facing API: what :mod:`suite` exports, and the helpers the guide names
               (:data:`suite.api.HELPERS`), with signatures, attributes and the docstrings' first paragraphs
               (``docs/api.md``)
``scorers``    :data:`suite.data.scorers.SCORERS` and the other scorers of :mod:`suite.data.scorers`
               (``docs/plugins/tasks.md``)
``columns``    the columns of ``results.csv``: the output contract's, the known extras, and the
               further measurements a run may add, each described in :data:`suite.report.columns.COLUMNS`
               (``docs/records.md``)
``methods``    every method leitai ships, with its defaults (``docs/methods.md``)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

from ..api import CORE, HELPERS, MOVED

#: the docs, when leitai runs from its source tree (``pip install -e``)
DOCS = Path(__file__).resolve().parents[2] / "docs"
COMMAND = "python -m suite.cli.docgen"

#: what to say about an entry that has no docstring of its own (its docstring wins once it has one)
NOTES = {
    "suite.hookimpl": 'pluggy\'s `HookimplMarker("leitai")`: decorate each hook implementation with `@hookimpl`.',
}

# ------------------------------------------------------------------ the columns of results.csv


def columns_region() -> str:
    from ..report.columns import COLUMN_PATTERNS, COLUMNS
    from ..report.frames import EXTRA_COLUMNS, RESULT_COLUMNS

    missing = [c for c in (*RESULT_COLUMNS, *EXTRA_COLUMNS) if c not in COLUMNS]
    if missing:
        raise KeyError(f"results.csv column(s) {', '.join(missing)} have no description in suite.report.columns.COLUMNS")
    further = [c for c in COLUMNS if c not in RESULT_COLUMNS and c not in EXTRA_COLUMNS]
    lines = ["| column | meaning |", "|---|---|"]
    for group, names in (("the output contract, in this order", RESULT_COLUMNS),
                         ("then these, in this order", EXTRA_COLUMNS),
                         ("then any other measurement of the run, sorted by name; the core's are", further)):
        lines.append(f"| *{group}* | |")
        lines += [f"| `{c}` | {_cell(COLUMNS[c])} |" for c in names]
    lines += [f"| {_cell(text.split(': ', 1)[0])} | {_cell(text.split(': ', 1)[1])} |" for text in COLUMN_PATTERNS.values()]
    lines.append("| a task's own metrics | what `Task.metrics` returns, e.g. zh-idiom's `bleu4` |")
    return "\n".join(lines)


# ------------------------------------------------------------------ rendering helpers

_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc):`(~?)([^`]+)`")


def markdown(text: str) -> str:
    """A reST docstring fragment as Markdown: ``x`` and :role:`x` become `x` (``~a.b`` as `b`)."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return text.replace("``", "`")


def paragraphs(obj) -> list[str]:
    """The paragraphs of ``obj``'s own docstring (not inherited), each on one line, as Markdown."""
    if isinstance(obj, type):
        doc = vars(obj).get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):  # made up by @dataclass
            doc = ""
        doc = inspect.cleandoc(doc)
    else:
        doc = inspect.getdoc(obj)
    return [markdown(" ".join(p.split())) for p in (doc or "").split("\n\n") if p.strip()]


def first_paragraph(obj) -> str:
    found = paragraphs(obj)
    return found[0] if found else ""


class _Annotation(str):
    """An annotation string that ``inspect`` shows bare (the code uses ``from __future__ import
    annotations``, so every annotation is a string, which it would quote)."""

    def __repr__(self) -> str:
        return str(self)


def signature(fn, name: str | None = None) -> str:
    """``name(parameters) -> return``, annotations as the code writes them; a dataclass as its
    constructor (default factories shown as what they make)."""
    sig = inspect.signature(fn)
    if dataclasses.is_dataclass(fn):
        made = {f.name: f.default_factory() for f in dataclasses.fields(fn) if f.default_factory is not dataclasses.MISSING}
        sig = sig.replace(parameters=[p.replace(default=_Annotation(repr(made[p.name]))) if p.name in made else p
                                      for p in sig.parameters.values()], return_annotation=inspect.Signature.empty)

    def ann(a):
        return _Annotation(a) if isinstance(a, str) else a

    sig = sig.replace(parameters=[p.replace(annotation=ann(p.annotation)) for p in sig.parameters.values()],
                      return_annotation=ann(sig.return_annotation))
    return f"{name or fn.__name__}{sig}"


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|")


def _comments(source_lines: list[str], lineno: int) -> str:
    """The ``#:`` comment lines above line ``lineno`` (1-based) of ``source_lines``, or the
    ``#`` comment at the end of that line."""
    found, i = [], lineno - 2
    while i >= 0 and source_lines[i].strip().startswith("#:"):
        found.insert(0, source_lines[i].strip()[2:].strip())
        i -= 1
    if not found and "  # " in source_lines[lineno - 1]:
        found = [source_lines[lineno - 1].split("  # ", 1)[1].strip()]
    return markdown(" ".join(found))


def _assignments(tree_body, source_lines) -> dict[str, str]:
    """``name -> comment`` for each assignment in an ``ast`` body."""
    import ast

    out = {}
    for node in tree_body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = _comments(source_lines, node.lineno)
    return out


def _class_comments(cls) -> dict[str, str]:
    import ast
    import textwrap

    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    (node,) = ast.parse(source).body
    return _assignments(node.body, lines)


def _module_comments(module) -> dict[str, str]:
    import ast

    source = inspect.getsource(module)
    return _assignments(ast.parse(source).body, source.splitlines())


def _value(value) -> str:
    """A value as the docs show it: its repr, or (an object whose repr holds an address) what it is."""
    text = repr(value)
    if " at 0x" not in text:
        return text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {getattr(v, '__name__', type(v).__name__)}" for k, v in value.items()) + "}"
    return f"{type(value).__name__}()"


def _described(text: str) -> str:
    """``": text"`` after a member, or nothing when there is no text."""
    return f": {text}" if text else ""


# ------------------------------------------------------------------ the regions


def hooks_region() -> str:
    from .. import hookspecs

    out = []
    for name, fn in vars(hookspecs).items():
        if callable(fn) and name.startswith("register_"):
            out.append(f"- **`{signature(fn)}`**: {' '.join(paragraphs(fn))}")
    return "\n".join(out)


def _member(cls, name: str, raw, comments: dict) -> str | None:
    """One bullet for member ``name`` of ``cls`` (``raw``: as in the class's ``__dict__``)."""
    if isinstance(raw, property):
        ret = inspect.signature(raw.fget).return_annotation
        ret = f" -> {ret}" if ret is not inspect.Signature.empty else ""
        return f"- `{name}{ret}` (property){_described(first_paragraph(raw.fget))}"
    if isinstance(raw, (classmethod, staticmethod)):
        kind = type(raw).__name__
        return f"- `{signature(getattr(cls, name), name)}` ({kind}){_described(first_paragraph(raw.__func__))}"
    if inspect.isfunction(raw):
        return f"- `{signature(raw, name)}`{_described(first_paragraph(raw))}"
    if callable(raw) or isinstance(raw, type):
        return None
    hints = vars(cls).get("__annotations__", {})
    typed = f": {hints[name]}" if name in hints else ""
    return f"- `{name}{typed} = {_value(raw)}`{_described(comments.get(name, ''))}"


def _inherited_doc(cls, name: str, raw) -> bool:
    """Whether ``raw`` overrides a base class's ``name`` without a docstring of its own."""
    fn = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
    declared = any(name in vars(base) for base in cls.__mro__[1:])
    return declared and inspect.isfunction(fn) and not fn.__doc__


def _class(qualname: str, cls) -> list[str]:
    comments = _class_comments(cls)
    if dataclasses.is_dataclass(cls):
        head = f"### `{signature(cls, qualname)}`"
    else:
        bases = [b.__name__ for b in cls.__bases__ if b is not object]
        head = f"### `{qualname}`" + (f" ({', '.join(bases)})" if bases else "")
    out = [head, "", *paragraphs(cls)[:1]]
    members = []
    if dataclasses.is_dataclass(cls):
        hints = vars(cls).get("__annotations__", {})
        for f in dataclasses.fields(cls):
            if f.name in hints and not f.name.startswith("_"):
                default = ("" if f.default is dataclasses.MISSING else f" = {_value(f.default)}") if f.default_factory \
                    is dataclasses.MISSING else f" = {_value(f.default_factory())}"
                members.append(f"- `{f.name}: {hints[f.name]}{default}`{_described(comments.get(f.name, ''))}")
    for name, raw in vars(cls).items():
        if name.startswith("_") or (dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}):
            continue
        if _inherited_doc(cls, name, raw):  # an override documented where it is declared
            continue
        line = _member(cls, name, raw, comments)
        if line:
            members.append(line)
    if members:
        out += [""] + members
    return out


def _entry(module_name: str, name: str, comments: dict, shown: str | None = None) -> list[str]:
    """The docs' entry for ``name`` of ``module_name``, under ``shown.name`` (default: where it is defined)."""
    module = importlib.import_module(module_name)
    obj = getattr(module, name)
    qualname = f"{shown or module_name}.{name}"
    if isinstance(obj, type):
        return _class(qualname, obj)
    if inspect.isfunction(obj):
        return [f"### `{signature(obj, qualname)}`", "", first_paragraph(obj) or NOTES.get(qualname, "")]
    if qualname in NOTES:
        return [f"### `{qualname}`", "", NOTES[qualname]]
    return [f"### `{qualname} = {_value(obj)}`", "", comments.get(name, "")]


def api_region() -> str:
    out = ["Everything `suite` exports (`from suite import ...`):", ""]
    for name, module in CORE.items():
        out += [*_entry(module, name, _module_comments(importlib.import_module(module)), shown="suite"), ""]
    for kind, modules in HELPERS.items():
        out += [f"The helpers for {kind} plugins, by module:" if kind != "testing" else "For a plugin's tests:", ""]
        for module_name, names in modules.items():
            module = importlib.import_module(module_name)
            comments = {}
            for part in [m for n, m in sorted(sys.modules.items()) if n.startswith(module_name + ".")] + [module]:
                comments.update(_module_comments(part))  # a package's names are commented where they are defined
            for name in names:
                out += [*_entry(module_name, name, comments), ""]
    return "\n".join(out).rstrip()


def moved_region() -> str:
    """The import paths before the regrouping by stage, and where each module lives now."""
    lines = ["| old path (still imports) | lives in |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in MOVED.items()]
    return "\n".join(lines)


def scorers_region() -> str:
    from ..data import scorers

    lines = ["| `score=` name | function | what it computes |", "|---|---|---|"]
    for name, fn in scorers.SCORERS.items():
        lines.append(f"| `{name}` | `{_cell(signature(fn))}` | {_cell(' '.join(paragraphs(fn)))} |")
    listed = set(scorers.SCORERS.values())
    others = [fn for n, fn in vars(scorers).items()
              if inspect.isfunction(fn) and fn.__module__ == scorers.__name__ and not n.startswith("_") and fn not in listed]
    lines += ["", "Further functions of `suite.data.scorers`, for a task's own metrics:", ""]
    lines += [f"- `{signature(fn)}`: {first_paragraph(fn)}" for fn in others]
    return "\n".join(lines)


def known_signatures() -> dict[str, set[str]]:
    """Every signature of the documented API (:func:`api_region`'s entries and the scorers), as
    the guide may quote it in prose: ``name -> {"name(...) -> ..."}``, methods with ``self``."""
    from ..data import scorers

    found: dict[str, set[str]] = {}

    def add(name, fn):
        found.setdefault(name, set()).add(signature(fn, name))

    entries = [(module, name) for name, module in CORE.items()]
    entries += [(m, n) for modules in HELPERS.values() for m, names in modules.items() for n in names]
    entries += [(scorers.__name__, n) for n, fn in vars(scorers).items() if inspect.isfunction(fn) and not n.startswith("_")]
    for module_name, name in entries:
        obj = getattr(importlib.import_module(module_name), name)
        if inspect.isfunction(obj):
            add(name, obj)
        elif isinstance(obj, type):
            for member, raw in vars(obj).items():
                if _inherited_doc(obj, member, raw):  # quoted as the base class declares it
                    continue
                if isinstance(raw, (classmethod, staticmethod)):
                    add(member, getattr(obj, member))
                elif inspect.isfunction(raw) and not member.startswith("_"):
                    add(member, raw)
    return found


def methods_region() -> str:
    """The table (docs/methods.md) of every method leitai ships: what trains, its defaults, whether the
    default shootout runs it, and where its settings come from (the ``paper`` text's source)."""
    from ..plugins import load_registry

    reg = load_registry()
    rows = ["| method | what trains | defaults | default run | source |", "|---|---|---|---|---|"]
    for name in sorted(reg.methods):
        if not reg.plugins[reg.origin[("methods", name)]].source.startswith("leitai "):
            continue  # a method some other installed package adds
        m = reg.methods[name]
        defaults = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.defaults.items()
                             if v is not None)
        source = m.paper.split(": ", 1)[0] if ": " in m.paper else m.paper.split(". ", 1)[0]
        rows.append(f"| `{name}` | {m.description} | {defaults} | {'yes' if m.default else 'no'} | {source} |")
    return "\n".join(rows)


REGIONS = {"hooks": hooks_region, "api": api_region, "moved": moved_region, "scorers": scorers_region,
           "columns": columns_region, "methods": methods_region}
#: the generated regions of each page :data:`COMMAND` keeps
FILES = {
    DOCS / "plugins" / "index.md": {"hooks": hooks_region},
    DOCS / "plugins" / "tasks.md": {"scorers": scorers_region},
    DOCS / "records.md": {"columns": columns_region},
    DOCS / "api.md": {"api": api_region, "moved": moved_region},
    DOCS / "methods.md": {"methods": methods_region},
}


def page_of(name: str) -> Path:
    """The page that holds region ``name``."""
    return next(path for path, regions in FILES.items() if name in regions)


def regions_in(text: str) -> dict:
    """The :data:`REGIONS` whose opening marker ``text`` has."""
    return {name: render for name, render in REGIONS.items() if f"<!-- begin generated: {name} " in text}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- begin generated: {name} [^\n]*-->\n)(.*?)(<!-- end generated: {name} -->)", re.S)


def region(text: str, name: str) -> str:
    """The body of region ``name`` of ``text`` (a page), as it stands."""
    return _pattern(name).search(text).group(2)


def marker(name: str) -> str:
    """The line that opens region ``name`` in its page."""
    return f"<!-- begin generated: {name} ({COMMAND}; edit the code, not this) -->"


def update(text: str, regions: dict) -> str:
    """``text`` (a page with its ``regions``) with every generated region rendered anew from the
    code; a region whose markers are missing is a ``KeyError``."""
    for name, render in regions.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise KeyError(f"the page has no region {name!r} ({marker(name)} ... <!-- end generated: {name} -->)")
        region = f"{marker(name)}\n{render()}\n<!-- end generated: {name} -->"
        text = pattern.sub(lambda m, region=region: region, text, count=1)
    return text


def stale_regions(text: str, regions: dict) -> list[str]:
    """The names of the ``regions`` of ``text`` that differ from what the code gives."""
    new = update(text, regions)
    return [name for name in regions if _pattern(name).search(text).group(0) != _pattern(name).search(new).group(0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Regenerate the reference parts of the docs "
                                     "(hooks, API, scorers, results.csv columns, methods).")
    parser.add_argument("path", nargs="?", help="one file: the regions it has markers for (default: every page "
                        "that holds one)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    if args.path:
        files = {Path(args.path): regions_in(Path(args.path).read_text(encoding="utf-8"))}
    else:
        files = FILES
    status = 0
    for path, regions in files.items():
        text = path.read_text(encoding="utf-8")
        stale = stale_regions(text, regions)
        if stale and args.check:
            print(f"{path} is out of date ({', '.join(stale)}): run {COMMAND}", file=sys.stderr)
            status = 1
        elif stale:
            path.write_text(update(text, regions), encoding="utf-8")
            print(f"{path}: regenerated {', '.join(stale)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
