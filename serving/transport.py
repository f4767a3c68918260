"""uvicorn's httptools protocol with ``TCP_NODELAY`` set on every connection, whatever the path.

With ``--workers N`` uvicorn binds the listening socket itself with ``proto`` 0; accepted
sockets inherit it, and asyncio turns ``TCP_NODELAY`` on only for ``proto == IPPROTO_TCP``.
Nagle's algorithm then holds each answer's last segment until the client's delayed ACK: about
40 ms on every keep-alive request after the first (uvicorn#3149, open; kserve#6050). Setting
the option where the connection is made fixes every path (one worker, several workers, a socket
passed in) and costs one system call per connection, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that disables Nagle's algorithm on its connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Set ``TCP_NODELAY`` on a TCP connection, then hand it to uvicorn."""
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


HTTP = "serving.transport:NoDelayHttpToolsProtocol"
"""The ``http`` setting for uvicorn (an import string, so worker processes load it too)."""
