"""ChatServer: listen, serve, drain, stop — and `python -m async_chat.server`.

Built on thriftpy2's `make_aio_server` (its socket, transports, protocols and processor), with four of its
behaviours replaced, each for a reason from THRIFTPY2.md:
- Its `client_timeout` cuts every connection a fixed time after it opened, busy or not. We pass None and
  close connections that sit `idle_timeout` between calls (always longer than the longest poll); a call
  that has not fully arrived by then counts as idle too. One sweeper task checks every connection a few
  times per timeout, rather than a timer armed and cancelled around every call.
- Its listening socket sets SO_REUSEPORT, so a second server on a busy port silently shares it. We bind
  our own socket without it: a port in use is an error.
- Its transport and protocol are fixed per server. We tell each connection's from its first bytes
  (`wire.detect`), so one port serves buffered and framed, binary (strict or not) and compact clients.
- An undeclared exception drops the connection without a reply. `ChatProcessor` answers every call.
- `init_server()` cannot run inside a running loop and `close()` does not drain. `ChatServer` starts
  inside the caller's loop, tracks its connections, and on close stops accepting, wakes long-polls,
  closes idle connections, lets calls in flight finish (up to `drain_timeout`), then cancels the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from anyio.abc import AsyncResource
from thriftpy2.contrib.aio.socket import StreamHandler
from thriftpy2.rpc import make_aio_server  # type: ignore[attr-defined]
from thriftpy2.transport import TTransportException

from . import auth, logs, wire
from . import settings as settings_module
from .brokers import open_broker, redact
from .contract import ChatService
from .errors import ChatError, InvalidRequest
from .handler import ChatHandler
from .hub import Hub, HubLimits
from .processor import ChatProcessor
from .session import SESSION, Session, TokenBucket
from .settings import Settings
from .tasks import cancel_and_wait, every, housekeeping_interval

if TYPE_CHECKING:
    from .metrics import Metrics
    from .monitor import Monitor

logger = logging.getLogger("async_chat.server")



class ServerState(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    DRAINING = "draining"
    CLOSED = "closed"


class ConnectionState(enum.Enum):
    IDLE = "idle"  # waiting for the first byte of the next call: closed at once on shutdown
    READING = "reading"  # a call is arriving
    BUSY = "busy"  # a call is being answered: allowed to finish on shutdown


BUFFERED_CHUNK = 4096
"""thriftpy2's buffered transport reads at least this much at a time (TAsyncBufferedTransport.DEFAULT_BUFFER)."""


class CallTooLarge(Exception):
    """A call longer than --max-call-bytes, or with a negative length: its connection is closed before the
    rest is read."""


