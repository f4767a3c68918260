"""Every flow test runs against the session's temporary Prefect API (tests/fixtures/prefect.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _flows_need_prefect_api(prefect_api: None) -> None:
    """Start the session's Prefect API before the first flow test (it stays up until the end)."""
