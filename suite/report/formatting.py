"""Numbers as a reader expects them: 3 significant figures, thousands separators, kB/MB/GB.

Values of 1,000 and more keep all their integer digits (``12,345`` rather than ``12,300``);
smaller ones get 3 significant figures. A standard deviation is written with the mean's
decimals (at least one significant figure), so ``0.650 ± 0.071``.
"""
from __future__ import annotations

import math
import re

from .stats import Summary

MISSING = "–"
_NUMERIC = re.compile(r"^[-–+\d.,/\[\]% ±kMGB]*$")
BYTE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B"))


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def decimals(v: float, sig: int = 3) -> int:
    """Decimals that show ``sig`` significant figures of ``v`` (0 from 100 up)."""
    if v == 0 or not math.isfinite(v):
        return 0
    return max(0, sig - 1 - math.floor(math.log10(abs(v))))


def number(v, places: int | None = None) -> str:
    """``v`` with 3 significant figures (or ``places`` decimals) and thousands separators."""
    if not _finite(v):
        return MISSING
    v = float(v)
    d = decimals(v) if places is None else places
    return f"{v:,.{d}f}"


def integer(v) -> str:
    return f"{round(float(v)):,}" if _finite(v) else MISSING


def byte_unit(v) -> tuple[float, str]:
    """The unit that shows ``v`` bytes with 1–3 integer digits."""
    for scale, unit in BYTE_UNITS:
        if abs(v) >= scale:
            return scale, unit
    return 1, "B"


def nbytes(v) -> str:
    if not _finite(v):
        return MISSING
    scale, unit = byte_unit(float(v))
    return f"{number(float(v) / scale)} {unit}"


def mean_std(s: Summary, kind: str = "number") -> str:
    """``mean ± std`` (just the mean for one seed or when all seeds agree) in the column's kind.

    ``kind`` is ``number``, ``integer``, ``bytes`` or ``percent``.
    """
    if s.n == 0:
        return MISSING
    scale, unit = (byte_unit(s.mean) if kind == "bytes" else (1, ""))
    mean, std = s.mean / scale, s.std / scale
    d = 0 if kind == "integer" else decimals(mean)
    text = f"{mean:,.{d}f}"
    if s.n > 1 and std > 0:
        sd = max(d, decimals(std, 1))
        text += f" ± {std:,.{sd}f}"
    if kind == "bytes":
        text += f" {unit}"
    return text


def interval(s: Summary, kind: str = "number") -> str:
    """The 95% interval as ``[low, high]``, or a dash for fewer than 2 seeds."""
    if s.n < 2 or not _finite(s.ci_low):
        return MISSING
    if kind == "bytes":
        scale, unit = byte_unit(s.mean)
        return f"[{number(s.ci_low / scale)}, {number(s.ci_high / scale)}] {unit}"
    return f"[{number(s.ci_low)}, {number(s.ci_high)}]"


def numeric_column(texts) -> bool:
    """Whether a column of formatted cells holds numbers (and is right-aligned)."""
    texts = [str(t) for t in texts]
    return bool(texts) and all(_NUMERIC.match(t) for t in texts) and any(c.isdigit() for t in texts for c in t)
