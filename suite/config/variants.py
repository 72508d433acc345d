"""Settings that are a dimension of a shootout, like seeds: ``--replay none,zh-news-side:0.3``
(or ``--quantize none,nf4``) runs every method at each value, and each value makes the method a
variant of its own (``full + replay 0.3``, ``lora @ nf4``).

One place turns a cell's variant settings into what tells the variants apart:

- :func:`label`: the suffix of the method's name in every table, figure and paired test
  (``full`` and ``full + replay 0.3``); the report's ``method`` column is the method's name
  plus this label (:func:`display`), so the report compares variants like any two methods;
- :func:`slug`: the part of the run id (``zh-sentiment__full__replay-zh-news-side-0.3__s0``).

A dimension at its ``off`` value adds nothing to either, so the runs of a shootout without it
keep today's run ids, labels and ``--resume``. Adding a dimension is one :class:`Dimension` in
:data:`DIMENSIONS` (and its setting in :mod:`suite.config.settings`, whose value in a shootout is a
comma-separated list of the cells' values).
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Dimension:
    #: the :class:`suite.config.settings.RunSettings` field; a cell holds one value of it
    setting: str
    #: the value that is no variant: no label, no run-id part (what a shootout without the flag runs)
    off: str
    #: (value, the cell's settings) -> the label's part, e.g. ``" + replay 0.3"``
    label: Callable[[str, dict], str]
    #: value -> the run id's part, e.g. ``"replay-zh-news-side-0.3"``
    slug: Callable[[str], str]
    #: True where the value changes the base model itself (``--quantize``): the baselines, which
    #: score the untrained base, then run at each value too (:func:`baseline_combinations`)
    baselines: bool = False


def _replay_label(value: str, config: dict) -> str:
    from ..data.replay import describe

    return " + " + describe(value, config.get("side_corpus", ""))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _replay_slug(value: str) -> str:
    from ..data.replay import parse

    source, fraction = parse(value)
    return _safe(f"replay-{source.rsplit('/', 1)[-1]}-{fraction:g}")


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("replay", "none", _replay_label, _replay_slug),
    # the base's precision (suite/models/quantize.py): ``lora @ nf4``, ``task__lora__nf4__s0``
    Dimension("quantize", "none", lambda value, config: f" @ {value}", lambda value: _safe(value), baselines=True),
    # what trains in bf16 ("pure bf16"): ``full @ bf16 trainables``, ``task__full__bf16-trainables__s0``
    Dimension("trainable_dtype", "float32", lambda value, config: " @ bf16 trainables",
              lambda value: "bf16-trainables"),
    # the optimiser: ``full + adamw8bit``, ``task__full__adamw8bit__s0``
    Dimension("optimizer", "adamw", lambda value, config: f" + {value}", lambda value: _safe(value)),
)
#: the settings that are dimensions: runs of one task differ in them on purpose
SETTINGS = tuple(d.setting for d in DIMENSIONS)


def values(text) -> list[str]:
    """A dimension's values as given to a shootout (``"none,zh-news-side:0.3"``, or a list)."""
    items = text if isinstance(text, list) else str(text).split(",")
    return list(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))


def every(config) -> list[dict]:
    """Every combination of the dimensions' values in a shootout ``config`` (a
    :class:`~suite.config.settings.ShootoutConfig`), as ``{setting: value}`` dicts, in the order given."""
    lists = [values(getattr(config, d.setting)) or [d.off] for d in DIMENSIONS]
    return [dict(zip(SETTINGS, combo)) for combo in itertools.product(*lists)]


def off() -> dict:
    """Every dimension at its off value."""
    return {d.setting: d.off for d in DIMENSIONS}


def baseline_combinations(config) -> list[dict]:
    """The variants the baselines run at: every value of a dimension that changes the base
    (:attr:`Dimension.baselines`: ``--quantize none,nf4`` scores the untrained base on each),
    every other dimension off (a ``--replay`` setting changes only training)."""
    lists = [(values(getattr(config, d.setting)) or [d.off]) if d.baselines else [d.off] for d in DIMENSIONS]
    return [dict(zip(SETTINGS, combo)) for combo in itertools.product(*lists)]


def suffix(config: dict) -> str:
    """The label suffix of a cell's (or a record's ``config``'s) variant: ``""`` when every
    dimension is off (or missing, as in records written before it existed)."""
    return "".join(d.label(config[d.setting], config) for d in DIMENSIONS
                   if config.get(d.setting, d.off) != d.off)


def slug(config: dict) -> str:
    """The run-id part of a cell's variant, ``""`` when every dimension is off."""
    return "__".join(d.slug(config[d.setting]) for d in DIMENSIONS if config.get(d.setting, d.off) != d.off)


def display(method: str, config: dict) -> str:
    """The name the report gives a method's runs: the method plus its variant's label."""
    return method + suffix(config)


def record_name(record: dict) -> str:
    """:func:`display` of a run record."""
    return display(str(record.get("method")), record.get("config") or {})


def along(record: dict, setting: str) -> tuple[str, str, str]:
    """A record's place along one dimension: (the report's name for its method with every other
    dimension's label, that is the line a figure joins the values along; this dimension's label,
    ``""`` when off; its value)."""
    config = record.get("config") or {}
    dimension = next(d for d in DIMENSIONS if d.setting == setting)
    value = config.get(setting, dimension.off)
    own = dimension.label(value, config).lstrip(" +@") if value != dimension.off else ""
    return display(str(record.get("method")), {**config, setting: dimension.off}), own, value
