"""The arena's own errors: input the user must fix (the CLI prints one line and exits with
status 2, no traceback), and a method that broke the arena's rules (its cell fails)."""


class UsageError(Exception):
    """Input the user must fix (unknown name, bad config, unreadable data...)."""


def unknown(kind: str, name: str, known, hint: str = "") -> UsageError:
    """The one-line error for a name nobody registered: ``unknown method 'x' (known: a, b)``."""
    listed = ", ".join(sorted(known)) or "none"
    return UsageError(f"unknown {kind} {name!r} (known: {listed}{', ' + hint if hint else ''})")


class GuardError(Exception):
    """A method broke the arena's rules (e.g. left frozen-declared base weights trainable)."""
