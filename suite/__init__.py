"""leitai (擂台): an arena for parameter-efficient fine-tuning methods on Chinese tasks.

The public plugin API: hooks are declared in :mod:`suite.hookspecs`; plugins implement them
with :data:`hookimpl` and register :class:`Method`, :class:`Task`, :class:`ModelSpec`,
:class:`SideCorpus` and :class:`Command` instances and :class:`Executor` subclasses. Input a
user must fix is a :class:`UsageError` (one line, exit status 2).
"""
from . import quiet  # noqa: F401  (first: it quiets a library before peft can import it)
from .commands import Command
from .errors import UsageError
from .executors import Executor
from .hookspecs import hookimpl
from .methods import Method
from .models import ModelSpec
from .peft_method import PeftMethod
from .side_corpus import SideCorpus
from .tasks import Example, Task, Turn

__version__ = "0.1.0"
__all__ = ["hookimpl", "Method", "PeftMethod", "ModelSpec", "Task", "Example", "Turn", "SideCorpus", "Executor",
           "Command", "UsageError", "__version__"]
