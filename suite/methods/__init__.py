"""The methods stage: what a method is to the core (:mod:`.method`), one backed by peft
(:mod:`.peft_method`) or by a user's PEFT config file (:mod:`.peft_file`), and the arena's checks
on the model a method hands back (:mod:`.guards`)."""


def __getattr__(name: str):  # what ``suite.methods`` held before it became this package (suite.api.MOVED)
    from ..api import forward

    return forward(__name__, name)
