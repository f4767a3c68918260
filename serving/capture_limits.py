"""Byte caps on what a caller can make the router hold or write: capture and the shadow queue.

A caller controls the size of what it sends (up to the router's body limit, 6 MB), so every
buffer that keeps request bodies is capped in bytes, not in records: a count cap of 1,000
records holds 6 GB of 6 MB bodies. What a cap refuses is dropped and counted
(``mlops_router_capture_dropped_*`` and ``mlops_router_shadow_dropped`` in ``/metrics``);
the caller's answer never depends on it.

The caps come from the router's environment (``MLOPS_CAPTURE_BUFFER_BYTES``,
``MLOPS_CAPTURE_RECORD_BYTES``, ``MLOPS_CAPTURE_HOURLY_BYTES``, ``MLOPS_SHADOW_QUEUE_BYTES``),
validated here once when the router is built.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

MiB = 1024 * 1024

ENV = {
    "buffer_bytes": "MLOPS_CAPTURE_BUFFER_BYTES",
    "record_bytes": "MLOPS_CAPTURE_RECORD_BYTES",
    "hourly_bytes": "MLOPS_CAPTURE_HOURLY_BYTES",
    "shadow_queue_bytes": "MLOPS_SHADOW_QUEUE_BYTES",
}
"""Each cap's environment variable."""


class CaptureLimits(BaseModel):
    """The router's byte caps (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    buffer_bytes: int = Field(
        default=64 * MiB,
        ge=1 * MiB,
        le=4096 * MiB,
        description="Bytes of captured requests and answers waiting in memory to be written; "
        "a record that would pass it is dropped.",
    )
    record_bytes: int = Field(
        default=8 * MiB,
        ge=64 * 1024,
        le=64 * MiB,
        description="Largest captured record (request plus answer); a larger one is dropped.",
    )
    hourly_bytes: int = Field(
        default=512 * MiB,
        ge=1 * MiB,
        le=64 * 1024 * MiB,
        description="Capture bytes written per endpoint and clock hour; records past it are "
        "dropped until the next hour, so the store's capture is bounded by this times the "
        "retention.",
    )
    shadow_queue_bytes: int = Field(
        default=64 * MiB,
        ge=1 * MiB,
        le=4096 * MiB,
        description="Bytes of request copies waiting for the shadow; a copy that would pass "
        "it is dropped.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CaptureLimits:
        """The caps set in ``environ`` (the defaults for the others).

        Raises:
            pydantic.ValidationError: a cap is not an integer or out of its bounds.
        """
        return cls.model_validate({k: environ[v] for k, v in ENV.items() if environ.get(v)})
