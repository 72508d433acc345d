"""Warm starts: each cell forked from a server that imported the heavy modules once.

A cell still runs in a process of its own (peak memory must not bleed between methods, one
crash must not take the shootout down), but the process need not start cold: importing
torch, transformers, peft and accelerate costs seconds per cell. ``python -m suite.warm FD``
is a small fork server: it imports :data:`PRELOAD` and nothing else (no CUDA, no torch thread
pool, no plugin, no model), then forks one child per cell. The cell's own work (environment,
``LEITAI_THREADS``, ``CUDA_VISIBLE_DEVICES``, seed, plugins, model) happens in the child,
after the fork, in :func:`suite.cell.main`, exactly as in a cold ``python -m suite.cell``.

The server is forked from the driver itself where that is safe (:func:`forkable`: Linux, the
driver's main thread, no other thread, no CUDA driver loaded), once the driver has checked the
shootout's settings and so imported torch, transformers and peft for the stand-in models:
then it costs no imports at all. Elsewhere (a driver with threads, a restart after the server
died) it is a fresh ``python -m suite.warm FD`` that imports them itself. Either way it
starts with the same state: :data:`PRELOAD` imported, no plugin registered, no model or data.

The driver talks to the server over a Unix socket pair (``SOCK_SEQPACKET``: one message a
datagram): it sends ``{"op": "run", "id", "spec", "env", "cwd"}`` with the write end of the
cell's stderr pipe attached (``SCM_RIGHTS``), the server answers ``{"id", "pid"}`` and, when
the child ends, ``{"id", "exit"}`` (negative: the signal that killed it). The server ignores
Ctrl-C and SIGTERM (the cells and the driver handle them) and dies with the driver; a child
dies with the server. ``--cold-start`` (or ``LEITAI_COLD_START=1``) keeps the fresh process
per cell.
"""
from __future__ import annotations

import atexit
import gc
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

#: what the server imports: the heavy libraries and the core a cell imports anyway
PRELOAD = (
    "torch", "transformers", "peft", "accelerate", "tqdm.auto", "psutil",
    "transformers.modeling_utils", "transformers.generation", "peft.tuners",
    "suite.cell", "suite.data", "suite.env", "suite.evaluation", "suite.forgetting", "suite.guards",
    "suite.inference", "suite.measure", "suite.methods", "suite.models", "suite.plugins", "suite.precision",
    "suite.records", "suite.stopping", "suite.sweep", "suite.taskdata", "suite.tasks", "suite.train",
    "suite.userdata",
)


class ServerDied(RuntimeError):
    """The warm-start server ended while a cell it had forked was running (the cell died with it)."""


class ColdStart(RuntimeError):
    """Forking cells is not safe here (:func:`fork_probe` failed, or the server never got
    ready): the cell starts cold. :class:`WarmServer` has said why, once."""


def cold_start_requested() -> bool:
    """``LEITAI_COLD_START=1``: every cell in a fresh process, as before warm starts."""
    return os.environ.get("LEITAI_COLD_START", "") not in ("", "0")


# -- the server ----------------------------------------------------------------------------------

def _preload() -> None:
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PRELOAD:
            importlib.import_module(name)
        _shared_lookups()


def _shared_lookups() -> None:
    """What every cell of a shootout would look up the same way, done once (docs/warm-start.md,
    "Leaner start-up"): the installed plugins' entry points (the metadata of every installed
    distribution; the plugins themselves are loaded by each cell, leitai's own modules
    imported here), and transformers' table of checkpoint renamings, which it builds on the
    first model load of a process."""
    from . import plugins

    plugins.ENTRY_POINTS = plugins.installed_entry_points()
    for _, dist, ep in plugins.ENTRY_POINTS:
        if dist.split()[0] == "leitai":  # the built-in plugins: import only, they register in the cell
            ep.load()
    try:
        from transformers import conversion_mapping

        conversion_mapping.get_checkpoint_conversion_mapping("llama")
    except (ImportError, AttributeError):  # another transformers version: each cell builds it
        pass


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
            "plugins_registered": sys.modules["suite.plugins"]._cached is not None}


