"""Errors the CLI turns into one line and a non-zero exit instead of a traceback."""


class UsageError(Exception):
    """Input the user must fix (unknown name, bad config, unreadable data...)."""
