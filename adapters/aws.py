"""boto3 clients as every AWS adapter builds them: a session of their own, standard retries.

The store (S3), the SageMaker endpoint target and the training job each build their clients
here from the same settings (profile, region, ``AWS_ENDPOINT_URL``), so they act as one account
and retry the same way. boto3 is imported on first use: importing an adapter costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast


def aws_clients(
    services: Iterable[str],
    *,
    profile: str | None,
    region: str | None,
    endpoint_url: str | None,
    max_attempts: int = 5,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> dict[str, Any]:
    """One boto3 client per service name, from one new session.

    Args:
        services: boto3 service names (``s3``, ``sagemaker``, ``logs``...).
        profile: the AWS profile (None: the environment's credentials).
        region: the region (None: the profile's or the environment's).
        endpoint_url: ``AWS_ENDPOINT_URL`` (moto server in tests); None for AWS itself.
        max_attempts: attempts per call, first included.
        connect_timeout: seconds; None keeps botocore's default.
        read_timeout: seconds; None keeps botocore's default.
    """
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session is not safe to share across threads.
    session = boto3.session.Session(profile_name=profile, region_name=region)
    # Standard retry mode: throttling (SageMaker's Describe calls on a busy account), 500/503 and
    # dropped connections are retried with jittered exponential backoff; the legacy default
    # retries fewer cases.
    options: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": max_attempts}}
    if connect_timeout is not None:
        options["connect_timeout"] = connect_timeout
    if read_timeout is not None:
        options["read_timeout"] = read_timeout
    config = Config(**options)
    # The stubs type each client by its literal service name; the names here are data.
    make = cast(Any, session.client)
    return {name: make(name, endpoint_url=endpoint_url, config=config) for name in services}
