"""The local endpoint's router: the SageMaker runtime API in front of serving-app processes.

One small process on ``MLOPS_ENDPOINT_HOST:MLOPS_ENDPOINT_PORT`` (127.0.0.1:8080 by default)
answers what SageMaker's runtime answers, so a client written for one works with the other
(boto3's ``sagemaker-runtime`` client with ``endpoint_url`` pointing here, for example):

- ``POST /endpoints/{model}/invocations``: forwarded to one of the model's variants, drawn by
  weight (or, as :func:`serving.experiment_routing.pick` allows, named by the
  ``X-Amzn-SageMaker-Target-Variant`` header or pinned by the caller's ``X-Caller-Key``); the
  answer names the variant in ``X-Amzn-Invoked-Production-Variant`` and carries
  ``X-Inference-Id``. During an experiment the answers are captured and a share is mirrored to
  a shadow, both off the request path
  (:mod:`serving.experiment_routing`, :mod:`serving.capture`, :mod:`serving.shadow`).
- ``GET /endpoints/{model}``: what serves (variants, versions, weights, requests in flight).
- ``GET /endpoints``: every model; ``GET /ping``: the router itself.

Routes live in a state file (``routes.json``) that the deploying process replaces atomically
(write a temporary file, then ``os.replace``). The router stats the file on every request and
reloads it when its inode, size or mtime changed, which costs microseconds and needs no admin
API: whoever can write the file controls the routes, and a restarted router picks them up.
A file that fails to parse is logged and ignored (the previous routes keep serving).

A switch is zero-downtime by construction: a request picks its variant after the reload, the
old variant keeps answering what it already received, and the deployer stops it only once the
router reports no request in flight to it (``inflight`` in ``GET /endpoints/{model}``). A
connection error on a variant (one that just died, or a keep-alive connection closed under
the request) is retried on the current routes, because predictions are pure and so safe to
repeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from serving.asgi import FastRoute, RawRequest, quiet_fastapi
from serving.capture import Captured, CaptureWriter
from serving.codec import BadRequest, read_body
from serving.experiment_routing import (
    CALLER_KEY_HEADER,
    INFERENCE_ID_HEADER,
    INVOKED_VARIANT_HEADER,
    NO_EXPERIMENT,
    TARGET_VARIANT_HEADER,
    ExperimentRoute,
    mirrored,
    model_latency_ms,
    pick,
    unknown_variant,
)
from serving.feedback import mount_feedback
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import RouterMetrics
from serving.routes import RouteFollower, RouteTable, Upstream
from serving.shadow import ShadowMirror

log = logging.getLogger("serving.router")

MAX_BODY_BYTES = 6 * 1024 * 1024
"""The router's cap, the variants' default (``MLOPS_MAX_BODY_BYTES``; SageMaker real-time
allows 6 MB): the body is read as a stream and refused as soon as it passes this."""
ATTEMPTS = 3
UPSTREAM_TIMEOUT = 70.0
"""SageMaker gives a container 60 s to answer; a little more so its own error arrives."""
SHADOW_TIMEOUT = 2.0
"""Seconds a shadow copy may take; a slower shadow's answer is dropped (and counted)."""
_FORWARD_REQUEST = ("content-type", "accept")
_INFERENCE_ID_REQUEST = "x-amzn-sagemaker-inference-id"
"""InvokeEndpoint's ``InferenceId``: a caller's own id for the request, kept for the join."""
_FORWARD_RESPONSE = (
    "content-type",
    "x-model-name",
    "x-model-version",
    "x-model-family",
    "x-model-latency-ms",
)


