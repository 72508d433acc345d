"""Subcommands that plugins add to the ``leitai`` command line (hook ``register_commands``)."""
from __future__ import annotations


class Command:
    """Base class for a plugin's subcommand. Register instances through ``register_commands``."""

    #: the word after ``leitai``; must not clash with the core's commands (run, report, list, new-plugin)
    name: str = ""
    #: one line for ``leitai --help``
    help: str = ""

    def add_arguments(self, parser) -> None:
        """Add the subcommand's arguments to its ``argparse`` parser."""

    def run(self, args) -> int:
        """Do the work for the parsed ``args``; return the exit status."""
        raise NotImplementedError

    @property
    def description(self) -> str:
        return self.help
