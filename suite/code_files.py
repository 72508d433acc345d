"""The source files a process imported, and whether they have changed on disk since.

A process keeps the modules it imported; a module it imports later is read from disk as it is
then. The warm-start server (:mod:`suite.shootout.fork_server`) takes a :func:`snapshot` of its
modules' files once it has imported them, and checks it (:func:`changed`) before it forks each
cell: a cell forked from a server whose code was edited since would run the server's old
modules beside new ones it imported itself (``ImportError: cannot import name ...``, or worse,
old and new code that import each other without an error). docs/warm-start.md, "A shootout
that outlives edits", says what the driver does then.

Which modules count (:func:`watched`): leitai's own (``suite``, ``plugins``), the packages of the
loaded plugins (``tops``), and every module imported from outside the Python installation (its
standard library and site-packages): a plugin or a helper on ``PYTHONPATH``, an editable
install. Third-party libraries in site-packages are not watched. A file's state is its size
and modification time (``st_mtime_ns``); a file modified after this process began importing
leitai (:data:`STARTED_NS`, inherited by a process forked from it) counts as changed, since the
module may hold its code from before.
"""
from __future__ import annotations

import os
import sys
import sysconfig
import time

#: when this process began importing leitai (``suite`` imports this module first of its own)
STARTED_NS = time.time_ns()
#: leitai's own top-level packages: the core and the built-in plugins
OWN = ("suite", "plugins")

Snapshot = dict  # path -> (st_mtime_ns, st_size)


def _installation() -> tuple[str, ...]:
    """The directories of the Python installation: its prefixes, standard library and site-packages."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths |= {path for key, path in sysconfig.get_paths().items() if key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(os.path.join(path, "") for path in paths if path)


def watched(tops: tuple[str, ...] = ()) -> list[str]:
    """The source files (``.py``) of the modules this process holds that :func:`snapshot` keeps:
    leitai's, the packages named in ``tops`` (the loaded plugins'), and any module from outside
    the Python installation."""
    mine, installed = set(OWN) | set(tops), _installation()
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):  # built in, compiled, or a namespace package
            continue
        if name.partition(".")[0] in mine or not os.path.abspath(path).startswith(installed):
            files.add(os.path.abspath(path))
    return sorted(files)


def _state(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def snapshot(tops: tuple[str, ...] = ()) -> Snapshot:
    """The state of every :func:`watched` file now (one that cannot be read is left out)."""
    states = {path: _state(path) for path in watched(tops)}
    return {path: state for path, state in states.items() if state is not None}


def changed(taken: Snapshot) -> list[str]:
    """The files of ``taken`` whose state differs now (edited, replaced or removed), or that were
    modified after this process began importing leitai; empty when none."""
    return [path for path, state in taken.items() if state[0] > STARTED_NS or _state(path) != state]


def describe(paths: list[str], count: int | None = None, most: int = 3) -> str:
    """``suite/cell/run.py, plugins/methods/lora.py and 2 more``: the first of ``paths`` (of
    ``count`` in all; default: as many as there are), relative to the working directory where
    they lie under it."""
    here, count = os.path.join(os.getcwd(), ""), len(paths) if count is None else count
    shown = [p[len(here):] if p.startswith(here) else p for p in paths[:most]]
    if count > len(shown):
        return f"{', '.join(shown)} and {count - len(shown)} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
