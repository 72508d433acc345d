"""leitai (擂台): an arena for parameter-efficient fine-tuning methods on Chinese tasks.

The public plugin API: hooks are declared in :mod:`suite.hookspecs`; plugins implement them
with :data:`hookimpl` and register :class:`Method`, :class:`Task`, :class:`ModelSpec`,
:class:`SideCorpus` and :class:`Command` instances and :class:`Executor` subclasses. Input a
user must fix is a :class:`UsageError` (one line, exit status 2). What else a plugin may
import is listed in :mod:`suite.api`; the packages below follow the stages of a shootout
(``docs/design.md``).
"""
from . import (
    api,
    code_files,  # noqa: F401  (before leitai's modules: when this process began importing them)
    quiet,  # noqa: F401  (before peft: it quiets a library peft imports)
)

api.install()  # the import paths of leitai before its modules were grouped by stage (suite.api.MOVED)

from .cli.plugin_command import Command  # noqa: E402
from .data.side_corpus import SideCorpus  # noqa: E402
from .data.tasks import Example, Task, Turn  # noqa: E402
from .errors import UsageError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .methods.method import Method  # noqa: E402
from .methods.peft_method import PeftMethod  # noqa: E402
from .models.loading import ModelSpec  # noqa: E402
from .shootout.executors import Executor  # noqa: E402

__version__ = "0.1.0"
#: the same names as suite.api.CORE (tests/test_api.py holds them equal)
__all__ = ["hookimpl", "Method", "PeftMethod", "ModelSpec", "Task", "Example", "Turn", "SideCorpus", "Executor",
           "Command", "UsageError", "__version__"]
