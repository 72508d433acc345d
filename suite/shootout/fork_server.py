"""The warm-start server: the process each warm cell is forked from (``python -m suite.shootout.fork_server FD``).

It imports :data:`PRELOAD` and nothing else (no CUDA, no torch thread pool, no plugin, no
model), checks once that a process forked from it can compute (:func:`fork_probe`), then forks
one child per cell. The cell's own work (environment, ``LEITAI_THREADS``,
``CUDA_VISIBLE_DEVICES``, seed, plugins, model) happens in the child, after the fork, in
:func:`suite.cell.run.main`, exactly as in a cold ``python -m suite.cell``. The driver's handle on
it, and when it is forked from the driver instead, is :mod:`suite.shootout.warm`.

The driver talks to the server over a Unix socket pair (``SOCK_SEQPACKET``: one message a
datagram): it sends ``{"op": "run", "id", "spec", "env", "cwd"}`` with the write end of the
cell's stderr pipe attached (``SCM_RIGHTS``), the server answers ``{"id", "pid"}`` and, when
the child ends, ``{"id", "exit"}`` (negative: the signal that killed it). It forks no cell once
the source of a module it holds has changed on disk (:mod:`suite.code_files`): it answers
``{"id", "stale": [paths], "stale_count"}``, and the driver starts a fresh server. The server ignores
Ctrl-C and SIGTERM (the cells and the driver handle them) and dies with the driver; a child
dies with the server.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

from .. import code_files
from ..stopping import die_with_parent

#: what the server imports: the heavy libraries and the core a cell imports anyway
PRELOAD = (
    "torch", "transformers", "peft", "accelerate", "tqdm.auto", "psutil",
    "transformers.modeling_utils", "transformers.generation", "peft.tuners",
    "suite.plugins", "suite.progress", "suite.stopping",
    "suite.cell.run", "suite.cell.train", "suite.cell.provenance", "suite.cell.records",
    "suite.config.sweep", "suite.data.batches", "suite.data.prepared", "suite.data.tasks", "suite.data.user_files",
    "suite.measures.task_scores", "suite.measures.forgetting", "suite.measures.inference", "suite.measures.loss",
    "suite.measures.resources", "suite.methods.method", "suite.methods.guards", "suite.models.loading",
    "suite.models.precision",
)
#: the packages whose every module the server imports too (a few hundredths of a second): leitai's
#: stages a cell runs, and the built-in plugins. A warm cell then imports none of leitai's modules
#: after its fork, so its leitai code is all the server's, checked unchanged on disk before the fork
#: (:func:`suite.code_files.changed`).
CELL_PACKAGES = ("suite.data", "suite.models", "suite.measures", "suite.methods", "suite.memory", "suite.config",
                 "suite.cell", "plugins")


def _preload() -> None:
    import importlib
    import pkgutil
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PRELOAD:
            importlib.import_module(name)
        for package in CELL_PACKAGES:
            for found in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
                if found.name.rpartition(".")[2] != "__main__":  # a program (python -m suite.cell), not a module
                    importlib.import_module(found.name)
        _shared_lookups()


def _shared_lookups() -> None:
    """What every cell of a shootout would look up the same way, done once (docs/warm-start.md,
    "Leaner start-up"): the installed plugins' entry points (the metadata of every installed
    distribution; the plugins themselves are loaded by each cell, leitai's own modules
    imported here), and transformers' table of checkpoint renamings, which it builds on the
    first model load of a process."""
    from .. import plugins

    plugins.ENTRY_POINTS = plugins.installed_entry_points()
    for _, dist, ep in plugins.ENTRY_POINTS:
        if dist.split()[0] == "leitai":  # the built-in plugins: import only, they register in the cell
            ep.load()
    try:
        from transformers import conversion_mapping

        conversion_mapping.get_checkpoint_conversion_mapping("llama")
    except (ImportError, AttributeError):  # another transformers version: each cell builds it
        pass


def plugin_packages() -> tuple[str, ...]:
    """The top-level packages of the installed plugins and of ``LEITAI_PLUGINS``: a module of
    theirs this server holds is watched for edits (:mod:`suite.code_files`) wherever it lies."""
    from .. import plugins

    modules = [ep.module for _, _, ep in plugins.ENTRY_POINTS or ()]
    modules += [m.strip() for m in os.environ.get("LEITAI_PLUGINS", "").split(",") if m.strip()]
    return tuple(sorted({m.partition(".")[0] for m in modules}))


def _send(sock: socket.socket, message: dict) -> None:
    try:
        sock.send(json.dumps(message).encode())
    except OSError:  # the driver is gone; the loop sees it
        pass


def _state() -> dict:
    """What the server process is: checked by the tests and before every fork."""
    import torch

    with open("/proc/self/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return {"pid": os.getpid(), "cuda_initialized": torch.cuda.is_initialized(), "os_threads": threads,
            "python_threads": threading.active_count(), "modules": len(sys.modules), "forked": FORKED,
            "plugins_registered": sys.modules["suite.plugins"]._cached is not None, "watched_files": len(CODE)}


#: the source files of the modules the server holds, as it imported them (:func:`suite.code_files.snapshot`)
CODE: code_files.Snapshot = {}


#: whether this server process was forked from the driver (:func:`fork_server`)
FORKED = False


#: how long a forked child may take over its first parallel torch operation (:func:`fork_probe`)
PROBE_SECONDS = 10.0


def fork_probe(timeout: float = PROBE_SECONDS) -> str | None:
    """Whether a process forked from this one now can run torch on two threads: None when a
    forked child finishes a parallel operation within ``timeout`` seconds, else why not (a
    thread pool or a lock of this process was in use when it forked: OpenMP, MKL, a library's
    own pool). The server probes once, before it forks any cell: it runs nothing between cells."""
    import torch

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked probe
        code = 1
        try:
            from ..stopping import die_with_parent

            die_with_parent()
            torch.set_num_threads(2)
            torch.ones(1 << 20).mul_(2).sum()  # above ATen's grain size: it runs on the pool
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return None if code == 0 else f"a process forked from it failed its first torch operation (exit status {code})"
        time.sleep(0.005)
    _kill(pid)
    os.waitpid(pid, 0)
    return (f"a process forked from it hung in its first parallel torch operation for {timeout:.0f} s "
            "(a thread pool was in use when it forked)")


def _own_streams(stderr_fd: int) -> None:  # pragma: no cover - runs in a forked child
    """In a forked child: stdin and stdout on /dev/null, stderr on ``stderr_fd`` (a pipe to the
    driver, closed here), and none of the parent's exit handlers."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for target, source in ((0, devnull), (1, devnull), (2, stderr_fd)):
        os.dup2(source, target)
    os.close(devnull)
    os.close(stderr_fd)
    atexit._clear()


