"""The operators' HTTP endpoint (`--metrics-port`): /metrics, /healthz and /readyz.

A few lines of HTTP/1.0 on the server's own loop, rather than prometheus-client's threaded server: the
scrape then reads the server's counters on the loop that changes them (no locks, no torn reads), and
/readyz can answer from the server's state. Requests are bounded in size and time, one at a time per
connection, and closed after the answer.

- /healthz: 200 while the process's loop is answering (a liveness probe: restart me if this fails).
- /readyz: 200 while the server accepts calls and its broker is reachable, else 503 with the reason (a
  readiness probe: send me no traffic while this fails).
- /metrics: Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from anyio.abc import AsyncResource
from prometheus_client import CONTENT_TYPE_LATEST

from .errors import InvalidRequest
from .metrics import Metrics

if TYPE_CHECKING:
    from .server import ChatServer

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192


class Monitor(AsyncResource):
    def __init__(self, server: ChatServer, metrics: Metrics, host: str, port: int) -> None:
        self._server, self._metrics = server, metrics
        self.host, self.port = host, port
        self._listener: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._listener = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES)
        except OSError as exc:  # the Thrift port was bound already: this one is the one to name
            raise InvalidRequest(
                f"cannot serve metrics on {self.host}:{self.port} (--metrics-port): {exc.strerror or exc}"
            ) from None
        self.port = self._listener.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.close()
            for task in list(self._handlers):
                task.cancel()
            if self._handlers:
                await asyncio.wait(set(self._handlers))
            await self._listener.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                parts = head.split(b"\r\n", 1)[0].split()
                if len(parts) == 3:
                    status, content_type, body = self._route(parts[0], parts[1].split(b"?", 1)[0])
                else:
                    status, content_type, body = 400, "text/plain", b"bad request\n"
                writer.write(
                    f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + (b"" if parts[:1] == [b"HEAD"] else body)
                )
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client too slow, gone, or sending too much: it gets nothing more
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, method: bytes, path: bytes) -> tuple[int, str, bytes]:
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics.exposition()
        if path == b"/healthz":
            return 200, "text/plain", b"ok\n"
        if path == b"/readyz":
            problem = self._server.unready_reason()
            return (503, "text/plain", problem.encode() + b"\n") if problem else (200, "text/plain", b"ready\n")
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
