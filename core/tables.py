"""The source tables: their columns and types, event-time columns and natural keys.

The columns that models read are the families' own input schemas, named once, there; the
source adapter builds its SQL tables from :data:`SCHEMAS`, and the synthetic generator
(:mod:`core.synth`) produces rows of exactly these columns.
"""

from __future__ import annotations

from core.families import abuse_detector, limit_optimiser

TABLES: tuple[str, ...] = ("client_windows", "client_limits", "service_traffic")
"""The source tables, in the order they are seeded."""

SCHEMAS: dict[str, dict[str, str]] = {
    "client_windows": {
        "client_id": "string",
        "window_start": "timestamp",
        **abuse_detector.FEATURES,
        "is_abuse": "int64",
        "incident_type": "string",
    },
    "client_limits": {
        "client_id": "string",
        "day": "timestamp",
        **limit_optimiser.INPUTS,
        "best_limit": "float64",
    },
    "service_traffic": {
        "service": "string",
        "ts": "timestamp",
        "requests": "int64",
        "is_holiday": "int64",
    },
}
"""Columns of each table (without the database's ``id``) and their types, in order."""

EVENT_TIME: dict[str, str] = {
    "client_windows": "window_start",
    "client_limits": "day",
    "service_traffic": "ts",
}
"""The event-time column of each table."""

KEYS: dict[str, tuple[str, ...]] = {
    "client_windows": ("client_id", "window_start"),
    "client_limits": ("client_id", "day"),
    "service_traffic": ("service", "ts"),
}
"""The natural key of each table (not enforced by the database, on purpose)."""
