"""What the serving image installs covers what the code it copies imports.

The image installs the lock's ``serving`` group (``uv export --only-group serving``) and copies
the project files its Dockerfile names. These tests read both without building anything: every
library a copied module imports, at the top or inside a function, must be in that group's
closure in ``uv.lock``; and the build's own check (``python -m serving check``) must catch one
that is not. The image build itself is tested in ``tests/integration/test_images.py``.
"""

from __future__ import annotations

import shutil
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from core.settings import PROJECT_ROOT
from serving.image_check import (
    imported_libraries,
    missing_libraries,
    unresolved_project_modules,
)

DOCKERFILE = PROJECT_ROOT / "docker" / "serving.Dockerfile"


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _serving_closure() -> set[str]:
    """Every package the ``serving`` group pulls in, per ``uv.lock`` (markers ignored)."""
    lock = tomllib.loads((PROJECT_ROOT / "uv.lock").read_text())
    packages = {_normal(p["name"]): p for p in lock["package"]}
    project = packages["intelli-rate-mlops"]
    todo = [_normal(d["name"]) for d in project["dev-dependencies"]["serving"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [_normal(d["name"]) for d in packages[name].get("dependencies", [])]
    return seen


def _copied_tree(dest: Path) -> Path:
    """The project files the Dockerfile's ``COPY`` lines put under /opt/app, laid out in dest."""
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(w.startswith("--") for w in words):
            continue
        *sources, target = words[1:]
        for source in sources:
            path = PROJECT_ROOT / source
            if path.suffix in (".toml", ".lock", ".md"):
                continue
            if path.is_dir():
                shutil.copytree(path, dest / target, dirs_exist_ok=True)
            else:
                where = dest / target / path.name if target.endswith("/") else dest / target
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, where)
    return dest


def test_every_library_the_image_code_imports_is_in_the_serving_group(tmp_path: Path) -> None:
    app = _copied_tree(tmp_path / "app")
    assert (app / "serving" / "__main__.py").exists() and (app / "core" / "families").is_dir()
    distributions = packages_distributions()
    closure = _serving_closure()
    outside = {
        name: files
        for name, files in imported_libraries(app).items()
        if not any(_normal(d) in closure for d in distributions.get(name, [name]))
    }
    assert outside == {}, f"add to [dependency-groups] serving in pyproject.toml: {outside}"
    # The lazily imported statistics library of the forecaster is among those found.
    assert "statsmodels" in imported_libraries(app)


def test_the_serving_group_holds_no_gpu_or_orchestration_package() -> None:
    closure = _serving_closure()
    assert not {p for p in closure if p.startswith("nvidia-")}
    assert not closure & {"prefect", "mlflow", "great-expectations", "boto3"}


def test_the_build_check_finds_a_library_imported_inside_a_function(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "core").mkdir(parents=True)
    (app / "core" / "lazy.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import only_for_the_type_checker\n"
        "def fit():\n"
        "    import not_installed_anywhere.sub\n"
        "    import numpy\n"
        "    from core import families\n"
        "    return not_installed_anywhere, numpy, families\n"
    )
    assert missing_libraries(app) == {"not_installed_anywhere": ["core/lazy.py"]}
    assert set(imported_libraries(app)) == {"not_installed_anywhere", "numpy"}


def test_every_project_module_the_image_code_imports_is_copied(tmp_path: Path) -> None:
    # A module the Dockerfile copies that imports, at module level, one it does not copy fails
    # at the first request that loads it (adapters/store.py's errors once did).
    app = _copied_tree(tmp_path / "app")
    assert unresolved_project_modules(app) == {}


def test_the_build_check_finds_a_project_module_the_image_lacks(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "adapters").mkdir(parents=True)
    (app / "adapters" / "__init__.py").write_text("")
    (app / "adapters" / "store.py").write_text(
        "from adapters.store_errors import StoreError\n"
        "import adapters.present\n"
        "def s3():\n    from adapters import bucket\n    return bucket, StoreError\n"
    )
    (app / "adapters" / "present.py").write_text("")
    assert unresolved_project_modules(app) == {"adapters.store_errors": ["adapters/store.py"]}