def _error(status: int, reason: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": reason, **extra}, status_code=status)


class Forwarder:
    """Sends one invocation to a model's variant, failing over to another on connection errors.

    It counts the requests in flight per variant, so that a deployer can tell when a variant
    that left the routes has drained.
    """

    def __init__(
        self,
        follower: RouteFollower,
        capture: CaptureWriter | None = None,
        shadow_timeout: float = SHADOW_TIMEOUT,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.follower = follower
        self.capture = capture or CaptureWriter()
        self.shadow = ShadowMirror(self.capture, timeout=shadow_timeout)
        self.metrics = metrics or RouterMetrics()
        self._inflight: dict[tuple[str, str], int] = defaultdict(int)
        self._client: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """Hold the upstream HTTP client open for as long as the server runs."""
        # aiohttp, not httpx: at 1,000 requests/s the client is most of the router's CPU, and
        # aiohttp's pooled connections cost a fraction of httpx's per request (BENCHMARKS.md).
        # keepalive_timeout stays below the serving app's keep-alive, so the server never
        # closes a connection the router is about to reuse; trust_env off, so a proxy from the
        # environment never sees loopback traffic.
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=5.0)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT, connect=2.0),
            trust_env=False,
            auto_decompress=False,
        ) as client:
            # The shadow's own client: a slow shadow can hold only its own few connections.
            shadow_client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.shadow.workers, keepalive_timeout=5.0),
                timeout=aiohttp.ClientTimeout(
                    total=self.shadow.timeout, connect=min(1.0, self.shadow.timeout)
                ),
                trust_env=False,
                auto_decompress=False,
            )
            async with (
                shadow_client,
                self.capture.running(),
                self.shadow.running(shadow_client),
            ):
                self._client = client
                try:
                    yield
                finally:
                    self._client = None

    def inflight(self, model: str) -> dict[str, int]:
        """Requests in flight to each variant of ``model`` (variants with none left out)."""
        return {name: n for (m, name), n in self._inflight.items() if m == model and n}

    async def forward(
        self,
        model: str,
        body: bytes,
        headers: dict[str, str],
        wanted: str | None,
        *,
        caller_key: str | None = None,
        inference_id: str | None = None,
    ) -> Response:
        """Answer one invocation from a variant, retrying on another when one cannot connect.

        Args:
            model: the endpoint's model name.
            body: the request body, passed on unchanged.
            headers: the request headers to pass on.
            wanted: the variant the caller named, if any.
            caller_key: the caller's sticky key, if any.
            inference_id: the caller's id for the request (a new one when None).

        Returns:
            The variant's answer (naming it and the inference id), or the router's own error.
        """
        start = time.perf_counter()
        response, variant = await self._forward(
            model, body, headers, wanted, caller_key, inference_id
        )
        if variant is not None or response.status_code >= 500:
            # A model the routes do not know (404) or a variant that does not exist (400) is
            # the caller's mistake: not a series, so no caller can grow the label set.
            self.metrics.request(
                model, variant or "", response.status_code, time.perf_counter() - start
            )
        return response

    async def _forward(
        self,
        model: str,
        body: bytes,
        headers: dict[str, str],
        wanted: str | None,
        caller_key: str | None,
        inference_id: str | None,
    ) -> tuple[Response, str | None]:
        """:meth:`forward`'s work: the answer and the variant that gave it (None: the router)."""
        if self._client is None:
            raise RuntimeError("the router's upstream client is not open (server not started)")
        inference_id = inference_id or str(uuid.uuid4())
        tried: set[str] = set()
        last = "no variant serves it"
        for attempt in range(ATTEMPTS):
            # Routes are read per attempt: a retry after a swap goes to the new variant.
            table = self.follower.current()
            upstreams = table.models.get(model)
            if not upstreams:
                return _error(404, f"endpoint {model} not found"), None
            experiment = table.experiments.get(model, NO_EXPERIMENT)
            choice, chosen = pick(upstreams, tried, experiment, wanted, caller_key)
            if choice is None and wanted:
                names = [u.name for u in upstreams]
                return _error(400, unknown_variant(model, wanted, names), variants=names), None
            if choice is None:
                return _error(503, f"endpoint {model} has no variant with a weight above 0"), None
            started = time.perf_counter()
            answer = await self._send(self._client, model, choice, body, headers)
            if not isinstance(answer, str):
                answer.headers[INFERENCE_ID_HEADER] = inference_id
                if experiment is not NO_EXPERIMENT:
                    waited = (time.perf_counter() - started) * 1000.0
                    latency = model_latency_ms(answer.headers, waited)
                    self._after(
                        model,
                        experiment,
                        choice,
                        body,
                        headers,
                        answer,
                        inference_id,
                        latency,
                        chosen=chosen,
                    )
                return answer, choice.name
            last = answer
            tried.add(choice.name)
            self.metrics.upstream_error(model, choice.name)
            log.warning("retrying %s after %s", model, last)
            await asyncio.sleep(0.05 * (attempt + 1))
        return _error(502, f"no variant of {model} answered: {last}"), None

    def _after(
        self,
        model: str,
        experiment: ExperimentRoute,
        choice: Upstream,
        body: bytes,
        headers: dict[str, str],
        answer: Response,
        inference_id: str,
        latency_ms: float,
        chosen: bool = False,
    ) -> None:
        """Capture the answer and mirror the request: no await, so the caller waits for neither.

        A 2xx and a 5xx are captured (with the status and the variant's latency, which the
        experiment's error and latency guardrails read); a 4xx is the caller's fault, not the arm's.
        An answer whose variant the caller named (``chosen``, see
        :func:`serving.experiment_routing.pick`) is captured as such.
        """
        ok_or_ours = 200 <= answer.status_code < 300 or answer.status_code >= 500
        if experiment.capture is not None and ok_or_ours:
            self.capture.record(
                Captured(
                    route=experiment.capture,
                    variant=choice.name,
                    version=choice.version,
                    arm=experiment.arm(choice.name),
                    experiment_id=experiment.experiment_id,
                    inference_id=inference_id,
                    content_type=headers.get("content-type", "application/json"),
                    request=body,
                    response=bytes(answer.body),
                    response_type=answer.headers.get("content-type", "application/json"),
                    at=time.time(),
                    latency_ms=latency_ms,
                    status=answer.status_code,
                    chosen=chosen,
                )
            )
        if mirrored(experiment.shadow):
            assert experiment.shadow is not None
            self.shadow.offer(model, experiment.shadow, experiment, body, headers, inference_id)

    async def _send(
        self,
        client: aiohttp.ClientSession,
        model: str,
        choice: Upstream,
        body: bytes,
        headers: dict[str, str],
    ) -> Response | str:
        """One attempt: the answer to pass back, or why the variant could not be reached."""
        # Counted before the first await: once the deployer reads zero for a variant
        # after the routes moved on, nothing can still be about to send to it.
        key = (model, choice.name)
        self._inflight[key] += 1
        try:
            async with client.post(
                f"http://{choice.host}:{choice.port}/invocations", data=body, headers=headers
            ) as answer:
                content = await answer.read()
                status = answer.status
                got = answer.headers
        except aiohttp.ConnectionTimeoutError as exc:
            return f"variant {choice.name}: {exc!r}"
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            return _error(504, f"variant {choice.name} did not answer in time: {exc!r}")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            # Refused, reset, or a keep-alive connection closed under the request.
            return f"variant {choice.name}: {exc!r}"
        finally:
            self._inflight[key] -= 1
            if not self._inflight[key]:
                del self._inflight[key]
        out = {k: v for k in _FORWARD_RESPONSE if (v := got.get(k)) is not None}
        out[INVOKED_VARIANT_HEADER] = choice.name
        return Response(content, status_code=status, headers=out)


