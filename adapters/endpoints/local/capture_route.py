"""The ``capture`` key the local endpoint writes on a model's route: where, what, how much.

Capture keeps only what it must (:mod:`serving.capture_filter`): the route names the model's
declared input columns, the only request keys the router captures, and the share of answers to
keep. An experiment captures every answer; outside one, the model's
``endpoint.data_capture_percent`` decides, and 0 (the default) turns capture off. An experiment
remembers the capture that was on before it, and its stop puts that back.
"""

from __future__ import annotations

from typing import Any

from core.endpoint import VersionToServe

EXPERIMENT_PERCENT = 100.0
"""An experiment's analysis reads every answer of both arms."""


def capture_entry(
    prefix: str, target: VersionToServe, percent: float, kms_key_id: str | None = None
) -> dict[str, Any]:
    """The route's ``capture`` object.

    Args:
        prefix: store URL of the model's capture prefix.
        target: the version served (its family declares the input columns).
        percent: share of answers captured, in (0, 100].
        kms_key_id: the store's KMS key, when it is an encrypted S3 bucket.
    """
    from core.families import get_family

    entry = {
        "uri": prefix,
        "endpoint": target.model,
        "kms_key_id": kms_key_id,
        "columns": list(get_family(target.family).input_columns()),
        "percent": float(percent),
    }
    return {k: v for k, v in entry.items() if v is not None}


def deployed_capture(
    prefix: str, target: VersionToServe, kms_key_id: str | None = None
) -> dict[str, Any] | None:
    """The ``capture`` of a route that serves ``target`` alone: None when its config says 0 %."""
    percent = target.endpoint.data_capture_percent
    return capture_entry(prefix, target, percent, kms_key_id) if percent > 0 else None
