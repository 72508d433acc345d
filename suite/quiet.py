"""Third-party lines no leitai process should print; :mod:`suite` imports this first, so every
leitai process (the CLI, each cell's process, a Ray worker) has it before anything imports peft.

- bitsandbytes 0.50 (which peft imports whenever it is installed) warns at import, on a CPU with
  AVX512-BF16, that the optional ``kernels`` package for a faster 4-bit kernel is missing
  (``Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'``).
  With no logging handler configured, Python's last-resort handler writes it to stderr: a line
  on every process's stderr, which must stay one line for a usage error. bitsandbytes falls back
  to its own kernel, so only that logger is quieted, to errors.
- transformers 5 draws a ``Loading weights`` bar each time a model is loaded: in every cell, for
  its base and again for the base its inference is timed against, among the arena's own bars
  (the shootout's cells, each cell's steps). A cell calls :func:`quiet_bars`, which hides the
  bars named in :data:`SILENT_BARS` (and the ``Writing model shards`` bar full fine-tuning's
  save draws); a download's bars stay.

Python warnings a cell silences are :data:`suite.cell.run.SILENCED` and
:data:`suite.cell.run.SILENCED_WITHOUT_CUDA`.
"""
import logging

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

#: transformers' own progress bars that tell a leitai user nothing, by their description
SILENT_BARS = frozenset({"Loading weights", "Writing model shards"})


def quiet_bars() -> None:
    """From now on, transformers draws none of :data:`SILENT_BARS` in this process (a cell's).
    A transformers without ``set_tqdm_hook`` (before 5) draws no such bar."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in SILENT_BARS:
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs)

    set_hook(hook)
