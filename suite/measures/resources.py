"""What the core measures itself: parameters, memory, bytes saved for backward, sizes on disk."""
from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch


def unique_parameters(model: torch.nn.Module, trainable_only: bool = False) -> list[torch.nn.Parameter]:
    """Parameters with tied or shared tensors listed once."""
    seen, out = set(), []
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        key = (local(p).data_ptr(), p.numel()) if p.device.type != "meta" else id(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Parameters counted as weights: a packed 4-bit tensor (``--quantize nf4``) by the weights it
    holds, two per byte, as its quantization state records its shape."""
    from ..models.quantize import logical_numel

    return sum(logical_numel(p) for p in unique_parameters(model, trainable_only))


def local(t: torch.Tensor) -> torch.Tensor:
    """What this process holds of ``t``: its shard of a sharded (DTensor) tensor, else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


def tensor_bytes(tensors) -> int:
    """Bytes this process holds of ``tensors`` (a sharded tensor: its local shard)."""
    return sum(local(t).numel() * t.element_size() for t in tensors)


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimiser's state in this process, each storage once (bitsandbytes' 8-bit
    AdamW shares its quantisation maps between parameters)."""
    seen, total = set(), 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v) and local(v).data_ptr() not in seen:
                seen.add(local(v).data_ptr())
                total += tensor_bytes([v])
    return total


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@contextmanager
def saved_for_backward(exclude: list[torch.Tensor] = ()):
    """Count the bytes autograd saves for backward while the block runs (unique storages).

    Yields a dict whose ``bytes`` is filled in on exit: the storages still held for backward
    then, at their size then (a sharded model's gathered weights are saved, then freed to size 0
    when the layer is sharded again). Storages of ``exclude`` (the model's parameters, already
    counted as weights; a sharded one's local shard) are left out, so what remains is
    activations. A storage saved by a branch whose graph the block drops
    (DoRA's detached weight norm) is freed before the end, and its address may serve a later
    storage: each address keeps weak references to the tensors saved on it, to tell the two apart.
    """
    skip = {local(t).untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, tuple[int, list]] = {}  # address: (bytes, weak references to the tensors saved there)
    result = {"bytes": 0}

    def pack(t):
        storage = local(t).untyped_storage()  # a sharded parameter (AdaLoRA's regulariser reads them): its shard
        ptr = storage.data_ptr()
        if ptr not in skip and ptr != 0:
            nbytes, refs = seen.get(ptr, (0, []))
            if refs and not any_alive(refs):  # that storage was freed; a new one lies at its address
                nbytes, refs = 0, []
            refs.append(weakref.ref(t))
            seen[ptr] = (max(nbytes, storage.nbytes()), refs)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(min(nbytes, max(local(t).untyped_storage().nbytes() for t in alive))
                          for nbytes, refs in seen.values() if (alive := [t for r in refs if (t := r()) is not None]))


def any_alive(refs) -> bool:
    """Whether any of these weak references still has its object (a saved storage still held)."""
    return any(r() is not None for r in refs)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of the training loop, as docs/measures.md ("How the arena measures") defines it.

    CUDA: ``max_memory_allocated`` (and ``max_memory_reserved``) after a reset. CPU: the
    process's peak resident set during the block minus its resident set just before it.
    Linux lets a process reset its high-water mark (``/proc/self/clear_refs``), so the peak
    is exact; where that is not possible a sampling thread watches the RSS instead.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_delta"
        self.peak = self.reserved = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        self._proc = psutil.Process()
        self._before = self._proc.memory_info().rss
        self._sampler = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS high-water mark to the current RSS
        except OSError:
            self._sampler = _RssSampler(self._proc)
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.reserved = torch.cuda.max_memory_reserved(self.device)
            return False
        if self._sampler is not None:
            peak = self._sampler.stop()
        else:
            peak = (_status_kib("VmHWM") or 0) * 1024
        self.peak = max(peak - self._before, 0)
        return False


class _RssSampler:
    def __init__(self, proc, interval: float = 0.005):
        import threading

        self.proc, self.interval, self.peak = proc, interval, proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def start(self):
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.proc.memory_info().rss)


def cpu_threads() -> int:
    return torch.get_num_threads() or os.cpu_count() or 1


def tail_mean(losses: list[float], frac: float = 0.1) -> float | None:
    """Mean of the last 10% of step losses: one batch's loss is too noisy to compare methods."""
    if not losses:
        return None
    k = max(1, int(len(losses) * frac))
    return sum(losses[-k:]) / k
