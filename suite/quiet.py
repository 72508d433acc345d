"""Third-party log lines no leitai process should print; :mod:`suite` imports this first, so
every leitai process (the CLI, each cell's process, a Ray worker) has it before anything
imports peft.

bitsandbytes 0.50 (which peft imports whenever it is installed) warns at import, on a CPU with
AVX512-BF16, that the optional ``kernels`` package for a faster 4-bit kernel is missing. With no
logging handler configured, Python's last-resort handler writes it to stderr: a line on every
process's stderr, which must stay one line for a usage error. bitsandbytes falls back to its own
kernel, so only that logger is quieted, to errors.
"""
import logging

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
