"""SIGTERM is a stop, like Ctrl-C.

Batch schedulers (Slurm, Kubernetes) stop a job with SIGTERM, then SIGKILL after a grace
period. The driver turns the first SIGTERM into :class:`Terminated`, a ``KeyboardInterrupt``,
so every executor stops the way it stops for Ctrl-C: what finished is kept and reported, and
no cell is left running. A cell turns SIGTERM (and Ctrl-C) into a KeyboardInterrupt too: it
ends without a record, so ``--resume`` runs it again.
"""
from __future__ import annotations

import ctypes
import signal
import threading
from contextlib import contextmanager

#: the exit status of a shootout stopped by SIGTERM (128 + 15, as a shell reports it)
SIGTERM_STATUS = 143


def die_with_parent() -> None:  # pragma: no cover - runs in a child, before its work
    """Linux: this process gets SIGKILL when the thread that started it ends (a cell dies with
    its driver or its warm-start server, the server with the driver)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Terminated(KeyboardInterrupt):
    """The driver got SIGTERM: stop as for Ctrl-C."""


def _raise_once(exc_type):
    def handler(signum, frame):
        # one stop is enough: a second signal must not cut the clean-up (the report) short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise exc_type()

    return handler


@contextmanager
def sigterm_stops():
    """While the block runs (in the main thread), SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_once(Terminated))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reinstall(handler) -> None:
    """Put a SIGTERM handler back after a library replaced it (``ray.init`` installs its own,
    which exits without a word)."""
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def cell_stops_on_signals() -> None:
    """In a cell's process: SIGTERM, and Ctrl-C where Python handles it (a background job may
    have it ignored), raise KeyboardInterrupt once; the cell then ends without a record."""
    handler = _raise_once(KeyboardInterrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
