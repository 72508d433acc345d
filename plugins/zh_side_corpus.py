"""``zh-news-side``: the side corpus forgetting is measured on.

A fixed 3% of the People's Daily 1998 sentences (by a salted hash of the normalised text,
:func:`plugins.corpora.side_sentences`) that every People's Daily task leaves out and that
tiny-zh's pretraining leaves out too, so no method ever trains on them and the base model
never saw them.
"""
from suite import hookimpl
from suite.forgetting import SideCorpus


class ZhNewsSide(SideCorpus):
    name = "zh-news-side"
    default = True
    description = "held-out People's Daily 1998 sentences (no task or pretraining uses them)"

    def texts(self, count):
        from plugins.corpora import side_sentences

        return list(side_sentences()[:count])


@hookimpl
def register_side_corpora(register):
    register(ZhNewsSide())
