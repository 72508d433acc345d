"""The config stage, the settings of a shootout: every setting defined once (:mod:`.settings`), where
their values come from (:mod:`.sources`: defaults < TOML < command line), the settings that are a
dimension of the shootout (:mod:`.variants`), and sweeps (:mod:`.sweep`: grids, choosing on dev).

Checking a setting may read the data, the model's config and the methods below it; nothing
below imports this package."""


def __getattr__(name: str):  # what ``suite.config`` held before it became this package (suite.api.MOVED)
    from ..api import forward

    return forward(__name__, name)
