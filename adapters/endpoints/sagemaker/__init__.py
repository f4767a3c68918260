"""The SageMaker endpoint target: real-time or serverless endpoints through boto3.

One endpoint per model, named ``{project_tag}-{model}``, moved between endpoint configs by
SageMaker's blue/green update. Every model and endpoint config is named
``{project_tag}-{model}-{version}-{hash}``, where the hash covers what the resource holds (the
version's manifest sha256, image, role and data source for a model; the variant and data capture
for a config). The same deploy therefore always asks for the same names: a retry finds its own
resources ("already exists" with a matching definition counts as created) instead of making
duplicates, and a changed instance type gets a new config rather than an error.

A rollout ends one of two ways:

- the endpoint is ``InService`` on the new config: success;
- anything else raises :class:`~core.endpoint.RolloutFailed`, after putting things back: an
  endpoint created by this attempt is deleted, an updated one is left on the config SageMaker
  rolled it back to, and the config and model made for the attempt are deleted unless an endpoint
  still references them.

SageMaker's automatic rollback ends ``InService`` on the *old* config, which the
``endpoint_in_service`` waiter reports as success; the wait here is a poll loop that reports
progress and compares ``EndpointConfigName`` and ``FailureReason`` once the endpoint settles.

The package, one job per module (boto3 and botocore are used here and in
:mod:`adapters.endpoints.iam` only):

- :mod:`.names`: names, tags, request bodies, costs and deployment configs (pure);
- :mod:`.api`: the boto3 client's reads, error meanings and status polls;
- :mod:`.deploy`: one deploy, from the endpoint's state to serving or a clean failure;
- :mod:`.alarms`: the CloudWatch alarms (p99 latency, 5xx rate) that watch each endpoint and
  roll a bad update back;
- :mod:`.health`: the endpoint's recent request rate, error rate and p99, from CloudWatch;
- :mod:`.inventory`: the project's resources for cleanup, and deleting them;
- :mod:`.target`: :class:`~.target.SageMakerTarget`, the
  :class:`~core.endpoint.EndpointTarget` composing the above.

Clients are built by :meth:`.target.SageMakerTarget.from_settings` (or passed in); nothing
happens at import time, and importing this package imports none of its modules.
"""
