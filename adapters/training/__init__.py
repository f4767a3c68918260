"""Training outside the flow's process: a SageMaker training job on the project's image.

- :mod:`adapters.training.container` is the image's side: ``docker run IMAGE train`` reads
  SageMaker's container contract under ``/opt/ml`` and calls the same family code
  (:meth:`core.families.Family.train` and ``save``) as in-process training. It imports no cloud
  client, so the serving image carries it.
- :mod:`adapters.training.sagemaker_job` is the flow's side: it uploads the training window as
  the ``train`` channel, calls ``CreateTrainingJob``, waits with boto3's waiter, reads the job's
  CloudWatch logs and ``FailureReason``, and unpacks ``model.tar.gz`` from ``S3ModelArtifacts``.

Nothing heavy is imported here: the container must not pay for (or lack) boto3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.store import Store
    from adapters.training.sagemaker_job import SageMakerTrainer
    from core.config import ModelConfig
    from core.settings import Settings


def open_trainer(settings: Settings, cfg: ModelConfig, store: Store) -> SageMakerTrainer | None:
    """The trainer ``cfg.training.target`` asks for: None for ``local`` (in-process training).

    Raises:
        TrainingJobError: ``sagemaker`` without an s3:// store, an image or a role.
    """
    if cfg.training.target == "local":
        return None
    from adapters.training.sagemaker_job import SageMakerTrainer
    from core.config import load_platform_config

    return SageMakerTrainer.from_settings(
        settings, load_platform_config(settings.config_dir), store
    )
