"""``POST /feedback/{model}`` on the router: the rate limiter reports what happened after an answer.

The body is ``{"inference_id": "<X-Inference-Id of the answer>", "outcome": <number>}`` (the
observed value of the family's label column; see :mod:`core.feedback`), the caller
authenticates with ``Authorization: Bearer <token>``. Answers:

- ``201``: recorded under ``feedback/{model}/...`` in the model store, created once.
- ``401`` no or a wrong token; ``400`` a malformed body (the reason names the field), ``413``
  a body over 16 KiB; ``404`` an unknown model or inference id; ``409`` a duplicate (an outcome
  of that id is already recorded: the first report wins, on any router, across restarts);
  ``503`` feedback off (no token or store configured) or the store failed.

Every answer is counted in ``/metrics`` (``mlops_router_feedback_total{result=...}``).

An id is known when this router answered it with a 2xx (remembered in memory, the newest
``MLOPS_ROUTER_FEEDBACK_REMEMBER`` of them): a restarted router has forgotten older ids, which
``mlops feedback import`` still takes (it checks them against the capture). The token and the
store come from the router's environment (``MLOPS_ROUTER_FEEDBACK_TOKEN``,
``MLOPS_ROUTER_FEEDBACK_STORE_URI``), which :class:`adapters.endpoints.local.LocalTarget`
passes on; the token is never logged or shown.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.feedback import (
    DUPLICATE,
    REFUSALS,
    UNKNOWN,
    FeedbackRefused,
    Outcome,
    parse_body,
)
from serving.metrics import feedback_counter
from serving.routes import RouteFollower

log = logging.getLogger("serving.feedback")

MAX_FEEDBACK_BYTES = 16 * 1024
"""An outcome is a few dozen bytes; a larger body is refused before it is read whole."""
_ID_HEADER = b"x-inference-id"


class FeedbackSettings(BaseSettings):
    """The router's feedback settings, from ``MLOPS_ROUTER_FEEDBACK_*``."""

    # hide_input_in_errors: a token too short must not be quoted in the router's log.
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_ROUTER_FEEDBACK_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    token: SecretStr | None = Field(
        default=None,
        min_length=16,
        max_length=512,
        description="Bearer token a reporter must present; feedback is off when unset.",
    )
    store_uri: str | None = Field(
        default=None, description="Model store the outcomes are written to; off when unset."
    )
    kms_key_id: str | None = Field(
        default=None, description="KMS key of the store (S3 only); SSE-S3 when unset."
    )
    remember: int = Field(
        default=200_000,
        ge=1,
        le=5_000_000,
        description="Inference ids the router remembers as answered (about 150 bytes each).",
    )


class AnsweredIds:
    """The newest inference ids this router answered with a 2xx, per model (bounded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, model: str, inference_id: str) -> None:
        """Remember one answered id; the oldest is forgotten past :attr:`limit`."""
        self._ids[(model, inference_id)] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def __contains__(self, item: tuple[str, str]) -> bool:
        """Whether ``(model, inference id)`` was answered (and not forgotten since)."""
        return item in self._ids


class RememberAnswered:
    """ASGI middleware: remember the inference id of each 2xx answer to an invocation.

    It reads the answer's ``X-Inference-Id`` header as it goes out; the request is not touched.
    """

    def __init__(
        self, app: ASGIApp, match: Callable[[str], str | None], answered: AnsweredIds
    ) -> None:
        self.app = app
        self.match = match
        self.answered = answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; note the id of a successful invocation's answer."""
        model = self.match(scope["path"]) if scope["type"] == "http" else None
        if model is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                for name, value in message.get("headers", ()):
                    if name.lower() == _ID_HEADER:
                        self.answered.add(model, value.decode("latin-1"))
            await send(message)

        await self.app(scope, receive, noting)


