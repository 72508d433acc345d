"""``leitai new-plugin NAME``: write an installable method-plugin package from the templates
in ``suite/cli/templates/plugin/``."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from ..errors import UsageError

NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

#: template file -> where it goes in the package (``$module`` and ``$name`` substituted)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "method.py.tmpl": "$module/method.py",
    "test_method.py.tmpl": "tests/test_$module.py",
}


def names(name: str) -> dict:
    """The names a plugin called ``name`` uses: distribution, module and class."""
    if not NAME.match(name):
        raise UsageError(
            f"new-plugin: {name!r} is not a method name (lower-case letters, digits and single "
            f"hyphens, starting with a letter, e.g. my-adapter)"
        )
    module = "leitai_" + name.replace("-", "_")
    return {
        "name": name, "module": module, "dist": "leitai-" + name,
        "cls": "".join(part.capitalize() for part in name.split("-")) + "Method",
    }


def new_plugin(name: str, directory: Path | None = None, registry=None) -> tuple[Path, list[Path]]:
    """Write the package for method ``name`` into ``directory`` (default ``./leitai-NAME``).

    Refuses a name that an installed plugin already registers and a directory that exists and
    is not empty. Returns the package directory and the files written.
    """
    values = names(name)
    if registry is not None and name in registry.methods:
        origin = registry.plugins[registry.origin[("methods", name)]].source
        raise UsageError(f"new-plugin: a method called {name!r} is already installed ({origin}); choose another name")
    root = Path(directory) if directory else Path(values["dist"])
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"new-plugin: {root} already exists and is not an empty directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"new-plugin: cannot create {root} ({e.strerror or e})") from None
    templates = resources.files("suite.cli") / "templates" / "plugin"
    written = []
    for template, target in FILES.items():
        path = root / Template(target).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(templates.joinpath(template).read_text(encoding="utf-8")).substitute(values),
                        encoding="utf-8")
        written.append(path)
    init = root / values["module"] / "__init__.py"
    init.write_text(f'"""The {name} method for leitai (the method is in method.py)."""\n', encoding="utf-8")
    return root, written + [init]
