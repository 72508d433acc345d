"""The models stage, base models: loading them (:mod:`.loading`: named models from plugins, anything
else through transformers), the dtype they load in (:mod:`.precision`), quantized bases
(:mod:`.quantize`), and a model's layers and linear maps found by role (:mod:`.architecture`;
the rows of fused maps by probing, :mod:`.layout`)."""


def __getattr__(name: str):  # what ``suite.models`` held before it became this package (suite.api.MOVED)
    from ..api import forward

    return forward(__name__, name)
