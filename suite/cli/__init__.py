"""The cli stage, the ``leitai`` command line: its parser and the built-in commands (:mod:`.app`),
``leitai plan`` (:mod:`.plan`), ``leitai new-plugin`` and its templates (:mod:`.scaffold`), the
command plugins' contract (:mod:`.plugin_command`), and the generated parts of the docs
(:mod:`.docgen`, ``python -m suite.cli.docgen``)."""


def main(argv: list[str] | None = None) -> int:
    """The ``leitai`` command (the entry point ``leitai = "suite.cli:main"``)."""
    from .app import main as run

    return run(argv)


def __getattr__(name: str):  # what ``suite.cli`` held before it became this package (suite.api.MOVED)
    from ..api import forward

    return forward(__name__, name)
