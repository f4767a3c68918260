"""The code's own version, from the git checkout it runs in (or the installed package)."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from core.settings import PROJECT_ROOT


@cache
def code_version() -> str:
    """``git describe`` of the checkout (``-dirty`` when modified), else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return f"intelli-rate-mlops=={version('intelli-rate-mlops')}"
        except PackageNotFoundError:
            return "unknown"
