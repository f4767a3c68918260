"""The layout holds itself: imports point one way and each client library has one owner.

docs/architecture.md states the rules; this test reads every product module's imports (with
``ast``, nothing is imported) and fails naming the module that breaks one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

PACKAGES = ("cli", "flows", "tasks", "core", "adapters", "serving")

MAY_IMPORT = {
    "core": {"core"},
    "adapters": {"adapters", "core"},
    "tasks": {"tasks", "adapters", "core"},
    "flows": {"flows", "tasks", "adapters", "core"},
    "cli": {"cli", "flows", "tasks", "adapters", "core"},
    "serving": {"serving", "core", "adapters"},
}
"""Which of our packages each package may import (at module level or inside functions)."""

ALSO_MAY_IMPORT = {
    "adapters.endpoints.local": {"serving.routes"},
    "adapters.capture": {"serving.codec"},
}
"""Named exceptions: the local endpoint writes the route table whose format the router owns;
the capture reader parses captured bodies with the serving app's own codec."""

CLIENTS = {
    "boto3": (
        "adapters/aws.py",
        "adapters/store.py",
        "adapters/endpoints/sagemaker/",
        "adapters/training/",
    ),
    "botocore": (
        "adapters/aws.py",
        "adapters/store.py",
        "adapters/endpoints/sagemaker/",
        "adapters/training/",
    ),
    "mlflow": ("adapters/registry.py",),
    "sqlalchemy": ("adapters/source/",),
    "subprocess": ("adapters/git.py", "adapters/prefect_server.py", "adapters/endpoints/local/"),
    "psutil": ("adapters/endpoints/local/",),
    "httpx": ("adapters/endpoints/local/",),
    "aiohttp": ("serving/router.py",),
}
"""Each outside system's client library, and the one adapter allowed to import it."""


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute module names imported by ``path`` (``TYPE_CHECKING`` blocks left out)."""
    tree = ast.parse(path.read_text())
    nodes: list[ast.AST] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes.append(node)
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        pending.extend(ast.iter_child_nodes(node))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _ours(name: str) -> str | None:
    """The module of ours that ``name`` refers to (longest known prefix), if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_package_imports_only_the_layers_beneath_it(module: str) -> None:
    allowed = MAY_IMPORT[module.split(".")[0]]
    extra = next((v for k, v in ALSO_MAY_IMPORT.items() if module.startswith(k)), set())
    wrong = sorted(
        {
            target
            for name in _imports(MODULES[module], top_level_only=False)
            if (target := _ours(name))
            and target.split(".")[0] not in allowed
            and target not in extra
        }
    )
    assert not wrong, f"{module} imports {wrong}; it may import only {sorted(allowed)}"


@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_each_client_library_is_imported_by_its_adapter_only(library: str) -> None:
    owners = CLIENTS[library]
    importers = sorted(
        str(path.relative_to(PROJECT_ROOT))
        for path in MODULES.values()
        if any(n.split(".")[0] == library for n in _imports(path, top_level_only=False))
    )
    strays = [p for p in importers if not p.startswith(owners)]
    assert importers, f"nothing imports {library}: remove it from CLIENTS"
    assert not strays, f"{library} is imported outside {owners}: {strays}"


def test_no_import_cycle_among_our_modules() -> None:
    graph = {
        module: {t for n in _imports(path, top_level_only=True) if (t := _ours(n)) != module}
        - {None}
        for module, path in MODULES.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(t for t in graph[module] if t):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target] if target in path else [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
