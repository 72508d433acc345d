"""Warm starts, the driver's side: each cell forked from a server that imported the heavy modules once.

A cell still runs in a process of its own (peak memory must not bleed between methods, one
crash must not take the shootout down), but the process need not start cold: importing
torch, transformers, peft and accelerate costs seconds per cell. :class:`WarmServer` is the
driver's handle on the fork server (:mod:`suite.shootout.fork_server`): started on first use, asked
to fork each cell, started again if it died.

The server is forked from the driver itself where that is safe (:func:`forkable`: Linux, the
driver's main thread, no other thread, no CUDA driver loaded), once the driver has checked the
shootout's settings and so imported torch, transformers and peft for the stand-in models:
then it costs no imports at all. Elsewhere (a driver with threads, a restart after the server
died, a forked server whose probe failed) it is a fresh ``python -m suite.shootout.fork_server FD``
that imports them itself. Either way it starts with the same state: its preload imported, no
plugin registered, no model or data. ``--cold-start`` (or ``LEITAI_COLD_START=1``) keeps the
fresh process per cell.
"""
from __future__ import annotations

import itertools
import json
import os
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

from .fork_server import _own_streams, serve


class ServerDied(RuntimeError):
    """The warm-start server ended while a cell it had forked was running (the cell died with it)."""


class ColdStart(RuntimeError):
    """Forking cells is not safe here (:func:`suite.shootout.fork_server.fork_probe` failed, or the server never got
    ready): the cell starts cold. :class:`WarmServer` has said why, once."""


def cold_start_requested() -> bool:
    """``LEITAI_COLD_START=1``: every cell in a fresh process, as before warm starts."""
    return os.environ.get("LEITAI_COLD_START", "") not in ("", "0")



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
    more, and a server forked from it gets the driver's own count back (:func:`fork_from_driver`)."""
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


def fork_from_driver(theirs: socket.socket, ours: socket.socket) -> ForkedServer:
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
            from .. import plugins

            plugins._cached = None
            code = serve(theirs.detach(), forked=True)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    return ForkedServer(pid, os.fdopen(read, "rb"))


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


# -- the driver's side -----------------------------------------------------------------------------

class WarmJob:
    """A cell forked by the server: Popen's ``pid``, ``wait()`` and ``send_signal()``."""

    def __init__(self):
        self.pid: int | None = None
        self.state: dict = {}  # a state request's answer
        self.code: int | None = None
        self.error: str | None = None
        self.stale: list[str] = []  # the server forked nothing: these files of its modules changed on disk
        self.stale_count = 0  # how many did (stale holds the first few)
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


#: fresh servers a cell asks while the code keeps changing on disk, before it starts cold
STALE_TRIES = 3


def _shut(sock: socket.socket) -> None:
    """Close the driver's end of a server's socket: the server sees it and exits."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class WarmServer:
    """The driver's handle on the fork server: started on first use, started again if it died,
    and replaced by a fresh one when the code of its modules changed on disk."""

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
        self._retired: list = []  # (proc, sock) of servers whose code changed: they end with their last cell

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
                    self._proc = fork_from_driver(theirs, ours)
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
        from ..stopping import die_with_parent

        return subprocess.Popen(
            [sys.executable, "-m", "suite.shootout.fork_server", str(theirs.fileno())], pass_fds=[theirs.fileno()],
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
                self._release(sock)
            elif "stale" in message:  # its code changed on disk: spawn() retires it
                job.stale, job.stale_count = message["stale"], message.get("stale_count", len(message["stale"]))
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

    def _retire(self, proc, stale: list[str], count: int) -> None:
        """Server ``proc``'s code changed on disk (``stale``): no cell is forked from it again, and
        the next one starts from a fresh server, never one forked from this process (the driver
        holds the same old modules). Cells it is running are not cut short: it ends after the last."""
        from .. import code_files

        with self._lock:
            if self._proc is not proc:  # another cell's thread retired it already
                return
            print(f"leitai: {code_files.describe(stale, count)} changed on disk since the warm-start server imported "
                  f"{'it' if count == 1 else 'them'}; the next cell starts from a fresh server", file=sys.stderr)
            self.fork = False
            self._retired.append((proc, self._sock))
            self._proc, self._sock = None, None
            sock = self._retired[-1][1]
        self._release(sock)

    def _release(self, sock) -> None:
        """End a retired server once no cell of its is running (it exits when its socket closes)."""
        with self._lock:
            retired = [(p, s) for p, s in self._retired if s is sock]
            if not retired or any(getattr(job, "_sock", None) is sock for job in self._jobs.values()):
                return
            self._retired.remove(retired[0])
        _shut(sock)

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
                job._sock, job._proc = sock, proc
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
        closes its copy); returns once the child runs (its ``pid`` is known). A server whose code
        changed on disk forks nothing: it is retired and the cell asks a fresh one; after
        :data:`STALE_TRIES` of them (the files keep changing), the cell starts cold (:class:`ColdStart`)."""
        for _ in range(STALE_TRIES):
            job = self._request({"op": "run", "spec": str(spec), "env": env, "cwd": os.getcwd()}, [stderr_fd])
            job._started.wait()
            if not job.stale:
                break
            self._retire(job._proc, job.stale, job.stale_count)
        else:
            print("leitai: leitai's or a plugin's code keeps changing on disk; this cell starts cold", file=sys.stderr)
            raise ColdStart("the code changed on disk under each fresh warm-start server")
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
        """Stop the server (the cells it forked are over by now; any left die with it), and any
        retired one still running."""
        with self._lock:
            proc, sock, self._proc, self._sock = self._proc, self._sock, None, None
            launcher, self._launcher, self.closed = self._launcher, None, True
            retired, self._retired = self._retired, []
        for _, old in retired:
            _shut(old)
        if sock is not None:
            _shut(sock)
        if proc is not None:
            try:
                proc.wait(timeout=10 if self._ready.is_set() else 0)  # one still importing is not waited for
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if launcher is not None:
            launcher.shutdown(wait=False)
