"""A cell's process, as every executor starts it: the command, the environment that caps its
threads, its stderr passed through, the watchdog on its time and its heartbeat (a ``timeout``
record for a cell it ends), and a ``failed`` record for a process that died without writing
one. Ctrl-C and SIGTERM stop every cell process of the driver (:data:`RUNNING`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .. import progress
from ..atomic import write_json_atomic
from ..cell.records import failed_record, read_json
from ..cell.spec import Cell
from ..config.settings import parse_duration
from ..stopping import die_with_parent


class Interrupted(KeyboardInterrupt):
    """A cell's process was stopped by Ctrl-C: no record, the cell is not done."""




def cell_command(spec: Path, processes: int = 1) -> list[str]:
    """The command that runs a cell. Several processes (one per GPU, or CPU processes over
    gloo where there is none) start under torchrun; accelerate's ``Accelerator`` in the cell
    picks the process group up from its environment (set ``ACCELERATE_USE_FSDP=true`` and the
    ``FSDP_*`` variables for FSDP instead of DDP)."""
    if processes <= 1:
        return [sys.executable, "-m", "suite.cell", str(spec)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "suite.cell", str(spec)]


class Running:
    """The cells' processes running now in this driver, so that a stop (Ctrl-C, SIGTERM) can
    end every one: :meth:`stop` sends each SIGTERM (the cell stops itself, without a record),
    then SIGKILL to what is left after ``grace`` seconds."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set = set()
        self.stopping = threading.Event()  # set by stop(): no new cell starts; cleared by resume()

    def resume(self) -> None:
        """A new batch of cells may start (an executor's ``map`` calls this first)."""
        self.stopping.clear()

    def add(self, proc) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc) -> None:
        with self._lock:
            self._procs.discard(proc)

    @staticmethod
    def was_stopped(proc) -> bool:
        return getattr(proc, "leitai_stopped", False)

    def stop(self, grace: float = 10.0) -> None:
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.leitai_stopped = True  # it ends without a record, and gets no failed one
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()


#: every cell process of this driver (:meth:`Running.stop` on Ctrl-C or SIGTERM)
RUNNING = Running()


