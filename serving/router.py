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
import json
import logging
import os
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("serving.router")

STATE_SCHEMA = 1
"""Version of the ``routes.json`` layout."""
MAX_BODY_BYTES = 64 * 1024 * 1024
"""The router's own cap; each variant enforces its configured (smaller) maximum."""
ATTEMPTS = 3
UPSTREAM_TIMEOUT = 70.0
"""SageMaker gives a container 60 s to answer; a little more so its own error arrives."""
_FORWARD_REQUEST = ("content-type", "accept")
_FORWARD_RESPONSE = ("content-type", "x-model-name", "x-model-version", "x-model-family")


@dataclass(frozen=True)
class Upstream:
    """One variant process of a model.

    Attributes:
        name: variant name (unique per process).
        model: model name.
        version: model version it serves.
        port: its loopback port.
        weight: share of traffic relative to the model's other variants (0: none).
        host: its address.
    """

    name: str
    model: str
    version: str
    port: int
    weight: float = 1.0
    host: str = "127.0.0.1"

    def describe(self) -> dict[str, Any]:
        """The JSON view of this variant."""
        return {
            "name": self.name,
            "version": self.version,
            "port": self.port,
            "weight": self.weight,
        }


@dataclass(frozen=True)
class RouteTable:
    """Every model's variants, as of one ``routes.json`` generation."""

    generation: int = 0
    models: dict[str, tuple[Upstream, ...]] = field(default_factory=dict)


def empty_state() -> dict[str, Any]:
    """The content of a ``routes.json`` with no model."""
    return {"schema": STATE_SCHEMA, "generation": 0, "models": {}}


def parse_state(raw: Any) -> RouteTable:
    """Validate the content of ``routes.json``.

    Raises:
        ValueError: not the expected layout; the message says where.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ValueError("routes must be an object with a 'models' object")
    generation = raw.get("generation", 0)
    if not isinstance(generation, int) or generation < 0:
        raise ValueError("generation must be a non-negative integer")
    models: dict[str, tuple[Upstream, ...]] = {}
    for model, route in raw["models"].items():
        variants = route.get("variants") if isinstance(route, dict) else None
        if not isinstance(variants, list):
            raise ValueError(f"models.{model}.variants must be a list")
        ups = []
        for i, v in enumerate(variants):
            where = f"models.{model}.variants[{i}]"
            if not isinstance(v, dict):
                raise ValueError(f"{where} must be an object")
            port, weight = v.get("port"), v.get("weight", 1.0)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{where}.port must be a port number")
            if not isinstance(weight, int | float) or weight < 0:
                raise ValueError(f"{where}.weight must be a number >= 0")
            if not isinstance(v.get("name"), str) or not isinstance(v.get("version"), str):
                raise ValueError(f"{where} needs a name and a version")
            ups.append(
                Upstream(
                    name=v["name"],
                    model=model,
                    version=v["version"],
                    port=port,
                    weight=float(weight),
                    host=str(v.get("host", "127.0.0.1")),
                )
            )
        models[model] = tuple(ups)
    return RouteTable(generation=generation, models=models)


def read_state(path: Path) -> dict[str, Any]:
    """The content of ``routes.json``; an empty state when the file does not exist."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return empty_state()
    parse_state(raw)
    return dict(raw)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace ``routes.json`` atomically: the router sees the old file or the new, never half.

    Raises:
        ValueError: ``state`` is not a valid route table (nothing is written).
    """
    parse_state(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w") as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RouteFollower:
    """The routes of a state file, reloaded when the file changes (checked on each call)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.table = RouteTable()
        self.error: str | None = None
        self._key: tuple[int, int, int] | None = None

    def current(self) -> RouteTable:
        """The routes as of now; a missing file means no routes."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._key is not None:
                self.table, self._key, self.error = RouteTable(), None, None
            return self.table
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._key = key
            try:
                self.table = parse_state(json.loads(self.path.read_text()))
                self.error = None
            except (OSError, ValueError) as exc:
                # Keep serving the last good routes; the next write will be picked up.
                self.error = f"{self.path}: {exc}"
                log.error("ignoring unreadable routes: %s", self.error)
        return self.table


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


def create_router(state_file: Path) -> FastAPI:
    """Build the router app following ``state_file``.

    The upstream HTTP client is created when the server starts and closed when it stops.
    """
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    follower = RouteFollower(Path(state_file))
    inflight: dict[tuple[str, str], int] = defaultdict(int)
    clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # trust_env off: a proxy from the environment must never see loopback traffic.
        # keepalive_expiry stays below the serving app's keep-alive, so the server never
        # closes a connection the router is about to reuse.
        clients["upstream"] = httpx.AsyncClient(
            timeout=httpx.Timeout(UPSTREAM_TIMEOUT, connect=2.0, pool=10.0),
            limits=httpx.Limits(max_connections=256, keepalive_expiry=5.0),
            trust_env=False,
        )
        follower.current()
        try:
            yield
        finally:
            await clients["upstream"].aclose()

    app = FastAPI(title="Intelli-Rate local endpoint router", lifespan=lifespan, docs_url=None)

    def error(status: int, reason: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": reason, **extra}, status_code=status)

    def view(model: str, table: RouteTable) -> dict[str, Any]:
        ups = table.models.get(model, ())
        return {
            "model": model,
            "generation": table.generation,
            "variants": [u.describe() for u in ups],
            "inflight": {name: n for (m, name), n in inflight.items() if m == model and n},
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
            return error(404, f"endpoint {model} not found", generation=table.generation)
        return JSONResponse(view(model, table))

    @app.post("/endpoints/{model}/invocations")
    async def invoke(model: str, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return error(413, f"body exceeds the router's maximum of {MAX_BODY_BYTES} bytes")
        headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k)) is not None}
        wanted = request.headers.get("x-amzn-sagemaker-target-variant")
        tried: set[str] = set()
        last = "no variant serves it"
        for attempt in range(ATTEMPTS):
            # Routes are read per attempt: a retry after a swap goes to the new variant.
            upstreams = follower.current().models.get(model)
            if not upstreams:
                return error(404, f"endpoint {model} not found")
            choice = choose(upstreams, tried, wanted)
            if choice is None:
                return error(400, f"endpoint {model} has no variant {wanted!r}")
            # Counted before the first await: once the deployer reads zero for a variant
            # after the routes moved on, nothing can still be about to send to it.
            key = (model, choice.name)
            inflight[key] += 1
            try:
                answer = await clients["upstream"].post(
                    f"http://{choice.host}:{choice.port}/invocations",
                    content=body,
                    headers=headers,
                )
            except httpx.TimeoutException as exc:
                if not isinstance(exc, httpx.ConnectTimeout):
                    return error(504, f"variant {choice.name} did not answer in time: {exc!r}")
                last = f"variant {choice.name}: {exc!r}"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                last = f"variant {choice.name}: {exc!r}"
            else:
                out = {k: v for k in _FORWARD_RESPONSE if (v := answer.headers.get(k)) is not None}
                out["X-Amzn-Invoked-Production-Variant"] = choice.name
                return Response(answer.content, status_code=answer.status_code, headers=out)
            finally:
                inflight[key] -= 1
                if not inflight[key]:
                    del inflight[key]
            tried.add(choice.name)
            log.warning("retrying %s after %s", model, last)
            await asyncio.sleep(0.05 * (attempt + 1))
        return error(502, f"no variant of {model} answered: {last}")

    return app