class _Connection:
    """One client connection, as the socket under thriftpy2's transports; it knows if a call is under way.

    The same five methods as thriftpy2's `StreamHandler`, plus the state: the first bytes of a call
    turn IDLE into READING.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_call_bytes: int) -> None:
        self.reader, self.writer = reader, writer
        self.max_call_bytes = max_call_bytes
        self.budget = max_call_bytes
        """Bytes the call being read may still take: past it, the connection is closed."""
        self.state = ConnectionState.IDLE
        self.idle_since = time.monotonic()
        self.calls = 0
        peername = writer.get_extra_info("peername")
        self.peer = _format_peer(peername)
        self.address = str(peername[0]) if isinstance(peername, tuple) and peername else self.peer
        self.shutdown_cancel = False
        self.dialect: wire.Dialect | None = None
        self._unread = b""

    def __repr__(self) -> str:
        return f"<Connection {self.peer} {self.dialect or '?'} [{self.state.name}, calls={self.calls}]>"

    async def read_head(self) -> bytes:
        """The first bytes of the first call, enough for `wire.detect`; later reads return them again."""
        head = await self.reader.readexactly(1)
        self.state = ConnectionState.READING
        if wire.needs_more(head):
            head += await self.reader.readexactly(wire.HEAD_SIZE - 1)
        self._unread = head
        return head

    async def read(self, sz: int) -> bytes:
        """Up to `sz` bytes, within the call's byte budget.

        thriftpy2 asks its socket for at least BUFFERED_CHUNK bytes at a time; a larger ask is what a
        string or frame needs in full, from the length its sender claimed. A claim past the budget is
        refused before anything is read (a "2 GiB" length allocates nothing), and one within it is read
        in one piece (thriftpy2 would otherwise append chunk after chunk: quadratic).
        """
        if sz <= 0:  # a negative length from the wire; asyncio would read to EOF for it
            if sz == 0:
                return b""
            raise CallTooLarge(f"a call claimed a negative length ({sz})")
        if self._unread:
            data, self._unread = self._unread[:sz], self._unread[sz:]
            return data
        if sz > BUFFERED_CHUNK:
            if sz > self.budget:
                raise CallTooLarge(f"a call claimed {sz} bytes more; the limit is {self.max_call_bytes}")
            data = await self.reader.readexactly(sz)
        else:
            if self.budget <= 0:
                raise CallTooLarge(f"a call ran past the limit of {self.max_call_bytes} bytes")
            data = await self.reader.read(min(sz, self.budget))
            if not data:
                raise TTransportException(type=TTransportException.END_OF_FILE, message="peer closed the connection")
        self.budget -= len(data)
        if self.state is ConnectionState.IDLE:
            self.state = ConnectionState.READING
        return data

    def write(self, buff: bytes) -> None:
        self.writer.write(buff)

    async def flush(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    async def open(self) -> None:
        pass


class ChatServer(AsyncResource):
    """The message service on one TCP port. Use as `async with ChatServer(settings) as server:`."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        base = settings or Settings()
        self.settings = base.with_changes(**overrides) if overrides else base
        self.state = ServerState.NEW
        self.hub: Hub | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        self._processor: ChatProcessor | None = None
        self.host = self.settings.host
        self.port = self.settings.port
        self.connections_total = 0
        self.refused_total = 0
        self.unreadable_total = 0
        self.oversized_total = 0
        self._per_address: dict[str, int] = {}
        self._limits_hit: set[str] = set()
        """Connection limits reached and not yet left ("" for the total, else an address): logged once."""
        self.monitor: Monitor | None = None

    def __repr__(self) -> str:
        return (
            f"<ChatServer [{self.state.name}] {self.address} connections={len(self._connections)}"
            f" {self.settings.transport}/{self.settings.protocol} broker={redact(self.settings.broker)}>"
        )

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def __aenter__(self) -> ChatServer:
        await self.start()
        return self

    async def start(self) -> None:
        """Bind, start the hub, and accept connections. Raises OSError if the address cannot be bound."""
        if self.state is not ServerState.NEW:
            raise RuntimeError(f"{self!r} was already started")
        s = self.settings
        try:
            tls = s.server_tls()
        except OSError as exc:  # ssl.SSLError too
            raise InvalidRequest(f"cannot use the TLS files (--tls-cert, --tls-key, --tls-client-ca): {exc}") from None
        secret = auth.load_secret(s.auth_secret_file) if s.auth_secret_file is not None else None
        sock = _bind(s.host, s.port)
        try:
            self.port = sock.getsockname()[1]
            broker = open_broker(s)
            hub = Hub(broker, HubLimits(s.queue_size, s.subscription_ttl, s.max_subscriptions, s.overflow))
            await hub.start()
            self.hub = hub
            handler = ChatHandler(hub, s, lambda: (len(self._connections), self.connections_total), secret)
            thrift_server = make_aio_server(
                ChatService,
                handler,
                host=s.host,
                port=self.port,
                client_timeout=None,
                loop=asyncio.get_running_loop(),
            )
            metrics = None
            if s.metrics_port is not None:
                metrics, self.monitor = _monitor(self, s.host, s.metrics_port)
                await self.monitor.start()
            self._processor = ChatProcessor(ChatService, handler, metrics)
            thrift_server.trans.raw_sock = sock  # our socket: no SO_REUSEPORT
            thrift_server.trans.ssl_context = tls  # our context (never thriftpy2's fallbacks)
            self.state = ServerState.SERVING  # before accepting: the first connection may arrive at once
            self._listener = await thrift_server.trans.accept(self._serve)
            interval = housekeeping_interval(s.idle_timeout, cap=1.0)
            sweep = every(interval, self._close_idle)
            self._sweeper = asyncio.create_task(sweep, name="async_chat.server.idle-sweeper")
        except BaseException:
            self.state = ServerState.CLOSED
            sock.close()
            if self.monitor is not None:
                await self.monitor.aclose()
            if self.hub is not None:
                await self.hub.aclose()
            raise
        if self.monitor is not None:
            where = f"{self.monitor.host}:{self.monitor.port}"
            logger.info(
                "metrics on http://%s/metrics (also /healthz, /readyz)", where,
                extra={"event": "metrics_listening", "address": where},
            )
        logger.info(
            "async_chat listening on %s transport=%s protocol=%s tls=%s auth=%s broker=%s history=%d queue_size=%d",
            self.address, s.transport, s.protocol, _tls_mode(s), "on" if secret else "off", redact(s.broker),
            s.history, s.queue_size,
            extra={"event": "started", "address": self.address, "broker": redact(s.broker)},
        )

    def unready_reason(self) -> str | None:
        """Why this server should get no traffic now (for /readyz), or None when it is ready."""
        if self.state is not ServerState.SERVING:
            return f"not accepting calls: {self.state.value}"
        if self.hub is not None and not self.hub.broker.up:
            return "the broker is unreachable"
        return None

    async def aclose(self) -> None:
        """Graceful stop: no new connections, wake polls, close idle connections, drain busy ones."""
        if self.state in (ServerState.DRAINING, ServerState.CLOSED):
            return
        if self.state is ServerState.NEW:
            self.state = ServerState.CLOSED
            return
        self.state = ServerState.DRAINING
        logger.info(
            "draining: %d connection(s) open", len(self._connections),
            extra={"event": "draining", "connections": len(self._connections)},
        )
        assert self._listener is not None
        assert self.hub is not None
        try:
            self._listener.close()
            await cancel_and_wait(self._sweeper)
            self.hub.begin_shutdown()
            for conn in self._connections.values():
                if conn.state is ConnectionState.IDLE:
                    conn.close()
            pending = set(self._connections)
            if pending:
                _done, pending = await asyncio.wait(pending, timeout=self.settings.drain_timeout)
            if pending:
                logger.warning("drain timeout: cancelling %d call(s) still in flight", len(pending))
        finally:
            # Whatever happened above (even our own cancellation), no connection task outlives us.
            for task in list(self._connections):
                self._connections[task].shutdown_cancel = True
                task.cancel()
            if self._connections:
                await asyncio.wait(set(self._connections))
            await self.hub.aclose()
            if self.monitor is not None:
                await self.monitor.aclose()
            self.state = ServerState.CLOSED
            logger.info("stopped", extra={"event": "stopped"})

    async def _serve(self, client: StreamHandler) -> None:
        """Serve one connection: its calls one after another, until it closes, idles out, or we stop."""
        s = self.settings
        task = asyncio.current_task()
        assert task is not None
        assert self._processor is not None
        conn = _Connection(client.reader, client.writer, s.max_call_bytes)
        if self.state is not ServerState.SERVING or not self._admit(conn):
            conn.close()
            return
        self._connections[task] = conn
        self._per_address[conn.address] = self._per_address.get(conn.address, 0) + 1
        self.connections_total += 1
        # This task's own context: the connection's calls all run in it.
        SESSION.set(Session(publishes=TokenBucket(s.publish_rate, s.publish_burst) if s.publish_rate else None))
        processor = self._processor
        try:
            conn.dialect = dialect = self._dialect_of(await conn.read_head(), conn)
            if dialect is None:
                return
            prot = dialect.protocol_on(conn)
            while self.state is ServerState.SERVING:
                conn.state = ConnectionState.IDLE
                conn.idle_since = time.monotonic()
                conn.budget = conn.max_call_bytes
                call = await processor.read_call(prot)
                conn.state = ConnectionState.BUSY
                await processor.answer(prot, *call)
                conn.calls += 1
        except (TTransportException, ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer went away
        except asyncio.CancelledError:
            if not conn.shutdown_cancel:
                raise
            # Our own drain timeout cancelled this call; the task ends here rather than as "cancelled",
            # which asyncio's stream callback would report as an unhandled error.
        except CallTooLarge as exc:
            self.oversized_total += 1
            logger.warning(
                "closing %r: %s (--max-call-bytes)", conn, exc, extra={"event": "call_too_large", "peer": conn.peer}
            )
        except Exception as exc:
            self.unreadable_total += 1
            logger.warning(
                "closing %r: unreadable request (%s: %s)", conn, type(exc).__name__, exc,
                extra={"event": "connection_unreadable", "peer": conn.peer},
            )
        finally:
            self._connections.pop(task, None)
            self._release_address(conn.address)
            conn.close()

    def _admit(self, conn: _Connection) -> bool:
        """Whether a new connection fits the limits; a refusal is counted, and logged once per episode."""
        s = self.settings
        if len(self._connections) >= s.max_connections:
            scope, limit = "", s.max_connections
        elif self._per_address.get(conn.address, 0) >= s.max_connections_per_address:
            scope, limit = conn.address, s.max_connections_per_address
        else:
            return True
        self.refused_total += 1
        if scope not in self._limits_hit:
            self._limits_hit.add(scope)
            logger.warning(
                "connection limit reached (%d%s): refusing new connections%s until some close",
                limit, f" from {scope}" if scope else " in total", f" from {scope}" if scope else "",
                extra={"event": "limit_hit", "limit": "connections_per_address" if scope else "connections",
                       "address": scope or None},
            )
        return False

    def _release_address(self, address: str) -> None:
        left = self._per_address.get(address, 1) - 1
        if left:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)
        # Below a limit again: the next time it is reached is a new episode, logged again.
        if "" in self._limits_hit and len(self._connections) < self.settings.max_connections:
            self._limits_hit.discard("")
        if address in self._limits_hit and left < self.settings.max_connections_per_address:
            self._limits_hit.discard(address)

    def _dialect_of(self, head: bytes, conn: _Connection) -> wire.Dialect | None:
        """The dialect `head` begins, if this server takes it; else None, logged once for the connection."""
        s = self.settings
        dialect = wire.detect(head)
        if dialect is None:
            logger.warning(
                "refusing %r: its first bytes %s are not a Thrift call%s", conn, head.hex(" "), _hint(head),
                extra={"event": "connection_refused", "peer": conn.peer},
            )
        elif not dialect.allowed_by(s.transport, s.protocol):
            logger.warning(
                "refusing %r: it speaks %s, this server takes --transport %s --protocol %s",
                conn, dialect, s.transport, s.protocol, extra={"event": "connection_refused", "peer": conn.peer},
            )
            dialect = None
        if dialect is None:
            self.refused_total += 1
        return dialect

    def _close_idle(self) -> None:
        """Close connections that have waited `idle_timeout` for their next call to arrive."""
        timeout = self.settings.idle_timeout
        deadline = time.monotonic() - timeout
        for conn in self._connections.values():
            if conn.state is not ConnectionState.BUSY and conn.idle_since < deadline:
                logger.debug("closing %r: idle for %gs", conn, timeout)
                conn.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket without SO_REUSEPORT, so that a port in use fails loudly."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _monitor(server: ChatServer, host: str, port: int) -> tuple[Metrics, Monitor]:
    """Metrics and their HTTP endpoint; prometheus-client is imported only here, when asked for."""
    try:
        from .metrics import Metrics
        from .monitor import Monitor
    except ImportError as exc:
        hint = "pip install 'async-chat[metrics]'"
        raise ImportError(f"--metrics-port needs prometheus-client: {hint} ({exc})") from None
    metrics = Metrics(server)
    return metrics, Monitor(server, metrics, host, port)


def _tls_mode(s: Settings) -> str:
    if s.tls_cert is None:
        return "off"
    return "on+client-certificates" if s.tls_client_ca else "on"


def _hint(head: bytes) -> str:
    """What a refused connection probably is, for the log line."""
    if head[:2] == b"\x16\x03":
        return " (a TLS handshake: this server speaks plain TCP)"
    if head[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"PRI "):
        return " (an HTTP request)"
    return ""


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


# -- the command line ---------------------------------------------------------------------------------


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with ChatServer(settings):
            await stop.wait()
            logger.info("signal received: shutting down", extra={"event": "signal"})
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(coro: Any) -> None:
    """Run `coro` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform it supports
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser: argparse.ArgumentParser = settings_module.build_parser()
    settings = settings_module.load(argv)
    logs.configure(settings.log_level, settings.log_format)
    try:
        run(serve(settings))
    except OSError as exc:
        parser.exit(1, f"async_chat: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}\n")
    except ChatError as exc:
        parser.exit(1, f"async_chat: {exc.reason}\n")
    except ImportError as exc:  # an optional extra asked for but not installed
        parser.exit(1, f"async_chat: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
