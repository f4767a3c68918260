"""The Prefect API as the tasks use it: artifacts.

Artifacts are created only inside a Prefect run; called from a notebook outside a flow, the
publishing functions do nothing but return what they were given, so every task stays usable
there.
"""

from __future__ import annotations

import re
from typing import Any


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_markdown(key: str, markdown: str, description: str) -> str:
    """Create a markdown artifact under ``key`` when inside a run; return the markdown."""
    if _in_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)
    return markdown


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> list[dict[str, Any]]:
    """Create a table artifact under ``key`` when inside a run; return the rows."""
    if _in_run():
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=rows, key=artifact_key(key), description=description)
    return rows
