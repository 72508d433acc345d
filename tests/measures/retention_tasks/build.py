"""Build the retention fixture: two small Chinese multiple-choice sets in C-Eval's CSV layout
(``id,question,A,B,C,D,answer``), made from idioms tiny-zh saw in pretraining (its units
``成语：释义``; a 5M-parameter model cannot answer C-Eval's questions, but it completes idioms).

``python tests/measures/retention_tasks/build.py`` rewrites the two CSV files beside it; the
result depends only on the installed packages' data (chengyu-cli's idioms, and tiny-zh's
training corpus, plugins/models/tiny_zh/corpus.py), so it is reproducible.

- ``idiom_completion_val.csv`` (task ``zh-idiom-completion``): the question is the first two
  characters of an idiom, the choices four endings of two characters (its own, and three that
  make no idiom with those characters).
- ``idiom_last_val.csv`` (task ``zh-idiom-last``): the first three characters; the choices four
  last characters.

Chance is 0.25; tiny-zh scores 0.57 and 0.73 (tests/measures/test_retention.py checks it is
above chance).

Only four-character idioms whose ``成语：释义`` unit is in tiny-zh's *training* units are used (not its held-out
units, not the units the corpus leaves out because a task's dev or test example contains them).
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

HERE = Path(__file__).parent
QUESTIONS = 100  # per set
LETTERS = "ABCD"


def _h(*parts: str) -> int:
    return int.from_bytes(hashlib.sha1("|".join(parts).encode("utf-8")).digest()[:8], "big")


def idioms() -> list[tuple[str, str]]:
    """(idiom, explanation) pairs of four-character idioms whose unit tiny-zh trained on, in a fixed
    pseudo-random order."""
    from plugins.models.tiny_zh.corpus import build_corpus
    from plugins.tasks.corpora import chengyu_entries

    train = set(build_corpus().train)
    pairs = {}
    for e in chengyu_entries():
        word, expl = e.get("word") or "", (e.get("explanation") or "").strip()
        if len(word) == 4 and 8 <= len(expl) <= 24 and "”" not in expl and f"{word}：{expl}" in train:
            pairs.setdefault(word, expl)
    return sorted(pairs.items(), key=lambda p: _h("order", p[0]))


def _row(i: int, question: str, right: str, wrong: list[str], key: str) -> dict:
    slot = _h("slot", key) % 4
    choices = wrong[:slot] + [right] + wrong[slot:]
    return {"id": i, "question": question, **dict(zip(LETTERS, choices)), "answer": LETTERS[slot]}


def completion(pairs, start: int, given: int) -> list[dict]:
    """The first ``given`` characters of an idiom; the choices: its ending, and three endings of
    other idioms that make no idiom with those characters."""
    words = {w for w, _ in pairs}
    rows = []
    for i, (word, _) in enumerate(pairs[start:start + QUESTIONS]):
        head, tail = word[:given], word[given:]
        ends = sorted({w[given:] for w in words if w[given:] != tail and head + w[given:] not in words},
                      key=lambda e: _h("completion", word, e))
        rows.append(_row(i, head, tail, ends[:3], word))
    return rows


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "question", *LETTERS, "answer"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    pairs = idioms()
    write(HERE / "idiom_completion_val.csv", completion(pairs, 0, 2))
    write(HERE / "idiom_last_val.csv", completion(pairs, QUESTIONS, 3))
    print(f"{len(pairs)} idioms; wrote {QUESTIONS} questions to each set in {HERE}")
