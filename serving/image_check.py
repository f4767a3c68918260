"""Which libraries the project's modules import, and which of them an environment lacks.

The serving image installs the lock's ``serving`` group and copies a subset of the project;
importing the server and every family (``python -m serving check``) catches a library imported
at module level, but not one imported inside a function (statsmodels, for the forecaster's
statistical candidates, is imported where it is used). :func:`imported_libraries` reads every
copied module with ``ast`` (nothing is imported) and lists each outside library it names,
wherever the import statement sits; :func:`missing_libraries` keeps those the running
interpreter cannot find. Imports under ``if TYPE_CHECKING:`` are left out: they never run.

The image copies only some of the project's modules, so :func:`unresolved_project_modules`
lists the project modules that a copied module imports when it is itself imported (outside any
function) but that the copy lacks: importing that module would fail. A project import inside a
function is a path the image may not take (the S3 store's, say) and is not listed.
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


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Dotted modules imported when the module runs: not inside functions or TYPE_CHECKING."""
    found: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        stack.extend(ast.iter_child_nodes(node))
    return found


def unresolved_project_modules(root: Path) -> dict[str, list[str]]:
    """Project modules imported at module level by a file under ``root`` but missing there.

    Returns:
        Dotted module name -> the files (relative to ``root``) that import it.
    """
    found: dict[str, list[str]] = {}
    for package in sorted(PROJECT_PACKAGES):
        for path in sorted((root / package).rglob("*.py")):
            for name in _module_level_imports(ast.parse(path.read_text(), filename=str(path))):
                if name.split(".")[0] not in PROJECT_PACKAGES:
                    continue
                where = root.joinpath(*name.split("."))
                if not (where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()):
                    found.setdefault(name, []).append(str(path.relative_to(root)))
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
