"""Endpoint targets: where a promoted model version is served.

A target rolls a published version out to a live endpoint and reports what serves now. Two
targets implement the same interface, so the rollout flow never branches on where it deploys:

- ``local`` (:mod:`adapters.endpoints.local`): the serving app as background processes on
  loopback, behind a small router. The embedded default, used when no AWS setting is present.
- ``sagemaker`` (:mod:`adapters.endpoints.sagemaker`): a SageMaker real-time or serverless
  endpoint through boto3 (moto server in tests).

Contract every target keeps (the types are in :mod:`core.endpoint`):

- :meth:`EndpointTarget.deploy` either ends with the endpoint serving the new version, or raises
  :class:`RolloutFailed` with the endpoint serving what it served before and every resource
  created for the failed attempt removed.
- Resource names derive from model, version and a content hash, so a retried deploy of the
  same version is a no-op, not a duplicate.
- Only resources carrying the project's tag or name prefix are listed or deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import PlatformConfig
    from core.endpoint import EndpointTarget
    from core.settings import Settings


def open_target(settings: Settings, platform: PlatformConfig) -> EndpointTarget | None:
    """The target chosen by ``settings.endpoint_target``: local, sagemaker, or none.

    ``auto`` (the default) picks ``sagemaker`` when AWS is configured (``AWS_ENDPOINT_URL``,
    ``AWS_PROFILE`` or an ``s3://`` store) and ``local`` otherwise.
    """
    kind = settings.resolved_endpoint_target
    if kind == "none":
        return None
    if kind == "local":
        from adapters.endpoints.local import LocalTarget

        return LocalTarget.from_settings(settings, platform)
    from adapters.endpoints.sagemaker.target import SageMakerTarget

    return SageMakerTarget.from_settings(settings, platform)
