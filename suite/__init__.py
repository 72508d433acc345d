"""leitai (擂台): an arena for parameter-efficient fine-tuning methods on Chinese tasks.

The public plugin API: hooks are declared in :mod:`suite.hookspecs`; plugins implement them
with :data:`hookimpl` and register :class:`Method`, :class:`Task` and :class:`ModelSpec`
instances.
"""
from .hookspecs import hookimpl
from .methods import Method, PeftMethod
from .models import ModelSpec
from .tasks import Example, Task

__version__ = "0.1.0"
__all__ = ["hookimpl", "Method", "PeftMethod", "ModelSpec", "Task", "Example", "__version__"]
