"""Settings every test shares, and the fixture modules registered once for the whole suite.

The fixtures themselves live in ``tests/fixtures/`` (see ``tests/README.md``); a test requests
them by name, without importing them.
"""

from __future__ import annotations

import os

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