def _invocation_model(path: str) -> str | None:
    """The model of ``/endpoints/{model}/invocations``; None for any other path."""
    prefix, suffix = "/endpoints/", "/invocations"
    if path.startswith(prefix) and path.endswith(suffix):
        model = path[len(prefix) : -len(suffix)]
        if model and "/" not in model:
            return model
    return None


def _observability_routes(app: FastAPI, forwarder: Forwarder) -> None:
    """``GET /metrics``, ``/endpoints/{model}/health`` and ``/prometheus/targets``."""
    follower = forwarder.follower

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format: invocations by model, variant and status; latency."""
        return Response(forwarder.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/endpoints/{model}/health")
    async def health(model: str) -> JSONResponse:
        """The model's last minute: requests per second, share of 5xx, p99 latency."""
        window = forwarder.metrics.windows.get(model)
        if window is None:
            if model not in follower.current().models:
                return _error(404, f"endpoint {model} not found")
            return JSONResponse(
                {
                    "window_seconds": 60.0,
                    "requests_per_second": 0.0,
                    "error_rate": None,
                    "p99_ms": None,
                }
            )
        return JSONResponse(window.summary())

    @app.get("/prometheus/targets")
    async def prometheus_targets() -> JSONResponse:
        """Every variant process as Prometheus HTTP service discovery lists targets."""
        table = follower.current()
        return JSONResponse(
            [
                {
                    "targets": [f"{u.host}:{u.port}"],
                    "labels": {"model": m, "variant": u.name, "version": u.version},
                }
                for m in sorted(table.models)
                for u in table.models[m]
            ]
        )


