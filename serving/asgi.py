"""A plain ASGI route for the hot path, in front of FastAPI's router.

``POST /invocations`` (and the router's ``POST /endpoints/{model}/invocations``) is nearly
every request a serving process sees. FastAPI's routing, dependency solving and request
object cost about as much CPU per request as predicting one row; this middleware matches the
path itself and calls the handler with a minimal request (headers and a body stream), while
every other route (``/ping``, ``/endpoints``...) stays FastAPI's. The handler returns an
ordinary Starlette ``Response``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("serving")


class RawRequest:
    """What the handlers read of a request: its headers and its body as a stream."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self._receive = receive

    async def stream(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class FastRoute:
    """ASGI middleware: ``POST`` requests whose path ``match`` accepts go to ``handler``.

    Args:
        app: the rest of the app (FastAPI).
        match: path -> the handler's key (for example the model name), or None: not ours.
        handler: (key, request) -> response.
        on_error: builds the answer to an unexpected exception (logged here).
    """

    def __init__(
        self,
        app: Any,
        match: Callable[[str], str | None],
        handler: Callable[[str, RawRequest], Awaitable[Response]],
        on_error: Callable[[Exception], Response],
    ) -> None:
        self.app = app
        self.match = match
        self.handler = handler
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a matching POST; pass anything else on."""
        if scope["type"] == "http" and scope["method"] == "POST":
            key = self.match(scope["path"])
            if key is not None:
                try:
                    response = await self.handler(key, RawRequest(scope, receive))
                except Exception as exc:  # the caller gets a 500 with a reason, the app lives
                    log.exception("unexpected error")
                    response = self.on_error(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def quiet_fastapi() -> dict[str, Any]:
    """``FastAPI(...)`` options that turn off its native OpenTelemetry per request.

    FastAPI (0.142) opens a span and records metrics around every request when a global
    OpenTelemetry provider is set, as the libraries installed beside it set one: a third of the
    router's CPU per request in a profile. The serving app and the router report through
    their own endpoints and logs instead. Older FastAPI releases have no such option.
    """
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    off = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return {"telemetry": off}
