"""Settings every test shares, and the fixture modules registered once for the whole suite.

The fixtures themselves live in ``tests/fixtures/`` (see ``tests/README.md``); a test requests
them by name, without importing them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = (
    "tests.fixtures.home",
    "tests.fixtures.moto",
    "tests.fixtures.postgres",
    "tests.fixtures.prefect",
    "tests.fixtures.sagemaker_moto",
    "tests.fixtures.sagemaker_network_moto",
    "tests.fixtures.images",
)


@pytest.fixture(autouse=True)
def _keep_the_umask() -> Iterator[None]:
    """Put the process's umask back after each test.

    ``mlops`` sets umask 077 when it starts (``cli.main``); a test that calls it in this process
    would otherwise leave every later test's files readable by their owner only (the images'
    user, uid 10001, could then not read a model directory a later test mounts).
    """
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)
