"""The local endpoint's router: the SageMaker runtime API in front of serving-app processes.

One small process on ``MLOPS_ENDPOINT_HOST:MLOPS_ENDPOINT_PORT`` (127.0.0.1:8080 by default)
answers what SageMaker's runtime answers, so a client written for one works with the other
(boto3's ``sagemaker-runtime`` client with ``endpoint_url`` pointing here, for example):

- ``POST /endpoints/{model}/invocations``: forwarded to one of the model's variants, chosen by
  weight (or named by the ``X-Amzn-SageMaker-Target-Variant`` header); the answer names the
  variant in ``X-Amzn-Invoked-Production-Variant``.
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
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from serving.asgi import FastRoute, RawRequest, quiet_fastapi
from serving.codec import BadRequest, read_body
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import RouterMetrics
from serving.routes import RouteFollower, RouteTable, Upstream

log = logging.getLogger("serving.router")

MAX_BODY_BYTES = 6 * 1024 * 1024
"""The router's cap, the variants' default (``MLOPS_MAX_BODY_BYTES``; SageMaker real-time
allows 6 MB): the body is read as a stream and refused as soon as it passes this."""
ATTEMPTS = 3
UPSTREAM_TIMEOUT = 70.0
"""SageMaker gives a container 60 s to answer; a little more so its own error arrives."""
_FORWARD_REQUEST = ("content-type", "accept")
_FORWARD_RESPONSE = ("content-type", "x-model-name", "x-model-version", "x-model-family")


def choose(upstreams: tuple[Upstream, ...], avoid: set[str], wanted: str | None) -> Upstream | None:
    """Pick a variant by weight, preferring ones not in ``avoid``; ``wanted`` names one."""
    if wanted:
        named = [u for u in upstreams if u.name == wanted]
        return named[0] if named else None
    live = [u for u in upstreams if u.weight > 0]
    fresh = [u for u in live if u.name not in avoid] or live
    if not fresh:
        return None
    if len(fresh) == 1:
        return fresh[0]
    return random.choices(fresh, weights=[u.weight for u in fresh])[0]


def _error(status: int, reason: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": reason, **extra}, status_code=status)


class Forwarder:
    """Sends one invocation to a model's variant, failing over to another on connection errors.

    It counts the requests in flight per variant, so that a deployer can tell when a variant
    that left the routes has drained.
    """

    def __init__(self, follower: RouteFollower, metrics: RouterMetrics | None = None) -> None:
        self.follower = follower
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
            self._client = client
            try:
                yield
            finally:
                self._client = None

    def inflight(self, model: str) -> dict[str, int]:
        """Requests in flight to each variant of ``model`` (variants with none left out)."""
        return {name: n for (m, name), n in self._inflight.items() if m == model and n}

    async def forward(
        self, model: str, body: bytes, headers: dict[str, str], wanted: str | None
    ) -> Response:
        """Answer one invocation from a variant, retrying on another when one cannot connect.

        Args:
            model: the endpoint's model name.
            body: the request body, passed on unchanged.
            headers: the request headers to pass on.
            wanted: the variant the caller named, if any.

        Returns:
            The variant's answer (naming it), or the router's own error.
        """
        start = time.perf_counter()
        response, variant = await self._forward(model, body, headers, wanted)
        if variant is not None or response.status_code >= 500:
            # A model the routes do not know (404) or a variant that does not exist (400) is
            # the caller's mistake: not a series, so no caller can grow the label set.
            self.metrics.request(
                model, variant or "", response.status_code, time.perf_counter() - start
            )
        return response

    async def _forward(
        self, model: str, body: bytes, headers: dict[str, str], wanted: str | None
    ) -> tuple[Response, str | None]:
        """:meth:`forward`'s work: the answer and the variant that gave it (None: the router)."""
        if self._client is None:
            raise RuntimeError("the router's upstream client is not open (server not started)")
        tried: set[str] = set()
        last = "no variant serves it"
        for attempt in range(ATTEMPTS):
            # Routes are read per attempt: a retry after a swap goes to the new variant.
            upstreams = self.follower.current().models.get(model)
            if not upstreams:
                return _error(404, f"endpoint {model} not found"), None
            choice = choose(upstreams, tried, wanted)
            if choice is None:
                return _error(400, f"endpoint {model} has no variant {wanted!r}"), None
            answer = await self._send(self._client, model, choice, body, headers)
            if not isinstance(answer, str):
                return answer, choice.name
            last = answer
            tried.add(choice.name)
            self.metrics.upstream_error(model, choice.name)
            log.warning("retrying %s after %s", model, last)
            await asyncio.sleep(0.05 * (attempt + 1))
        return _error(502, f"no variant of {model} answered: {last}"), None

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
        out["X-Amzn-Invoked-Production-Variant"] = choice.name
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


def create_router(state_file: Path, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the router app following ``state_file``.

    The upstream HTTP client is created when the server starts and closed when it stops.

    Args:
        state_file: the ``routes.json`` to follow.
        max_body_bytes: largest request body; more is a 413 before it is read whole.
    """
    follower = RouteFollower(Path(state_file))
    forwarder = Forwarder(follower)

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
        return {
            "model": model,
            "generation": table.generation,
            "variants": [u.describe() for u in ups],
            "inflight": forwarder.inflight(model),
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
        headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k)) is not None}
        wanted = request.headers.get("x-amzn-sagemaker-target-variant")
        return await forwarder.forward(model, body, headers, wanted)

    # POST /endpoints/{model}/invocations, the hot path, skips FastAPI's routing.
    app.add_middleware(
        FastRoute,
        match=_invocation_model,
        handler=invoke,
        on_error=lambda exc: _error(500, f"router: internal error: {exc!r}"),
    )

    return app