#: whether this server process was forked from the driver (:func:`fork_server`)
FORKED = False
#: how long a forked child may take over its first parallel torch operation (:func:`fork_probe`)
PROBE_SECONDS = 10.0
#: how long a cell waits for a server to import and probe before it starts cold
READY_SECONDS = 300.0
#: the driver's own torch thread count while :func:`single_threaded_driver` holds it at one
_DRIVER_THREADS: int | None = None


@contextmanager
def single_threaded_driver():
    """While the driver checks a shootout's settings and forks its server: torch on one thread.

    A parallel torch operation starts OpenMP's thread pool, and a process forked after that
    inherits the pool's bookkeeping without its threads: its first parallel operation waits
    forever. Plugins and peft may compute on the CPU while settings are checked (peft builds
    BOFT's permutation matrices and FourierFT's frequency indices as real tensors even on a
    meta stand-in); on one thread no pool is started. The driver computes nothing that needs
    more, and a server forked from it gets the driver's own count back (:func:`fork_server`)."""
    global _DRIVER_THREADS
    import torch

    if _DRIVER_THREADS is not None:  # nested: the outer one restores
        yield
        return
    _DRIVER_THREADS = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(_DRIVER_THREADS)
        _DRIVER_THREADS = None


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
            from .stopping import die_with_parent

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


def forkable() -> bool:
    """Whether the server may be forked from this process rather than started fresh: Linux, the
    main thread, no other Python thread (a fork keeps only the calling thread, and a lock
    another one held would stay held in the child), and no CUDA driver loaded (a process forked
    after a call into CUDA, even ``torch.cuda.is_available()``, cannot use it)."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return False
    if threading.active_count() > 1:
        return False
    with open("/proc/self/maps") as f:
        return not any("libcuda.so" in line for line in f)


def fork_server(theirs: socket.socket, ours: socket.socket) -> ForkedServer:
    """Fork the server from this process (:func:`forkable` must hold): the child keeps only
    ``theirs``, standard streams on /dev/null and stderr on a pipe to the driver, forgets the
    driver's plugin registry (each cell registers its own), and serves until the driver goes."""
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked server
        code = 1
        try:
            ours.close()
            os.close(read)
            _own_streams(write)
            if _DRIVER_THREADS is not None:  # the driver's count, as a fresh process would have it
                import torch

                torch.set_num_threads(_DRIVER_THREADS)
            from . import plugins

            plugins._cached = None
            code = serve(theirs.detach(), forked=True)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    return ForkedServer(pid, os.fdopen(read, "rb"))


