"""The hooks a leitai plugin can implement.

A plugin is any module registered under the ``leitai`` entry-point group (the built-ins in
``plugins/`` are registered the same way). It implements one or more of the hooks below with
the ``@hookimpl`` decorator::

    from suite import hookimpl, Method

    @hookimpl
    def register_methods(register):
        register(MyMethod())

Each hook receives a ``register`` callable and calls it once per object it contributes. The
core records which plugin registered what, so ``leitai list`` can say where things come from.
"""
import pluggy

hookspec = pluggy.HookspecMarker("leitai")
hookimpl = pluggy.HookimplMarker("leitai")


@hookspec
def register_methods(register):
    """Register adapter methods.

    Call ``register(method)`` with an instance of a :class:`suite.methods.method.Method` subclass
    (for a PEFT-backed method, :class:`suite.methods.peft_method.PeftMethod`). ``method.name`` is the
    name users type after ``--methods``; it must be unique across all plugins.

    What a method must do is in ``docs/plugins/methods.md``; ``suite.testing.check_method(name)``
    checks it on tiny models, and the core checks the arena's rules again in every run.
    """


@hookspec
def register_tasks(register):
    """Register instruction tasks.

    Call ``register(task)`` with an instance of a :class:`suite.data.tasks.Task` subclass. A task
    yields train/dev/test :class:`suite.data.tasks.Example` lists (single-turn examples, or
    conversations made with :meth:`suite.data.tasks.Example.conversation`) and scores generated
    answers; ``task.name`` is the name users type after ``--tasks``.
    """


@hookspec
def register_models(register):
    """Register named base models.

    Call ``register(model)`` with an instance of a :class:`suite.models.loading.ModelSpec` subclass.
    ``model.name`` is accepted by ``--model``; names that no plugin registers are treated as
    Hugging Face model ids or local paths.
    """


@hookspec
def register_executors(register):
    """Register executors: where and how a shootout's cells run.

    Call ``register(cls)`` with a subclass of :class:`suite.Executor`; ``cls.name`` is what
    users type after ``--executor`` (``default = True`` marks the one used when none is named).
    Its classmethod ``add_arguments(parser)`` adds its own flags to ``leitai run``. The core
    constructs it with the shootout's :class:`suite.shootout.executors.ExecutorSettings` (the flags'
    values in ``settings.options``) and calls ``map(cells, out_dir)``.
    """


@hookspec
def register_side_corpora(register):
    """Register side corpora: running text no task trains on, for measuring forgetting.

    Call ``register(corpus)`` with an instance of a :class:`suite.SideCorpus` subclass;
    ``corpus.name`` is what users type after ``--side-corpus``. The core measures every run's
    cross-entropy on it before and after training. ``--replay NAME:FRACTION`` mixes the corpus's
    texts after the first 256 (which forgetting is measured on) into training (docs/replay.md).
    """


@hookspec
def register_commands(register):
    """Register subcommands of the ``leitai`` command line.

    Call ``register(command)`` with an instance of a :class:`suite.Command` subclass;
    ``leitai COMMAND.name ...`` then parses with ``command.add_arguments`` and calls
    ``command.run(args)``. Core command names (run, report, list, new-plugin) cannot be taken.
    """