def _answer(status: int, reason: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": reason, **extra} if status >= 400 else extra, status_code=status)


class FeedbackRoute:
    """The route's state: settings, the answered ids, the counter and the store (lazily)."""

    def __init__(
        self, follower: RouteFollower, registry: CollectorRegistry, settings: FeedbackSettings
    ) -> None:
        self.follower = follower
        self.settings = settings
        self.answered = AnsweredIds(settings.remember)
        self.counter = feedback_counter(registry, ("accepted", *REFUSALS))
        self._store: Any = None

    def refuse(self, status: int, exc: FeedbackRefused) -> JSONResponse:
        """Count the refusal and answer it with its reason."""
        self.counter.labels(result=exc.kind).inc()
        return _answer(status, exc.reason)

    def authenticated(self, header: str) -> bool:
        """Whether ``Authorization`` carries the configured bearer token (constant time)."""
        assert self.settings.token is not None
        scheme, _, credential = header.partition(" ")
        expected = self.settings.token.get_secret_value().encode()
        given = credential.strip().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given, expected)

    def write(self, model: str, outcome: Outcome, known: bool) -> bool | None:
        """True recorded, False a duplicate, None unknown (runs in a worker thread)."""
        from adapters.feedback import has_outcome, record_outcome
        from adapters.layout import timestamp
        from adapters.store import store_from_uri

        if self._store is None:
            assert self.settings.store_uri is not None
            self._store = store_from_uri(
                self.settings.store_uri, kms_key_id=self.settings.kms_key_id
            )
        if not known:  # a duplicate of an id forgotten since (a restart) is still a duplicate
            return False if has_outcome(self._store, model, outcome.inference_id) else None
        return record_outcome(self._store, model, outcome, "router", timestamp(_utc_now()))

    async def handle(self, model: str, request: Request) -> JSONResponse:
        """Record one outcome (see the module docstring for the answers)."""
        if self.settings.token is None or self.settings.store_uri is None:
            off = FeedbackRefused("unavailable", "feedback is off on this router")
            return self.refuse(503, off)
        if not self.authenticated(request.headers.get("authorization", "")):
            bad = FeedbackRefused("unauthenticated", "unauthenticated: a bearer token is needed")
            return self.refuse(401, bad)
        try:
            outcome = parse_body(await _read_limited(request))
        except FeedbackRefused as exc:
            return self.refuse(413 if "too large" in exc.reason else 400, exc)
        if model not in self.follower.current().models:
            return self.refuse(404, FeedbackRefused("unknown", f"unknown model {model}"))
        known = (model, outcome.inference_id) in self.answered
        try:
            created = await asyncio.to_thread(self.write, model, outcome, known)
        except Exception as exc:  # the store failed: the reporter may retry
            log.error("feedback for %s not recorded: %s", model, type(exc).__name__)
            failed = FeedbackRefused("unavailable", "the store did not take it; retry")
            return self.refuse(503, failed)
        if created is None:
            return self.refuse(404, FeedbackRefused("unknown", UNKNOWN))
        if not created:
            return self.refuse(409, FeedbackRefused("duplicate", DUPLICATE))
        self.counter.labels(result="accepted").inc()
        return _answer(201, "", model=model, inference_id=outcome.inference_id)


def mount_feedback(
    app: FastAPI,
    follower: RouteFollower,
    registry: CollectorRegistry,
    match: Callable[[str], str | None],
    settings: FeedbackSettings | None = None,
) -> FeedbackRoute:
    """Add ``POST /feedback/{model}`` and the middleware that remembers answered ids.

    Call it after the invocation's own middleware is added, so that this one wraps it.

    Args:
        app: the router app.
        follower: the router's routes (a model must be served to take feedback).
        registry: the router's metrics registry (``/metrics``).
        match: the invocation path's model (:func:`serving.router._invocation_model`).
        settings: default read from the environment now (never at import).
    """
    route = FeedbackRoute(follower, registry, settings or FeedbackSettings())
    app.post("/feedback/{model}")(route.handle)
    app.add_middleware(RememberAnswered, match=match, answered=route.answered)
    return route


async def _read_limited(request: Request) -> bytes:
    """The body, refused as soon as it passes :data:`MAX_FEEDBACK_BYTES`."""
    too_large = FeedbackRefused(
        "malformed", f"malformed: body too large (> {MAX_FEEDBACK_BYTES} B)"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FEEDBACK_BYTES:
        raise too_large
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > MAX_FEEDBACK_BYTES:
            raise too_large
    return bytes(chunks)


def _utc_now() -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time.time(), UTC)
