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
  (the shootout's cells, each cell's steps); and a ``Writing model shards`` bar when a whole
  model is saved. :func:`quiet_bars` hides the bars named in :data:`SILENT_BARS`; a download's
  bars stay.
- Python warnings that are known noise (:data:`SILENCED`, :data:`SILENCED_WITHOUT_CUDA`).

A process that loads models (a cell, ``leitai export``) calls :func:`quiet_libraries` first.
"""
import logging
import warnings

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

#: Python warnings of the libraries that are known noise, not problems of a run (by message)
SILENCED = (
    # peft with recent transformers (docs/getting-started.md, "Pinned versions, and why")
    "Position ids are not supported for parameter efficient tuning",
    ".*is_gradient_checkpointing.* is deprecated",
    # peft on merging into a quantized layer; the core measures what merging changes itself
    # (suite/measures/inference.py: merged figures not applicable where the logits differ)
    "Merge lora module to .*-bit linear may get different generations",
)
#: noise only where no GPU exists: peft's BOFT tries to build its CUDA kernel on first use, then
#: warns that it failed and that it sets a factor it does not set. On a GPU the first line says
#: something (ninja is missing, so BOFT runs its slower path) and is kept.
SILENCED_WITHOUT_CUDA = (
    "Failed to load the CUDA extension: .*check if ninja is available",
    "Setting boft_n_butterfly_factor to 1 to speed up",
)

#: transformers' own progress bars that tell a leitai user nothing, by their description
SILENT_BARS = frozenset({"Loading weights", "Writing model shards"})


def quiet_libraries() -> None:
    """From now on this process shows none of the libraries' known noise: :data:`SILENCED`'s
    warnings (and :data:`SILENCED_WITHOUT_CUDA`'s on a machine without CUDA) and
    :data:`SILENT_BARS`."""
    import torch

    patterns = SILENCED if torch.cuda.is_available() else SILENCED + SILENCED_WITHOUT_CUDA
    for pattern in patterns:
        warnings.filterwarnings("ignore", message=pattern)
    quiet_bars()


def quiet_bars() -> None:
    """From now on, transformers draws none of :data:`SILENT_BARS` in this process.
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