def _own_streams(stderr_fd: int) -> None:  # pragma: no cover - runs in a forked child
    """In a forked child: stdin and stdout on /dev/null, stderr on ``stderr_fd`` (a pipe to the
    driver, closed here), and none of the parent's exit handlers."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for target, source in ((0, devnull), (1, devnull), (2, stderr_fd)):
        os.dup2(source, target)
    os.close(devnull)
    os.close(stderr_fd)
    atexit._clear()


class ForkedServer:
    """A server forked from this process, with what :class:`WarmServer` uses of ``subprocess.Popen``."""

    def __init__(self, pid: int, stderr):
        self.pid, self.stderr, self.returncode = pid, stderr, None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # reaped by someone else: its status is lost
                    pid, status = self.pid, 255 << 8
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"warm-start server {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def serve(fd: int, forked: bool = False) -> int:
    """The server's loop, on the socket ``fd`` the driver passed (``forked``: this process is a
    fork of the driver, :func:`fork_server`)."""
    global FORKED
    FORKED = forked
    inherited_sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the cells, which stop themselves
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so does SIGTERM; the driver decides
    from .stopping import die_with_parent

    die_with_parent()
    sock = socket.socket(fileno=fd)
    _preload()
    import torch

    gc.collect()
    gc.freeze()  # the imported objects stay on pages the children share (no copy on the GC's touch)
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
        from .stopping import die_with_parent

        die_with_parent()
        _own_streams(fds[0])
        os.environ.clear()
        os.environ.update(request["env"], LEITAI_CELL_START="warm")  # recorded in the record's env
        os.chdir(request["cwd"])
        sys.argv = [sys.modules["suite.cell"].__file__, request["spec"]]  # as python -m suite.cell has it
        from .cell import main

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


# -- the driver's side -----------------------------------------------------------------------------

class WarmJob:
    """A cell forked by the server: Popen's ``pid``, ``wait()`` and ``send_signal()``."""

    def __init__(self):
        self.pid: int | None = None
        self.state: dict = {}  # a state request's answer
        self.code: int | None = None
        self.error: str | None = None
        self._started = threading.Event()
        self._ended = threading.Event()

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"warm cell {self.pid}", timeout)
        if self.code is None:
            raise ServerDied(self.error or "the warm-start server died")
        return self.code

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        if self.pid is not None and not self._ended.is_set():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmServer:
    """The driver's handle on the fork server: started on first use, started again if it died."""

    def __init__(self, fork: bool = True):
        self.fork = fork  # False: always a fresh process, never forked from this one
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | ForkedServer | None = None
        self._sock: socket.socket | None = None
        self._jobs: dict[int, WarmJob] = {}
        self._ids = itertools.count()
        self._ready = threading.Event()
        self._stderr: deque[bytes] = deque(maxlen=32)
        self.state: dict = {}
        self.starts = 0
        self._launcher: ThreadPoolExecutor | None = None
        self.closed = False  # by close(): no request starts it again until start()
        self.cold: str | None = None  # why cells start cold: no server can fork them safely here

    def start(self) -> None:
        """Start the server if it is not running (it imports while the caller goes on)."""
        self.closed = False
        self._ensure()

    def _ensure(self) -> None:
        with self._lock:
            if self.closed:
                raise ServerDied("the warm-start server was closed")
            if self._proc is not None and self._proc.poll() is None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                if self.fork and forkable():  # the main thread, which lives as long as the driver
                    self._proc = fork_server(theirs, ours)
                else:
                    if self._launcher is None:
                        # the server dies with the thread that started it (PR_SET_PDEATHSIG): one thread
                        # that lives as long as this handle starts it, whichever cell's thread asks
                        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leitai-warm-start")
                    self._proc = self._launcher.submit(self._popen, theirs).result()
            finally:
                theirs.close()
            self._sock, self._ready, self.state, self.starts = ours, threading.Event(), {}, self.starts + 1
            self._stderr.clear()
            threading.Thread(target=self._read, args=(ours, self._proc, self._ready), daemon=True,
                             name="leitai-warm").start()
            threading.Thread(target=self._drain, args=(self._proc,), daemon=True).start()

    @staticmethod
    def _popen(theirs: socket.socket) -> subprocess.Popen:
        from .stopping import die_with_parent

        return subprocess.Popen(
            [sys.executable, "-m", "suite.warm", str(theirs.fileno())], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )

    def _drain(self, proc) -> None:
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            self._stderr.append(chunk)

    def _read(self, sock: socket.socket, proc, ready: threading.Event) -> None:
        """Hand the server's answers to the jobs; when it dies, every job it held ends without a code."""
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if message.get("ready"):
                self.state = message
                ready.set()
                continue
            job = self._jobs.get(message["id"])
            if job is None:
                continue
            if "state" in message:
                job.state = message["state"]
                self._jobs.pop(message["id"], None)
                job._started.set()
            elif "pid" in message:
                job.pid = message["pid"]
                job._started.set()
            elif "exit" in message:
                job.code = message["exit"]
                self._jobs.pop(message["id"], None)
                job._started.set()
                job._ended.set()
            else:  # the server refused the request
                job.error = message.get("error", "the warm-start server refused the cell")
                self._jobs.pop(message["id"], None)
                job._started.set()
                job._ended.set()
        proc.wait()
        why = self.died_reason(proc)
        with self._lock:
            if self._sock is sock:
                self._sock = None
            for job_id, job in list(self._jobs.items()):
                if getattr(job, "_sock", None) is sock:
                    job.error = why
                    job._started.set()
                    job._ended.set()
                    self._jobs.pop(job_id, None)
        ready.set()

    def died_reason(self, proc) -> str:
        code = proc.poll()
        how = "still running" if code is None else f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        tail = [line for line in b"".join(self._stderr).decode("utf-8", "replace").splitlines() if line.strip()]
        return f"the warm-start server died ({how}{': ' + tail[-1] if tail else ''})"

    def _unsafe(self, proc, reason: str) -> None:
        """Server ``proc`` cannot fork cells safely: a server forked from the driver is replaced
        by a fresh process, once; after that every cell starts cold (:class:`ColdStart`)."""
        with self._lock:
            if self._proc is proc:
                if self.fork and self.state.get("forked"):
                    print(f"leitai: the warm-start server forked from this process is not safe to fork cells from "
                          f"({reason}); starting a fresh one", file=sys.stderr)
                    self.fork = False
                else:
                    self.cold = reason
                    print(f"leitai: warm starts off: {reason}; every cell starts cold", file=sys.stderr)
                proc.kill()
                self._proc = None
        if self.cold:
            raise ColdStart(self.cold)

    def _request(self, message: dict, fds: list[int] = ()) -> WarmJob:
        for _ in range(3):  # a server that died before this request, or was found unsafe, is started again
            if self.cold and message["op"] == "run":
                raise ColdStart(self.cold)
            self._ensure()
            proc = self._proc
            if not self._ready.wait(READY_SECONDS):
                self.fork = False  # so that _unsafe gives up on it
                self._unsafe(proc, f"the warm-start server was not ready after {READY_SECONDS:.0f} s")
                continue
            if message["op"] == "run" and self.state.get("unsafe"):
                self._unsafe(proc, self.state["unsafe"])
                continue
            with self._lock:
                sock = self._sock
                if sock is None:
                    continue
                job = WarmJob()
                job._sock = sock
                job_id = next(self._ids)
                self._jobs[job_id] = job
                try:
                    socket.send_fds(sock, [json.dumps({**message, "id": job_id}).encode()], list(fds))
                except OSError:
                    self._jobs.pop(job_id, None)
                    continue
            return job
        raise ServerDied(self.died_reason(self._proc) if self._proc else "the warm-start server did not start")

    def spawn(self, spec: str, env: dict, stderr_fd: int) -> WarmJob:
        """Fork a cell running ``spec`` with ``env``, its stderr on ``stderr_fd`` (the caller
        closes its copy); returns once the child runs (its ``pid`` is known)."""
        job = self._request({"op": "run", "spec": str(spec), "env": env, "cwd": os.getcwd()}, [stderr_fd])
        job._started.wait()
        if job.error and job.code is None and job._ended.is_set() and job.pid is None:
            raise ServerDied(job.error)
        return job

    def query(self) -> dict:
        """The server process's own state (its pid, whether CUDA is initialised, its threads)."""
        job = self._request({"op": "state"})
        job._started.wait()
        if job.error:
            raise ServerDied(job.error)
        return job.state

    def close(self) -> None:
        """Stop the server (the cells it forked are over by now; any left die with it)."""
        with self._lock:
            proc, sock, self._proc, self._sock = self._proc, self._sock, None, None
            launcher, self._launcher, self.closed = self._launcher, None, True
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=10 if self._ready.is_set() else 0)  # one still importing is not waited for
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if launcher is not None:
            launcher.shutdown(wait=False)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
