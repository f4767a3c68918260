"""Which libraries the project's modules import, and which of them an environment lacks.

The serving image installs the lock's ``serving`` group and copies a subset of the project;
importing the server and every family (``python -m serving check``) catches a library imported
at module level, but not one imported inside a function (statsmodels, for the forecaster's
statistical candidates, is imported where it is used). :func:`imported_libraries` reads every
copied module with ``ast`` (nothing is imported) and lists each outside library it names,
wherever the import statement sits; :func:`missing_libraries` keeps those the running
interpreter cannot find. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

PROJECT_PACKAGES = frozenset({"cli", "flows", "tasks", "core", "adapters", "serving", "tests"})
"""Top-level names that are the project's own, not libraries."""


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
    return name == "TYPE_CHECKING"


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return found


def imported_libraries(root: Path) -> dict[str, list[str]]:
    """Every outside library the project modules under ``root`` import, with the files.

    Args:
        root: the directory that holds the project packages (``/opt/app`` in the image).

    Returns:
        Top-level module name -> the files (relative to ``root``) that import it, for every
        name that is neither the standard library's nor one of :data:`PROJECT_PACKAGES`.
    """
    found: dict[str, list[str]] = {}
    for package in sorted(PROJECT_PACKAGES):
        for path in sorted((root / package).rglob("*.py")):
            for name in _imports(ast.parse(path.read_text(), filename=str(path))):
                if name in sys.stdlib_module_names or name in PROJECT_PACKAGES:
                    continue
                found.setdefault(name, []).append(str(path.relative_to(root)))
    return found


def missing_libraries(root: Path) -> dict[str, list[str]]:
    """The libraries of :func:`imported_libraries` that this interpreter cannot import."""
    return {
        name: files
        for name, files in imported_libraries(root).items()
        if importlib.util.find_spec(name) is None
    }
