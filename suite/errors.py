"""Errors the CLI turns into one line and a non-zero exit instead of a traceback."""


class UsageError(Exception):
    """Input the user must fix (unknown name, bad config, unreadable data...)."""


def unknown(kind: str, name: str, known, hint: str = "") -> UsageError:
    """The one-line error for a name nobody registered: ``unknown method 'x' (known: a, b)``."""
    listed = ", ".join(sorted(known)) or "none"
    return UsageError(f"unknown {kind} {name!r} (known: {listed}{', ' + hint if hint else ''})")