def serve(fd: int, forked: bool = False) -> int:
    """The server's loop, on the socket ``fd`` the driver passed (``forked``: this process is a
    fork of the driver, :func:`fork_server`)."""
    global FORKED
    FORKED = forked
    inherited_sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the cells, which stop themselves
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so does SIGTERM; the driver decides
    die_with_parent()
    sock = socket.socket(fileno=fd)
    _preload()
    import torch

    gc.collect()
    gc.freeze()  # the imported objects stay on pages the children share (no copy on the GC's touch)
    CODE.update(code_files.snapshot(plugin_packages()))  # the files of the modules cells will run, as imported
    unsafe = fork_probe()  # checked before any cell is forked; nothing runs here between cells
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    children: dict[int, int] = {}  # pid -> request id
    _send(sock, {"ready": True, "unsafe": unsafe, **_state()})
    while True:
        try:
            readable, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        _reap(sock, children)
        if sock not in readable:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except OSError:
            message, fds = b"", []
        if not message:  # the driver closed its end or died: so do the cells it left
            for pid in children:
                _kill(pid)
            return 0
        request = json.loads(message)
        if request["op"] == "state":
            _send(sock, {"id": request["id"], "state": _state()})
            continue
        if torch.cuda.is_initialized() or unsafe:  # never: a forked child could not use CUDA, or would hang
            _send(sock, {"id": request["id"], "error": unsafe or "the warm-start server initialised CUDA"})
            continue
        stale = code_files.changed(CODE)
        if stale:  # a cell forked now would run this server's old modules beside new ones: the driver starts a fresh server
            _send(sock, {"id": request["id"], "stale": stale[:20], "stale_count": len(stale)})  # one datagram
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, fds, sock, (wake_r, wake_w), inherited_sigint)  # never returns
        for f in fds:
            os.close(f)
        children[pid] = request["id"]
        _send(sock, {"id": request["id"], "pid": pid})


def _reap(sock, children: dict) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            _send(sock, {"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _child(request: dict, fds: list[int], sock, wake: tuple, inherited_sigint) -> None:  # pragma: no cover - forked
    """In the forked child: become the cell's process, run it, exit (never returns)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, inherited_sigint)
        sock.close()
        for f in wake:
            os.close(f)
        from ..stopping import die_with_parent

        die_with_parent()
        _own_streams(fds[0])
        os.environ.clear()
        os.environ.update(request["env"], LEITAI_CELL_START="warm")  # recorded in the record's env
        os.chdir(request["cwd"])
        sys.argv = [sys.modules["suite.cell.run"].__file__, request["spec"]]  # as python -m suite.cell has it
        from ..cell.run import main

        code = main([request["spec"]])
    except KeyboardInterrupt:
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
