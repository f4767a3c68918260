"""Prefect tasks: each stage of the pipeline as a small typed function over core and adapters."""

from typing import Any

from adapters.layout import IntegrityError


def retry_unless_tampered(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures, never a tampered version.

    A manifest that differs from its recorded hash stays different: retrying only delays the
    failure that names it.
    """
    return not isinstance(getattr(state, "data", None), IntegrityError)