def create_router(
    state_file: Path,
    max_body_bytes: int = MAX_BODY_BYTES,
    shadow_timeout: float = SHADOW_TIMEOUT,
) -> FastAPI:
    """Build the router app following ``state_file``.

    The upstream HTTP clients, the capture flusher and the shadow workers start with the server
    and stop with it.

    Args:
        state_file: the ``routes.json`` to follow.
        max_body_bytes: largest request body; more is a 413 before it is read whole.
        shadow_timeout: seconds a shadow copy may take.
    """
    follower = RouteFollower(Path(state_file))
    forwarder = Forwarder(follower, shadow_timeout=shadow_timeout)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with forwarder.connected():
            follower.current()
            yield

    app = FastAPI(
        title="Intelli-Rate local endpoint router",
        lifespan=lifespan,
        docs_url=None,
        **quiet_fastapi(),
    )

    def view(model: str, table: RouteTable) -> dict[str, Any]:
        ups = table.models.get(model, ())
        experiment = table.experiments.get(model, NO_EXPERIMENT)
        shadow = experiment.shadow
        return {
            "model": model,
            "generation": table.generation,
            "variants": [{**u.describe(), "arm": experiment.arm(u.name)} for u in ups],
            "inflight": forwarder.inflight(model),
            "experiment_id": experiment.experiment_id or None,
            "shadow": None
            if shadow is None
            else {"name": shadow.name, "version": shadow.version, "percent": shadow.percent},
            "capture": None if experiment.capture is None else experiment.capture.uri,
            "mirror_stats": dict(forwarder.shadow.stats),
            "capture_stats": dict(forwarder.capture.stats),
        }

    @app.get("/ping")
    async def ping() -> JSONResponse:
        table = follower.current()
        return JSONResponse(
            {
                "status": "ok",
                "router": True,
                "pid": os.getpid(),
                "state_file": str(follower.path),
                "generation": table.generation,
                "models": sorted(table.models),
                "error": follower.error,
            }
        )

    _observability_routes(app, forwarder)

    @app.get("/endpoints")
    async def endpoints() -> JSONResponse:
        table = follower.current()
        return JSONResponse(
            {
                "generation": table.generation,
                "models": {m: view(m, table) for m in sorted(table.models)},
            }
        )

    @app.get("/endpoints/{model}")
    async def endpoint(model: str) -> JSONResponse:
        table = follower.current()
        if model not in table.models:
            return _error(404, f"endpoint {model} not found", generation=table.generation)
        return JSONResponse(view(model, table))

    async def invoke(model: str, request: RawRequest) -> Response:
        # Read whole before forwarding (a retry on another variant sends it again), but as a
        # stream with the limit checked on the way: Content-Length first, then each chunk.
        try:
            body = await read_body(request, max_body_bytes)
        except BadRequest as exc:
            return _error(exc.status, f"router: {exc.reason}")
        got = request.headers
        headers = {k: v for k in _FORWARD_REQUEST if (v := got.get(k)) is not None}
        return await forwarder.forward(
            model,
            body,
            headers,
            got.get(TARGET_VARIANT_HEADER),
            caller_key=got.get(CALLER_KEY_HEADER),
            inference_id=got.get(_INFERENCE_ID_REQUEST),
        )

    # POST /endpoints/{model}/invocations, the hot path, skips FastAPI's routing.
    app.add_middleware(
        FastRoute,
        match=_invocation_model,
        handler=invoke,
        on_error=lambda exc: _error(500, f"router: internal error: {exc!r}"),
    )
    mount_feedback(app, follower, forwarder.metrics.registry, _invocation_model)  # outermost

    return app
