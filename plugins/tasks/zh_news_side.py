"""``zh-news-side``: the side corpus forgetting is measured on.

A fixed 3% of the People's Daily 1998 sentences (by a salted hash of the normalised text,
:func:`plugins.tasks.corpora.side_sentences`) that every People's Daily task leaves out and that
tiny-zh's pretraining leaves out too, so no method ever trains on them and the base model
never saw them. Selecting them means parsing the whole corpus (seconds), so the selection is
kept in leitai's cache (:mod:`suite.data.cache`) and every cell after the first reads it from there.
"""
from suite import SideCorpus, hookimpl

#: bump when plugins.tasks.corpora.side_sentences selects differently
VERSION = "1"


class ZhNewsSide(SideCorpus):
    name = "zh-news-side"
    default = True
    description = "held-out People's Daily 1998 sentences (no task or pretraining uses them)"

    def texts(self, count):
        from plugins.tasks.corpora import SIDE_PCT, side_sentences
        from suite.data import cache

        name = f"side-{self.name}-v{VERSION}-{SIDE_PCT}.json"
        sentences = cache.load_json(name)
        if sentences is None:
            sentences = list(side_sentences())
            cache.store_json(name, sentences)
        return sentences[:count]


@hookimpl
def register_side_corpora(register):
    register(ZhNewsSide())
