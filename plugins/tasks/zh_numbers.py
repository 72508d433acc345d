"""``zh-numbers``: write numbers and amounts between Arabic digits and Chinese.

Three directions, generated with ``cn2an``: Arabic → Chinese numerals (12345 → 一万二千三百四十五),
Chinese numerals → Arabic, and an amount → 人民币大写 (12345.6 → 壹万贰仟叁佰肆拾伍元陆角).
The numbers are a fixed pseudo-random sequence drawn from hashes (no RNG state): integers of
1–12 digits, negative integers and decimals with one or two decimal places. A number whose
conversion cn2an cannot read back to the same value is left out. Every direction of one number
lands in the same split (the split is keyed on the number), so no number is trained on in one
direction and tested in another.

Scored with exact match.
"""
from __future__ import annotations

import hashlib
from functools import cached_property, lru_cache

from suite import Example, Task, hookimpl
from suite.data.scorers import exact_match
from suite.data.tasks import assign_splits, take

TO_CHINESE = "把阿拉伯数字写成中文数字。"
TO_ARABIC = "把中文数字写成阿拉伯数字。"
TO_RMB = "把金额写成人民币大写。"
#: how many numbers the full task draws
COUNT = 10_000


def number(i: int) -> str:
    """The ``i``-th number of the task's sequence, as its canonical Arabic string."""
    h = int.from_bytes(hashlib.sha1(f"zh-numbers:{i}".encode()).digest(), "big")
    kind, digits = h % 4, 1 + (h >> 8) % 12
    value = (h >> 16) % 10**digits
    if kind == 1:  # negative integer
        return f"-{max(value, 1)}"
    if kind >= 2:  # one or two decimal places, no trailing zero, integer part of at most 8 digits
        places = kind - 1
        cents = (h >> 80) % 10**places
        cents = cents if cents % 10 else cents + 1
        return f"{value % 10**8}.{cents:0{places}d}"
    return str(value)


def _same_value(text, arabic: str) -> bool:
    return float(text) == float(arabic)


@lru_cache(maxsize=4)
def examples(count: int = COUNT) -> tuple[Example, ...]:
    """Every example of the first ``count`` numbers, all directions."""
    import cn2an

    out = []
    for i in range(count):
        arabic = number(i)
        chinese = cn2an.an2cn(arabic, "low")
        if not _same_value(cn2an.cn2an(chinese, "strict"), arabic):
            continue
        out += [Example("", TO_CHINESE, arabic, chinese), Example("", TO_ARABIC, chinese, arabic)]
        if not arabic.startswith("-"):
            out.append(Example("", TO_RMB, arabic, cn2an.an2cn(arabic, "rmb")))
    return tuple(out)


def number_of(example: Example) -> str:
    """The Arabic form of an example's number, whichever direction it asks for."""
    return example.output if example.instruction == TO_ARABIC else example.input


class ZhNumbers(Task):
    name = "zh-numbers"
    description = "阿拉伯数字 ↔ 中文数字 / 大写金额 (generated with cn2an)"
    source = f"{COUNT:,} numbers from a fixed hash sequence, converted with cn2an"
    score_name = "exact_match"
    max_new_tokens = 48  # the longest answer (a 12-digit number in Chinese) has about 30 characters
    version = "1"
    default_sizes = {"train": 512, "dev": 64, "test": 64}

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        return assign_splits(examples(), key=number_of)

    def splits(self, sizes=None):
        return take(self._splits, sizes)

    def score(self, predictions, references):
        return exact_match(predictions, references)


@hookimpl
def register_tasks(register):
    register(ZhNumbers())