def launch_child(cell: Cell, run_dir: Path, env: dict | None = None, processes: int = 1,
                 warm=None) -> tuple[int, str, str | None]:
    """Run ``cell`` in a child process; return its exit code, the tail of its stderr, and why
    the watchdog ended it (None: it ended on its own).

    ``warm`` (a :class:`suite.shootout.warm.WarmServer`): the child is forked from it, already warm,
    unless the server found forking unsafe (:class:`suite.shootout.warm.ColdStart`); else (or under a
    distributed launch) it starts cold, ``python -m suite.cell``. The child's stderr (its
    progress bar) is passed through while the last few KB are kept, so a child that dies
    without writing a record can still say why. A child that runs past the cell's
    ``cell_timeout``, or whose heartbeat (:mod:`suite.progress`) is older than its
    ``stall_timeout``, is killed with its own children (:func:`wait_watched`). The child dies with us. Raises :class:`Interrupted` for a child that
    :data:`RUNNING` stopped.
    """
    from .warm import ColdStart

    if RUNNING.stopping.is_set():
        raise Interrupted(cell.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / progress.FILE).unlink(missing_ok=True)
    spec = run_dir / "cell.json"
    spec.write_text(cell.to_json(), encoding="utf-8")
    read_end, write_end = os.pipe()
    child_env = {**os.environ, **(env or {})}
    try:
        proc = None
        if warm is not None and processes <= 1:
            try:
                proc = warm.spawn(str(spec), child_env, write_end)
            except ColdStart:  # said once, by the server's handle
                pass
        if proc is None:
            proc = subprocess.Popen(
                cell_command(spec, processes), stdout=subprocess.DEVNULL, stderr=write_end, env=child_env,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    RUNNING.add(proc)
    if RUNNING.stopping.is_set():  # stopped while it started
        proc.leitai_stopped = True
        proc.send_signal(signal.SIGTERM)
    tail: deque[bytes] = deque(maxlen=64)
    show = child_env.get("LEITAI_PROGRESS") != "0"
    stream = os.fdopen(read_end, "rb", buffering=0)

    def pump():
        out = getattr(sys.stderr, "buffer", None)
        for chunk in iter(lambda: stream.read(4096), b""):
            tail.append(chunk)
            if out is not None and show:
                out.write(chunk)
                out.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code, stalled = wait_watched(proc, run_dir, parse_duration(cell.stall_timeout),
                                     parse_duration(cell.cell_timeout, "--cell-timeout"))
    except BaseException:  # Ctrl-C in this thread: the child got the signal too; make sure it is gone
        proc.kill()
        _wait_quietly(proc)
        if RUNNING.was_stopped(proc):
            raise Interrupted(cell.run_id) from None
        raise
    finally:
        RUNNING.discard(proc)
    reader.join()
    stream.close()
    if RUNNING.was_stopped(proc):
        raise Interrupted(cell.run_id)
    return code, b"".join(tail).decode("utf-8", errors="replace"), stalled


def wait_watched(proc, run_dir: Path, stall: float, limit: float = 0.0) -> tuple[int, str | None]:
    """Wait for a cell's process; kill it and every process under it (:func:`kill_tree`) when it
    has run for more than ``limit`` seconds (its ``--cell-timeout``), or when its heartbeat in
    ``run_dir`` (:mod:`suite.progress`; the process's start until its first beat) is more than
    ``stall`` seconds old (its ``--stall-timeout``); 0: no such limit. Returns its exit code and,
    if it was killed so, why, with the step it reached."""
    started = time.time()
    every = min([5.0] + [max(0.2, s / 10) for s in (stall, limit) if s]) if stall or limit else None
    while True:
        try:
            return proc.wait(timeout=every), None
        except subprocess.TimeoutExpired:
            pass
        last = progress.read(run_dir)
        now = time.time()
        quiet = now - max(started, last["time"] if last else 0.0)
        if limit and now - started > limit:
            why = f"ran past its --cell-timeout of {limit:g} s"
        elif stall and quiet > stall:
            why = f"no progress for {quiet:.0f} s, the cell's --stall-timeout"
        else:
            continue
        kill_tree(proc)
        _wait_quietly(proc)
        return proc.poll(), f"{why}: ended by the watchdog (last: {progress.describe(last)})"


def kill_tree(proc) -> None:
    """SIGKILL a cell's process and every process under it (a distributed cell's ranks)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except (psutil.Error, TypeError):  # gone already, or a pid not known yet
        children = []
    proc.kill()
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def _wait_quietly(proc) -> None:
    try:
        proc.wait()
    except Exception:  # a warm child whose server died: it died with it
        pass


def run_cell_process(cell: Cell, run_dir: Path, env: dict | None = None, processes: int = 1, warm=None) -> dict:
    """Run ``cell`` in its own process in ``run_dir`` and return its record.

    A process that exits without a record gets a ``failed`` record naming its exit status and
    last line of output; one the watchdog ended (:func:`wait_watched`) a ``timeout`` record with
    why and the step it reached (``record["progress"]``); one stopped by Ctrl-C or SIGTERM gets none (raises
    :class:`Interrupted`). ``warm``: fork it from that :class:`suite.shootout.warm.WarmServer`; a cell
    whose server died under it (not its own doing) runs again once, on a new server.
    """
    from .warm import ServerDied

    run_dir = Path(run_dir)
    (run_dir / "record.json").unlink(missing_ok=True)  # a retried cell starts clean
    stalled = None
    for _attempt in (1, 2):
        try:
            code, tail, stalled = launch_child(cell, run_dir, env, processes, warm)
            break
        except ServerDied as e:
            if RUNNING.stopping.is_set():  # the server was closed by a stop
                raise Interrupted(cell.run_id) from None
            code, tail = None, str(e)
            if read_json(run_dir / "record.json") is not None:
                break
    record = read_json(run_dir / "record.json")
    if record is None:
        if stalled:  # past its --cell-timeout, or no progress for its --stall-timeout
            record = {**failed_record(cell, stalled, tail), "status": "timeout"}
            record["progress"] = progress.read(run_dir)  # the step it reached
            write_json_atomic(run_dir / "record.json", record)
            return record
        if code in (-signal.SIGINT, 130, -signal.SIGTERM, 143):
            raise Interrupted(cell.run_id)
        last = [line for line in tail.replace("\r", "\n").splitlines() if line.strip()]
        reason = exit_reason(code) if code is not None else "cell process lost"
        record = failed_record(cell, f"{reason}: {last[-1] if last else 'no output'}", tail)
        write_json_atomic(run_dir / "record.json", record)
    return record


def exit_reason(code: int) -> str:
    """Why a cell's process ended without a record, from its exit code (negative: a signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"cell process killed by {name}" + (" (kill -9, or the kernel's out-of-memory killer)" if code == -signal.SIGKILL else "")
    return f"cell process exited with status {code}"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count() -> int:
    """GPUs this machine shows, found without loading CUDA into this process (a process forked
    after that cannot use it): ``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA driver's
    ``/proc/driver/nvidia/gpus``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def thread_env(threads: int) -> dict:
    """Environment that caps a child's CPU threads (torch reads these at start-up)."""
    n = str(max(1, threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "LEITAI_THREADS": n}
