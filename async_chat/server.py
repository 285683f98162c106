"""ChatServer: listen, serve, drain, stop — and `python -m async_chat.server`.

thriftpy2 is our Thrift layer: the IDL, its types, its codecs. Its aio server (`make_aio_server`) is not
what serves connections any more; each of its parts we replaced has a reason, from THRIFTPY2.md or from
a profile:
- Its connections are tasks awaiting a StreamReader, and it decodes a call value by value, awaiting each:
  a void `sendMessage` cost more Python than the network did. Ours are `asyncio.Protocol`s (connection.py)
  that decode whole calls from memory with thriftpy2's Cython codec (codec.py) and run each call eagerly,
  without a task unless it has to wait.
- Its `client_timeout` cuts every connection a fixed time after it opened, busy or not. We close
  connections that sit `idle_timeout` between calls (always longer than the longest poll); a call that
  has not fully arrived by then counts as idle too. One sweeper task checks every connection a few
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
import gc
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from anyio.abc import AsyncResource

from . import auth, build, logs, wire
from . import settings as settings_module
from .brokers import open_broker, redact
from .codec import DECODER, Codec
from .connection import Connection, ConnectionState, Outbox
from .contract import ChatService
from .errors import ChatError, InvalidRequest
from .handler import ChatHandler
from .hub import Hub, HubLimits
from .processor import ChatProcessor
from .session import Session, TokenBucket
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


class ChatServer(AsyncResource):
    """The message service on one TCP port. Use as `async with ChatServer(settings) as server:`."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        base = settings or Settings()
        self.settings = base.with_changes(**overrides) if overrides else base
        self._state = ServerState.NEW
        self.serving = False
        """Whether it takes new calls: read by every connection after every call."""
        self.hub: Hub | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        """Calls in flight that wait (long polls, broker round trips): each connection's, awaited on close."""
        self._processor: ChatProcessor | None = None
        self._codecs: dict[tuple[str, bool], Codec] = {}
        self.eager = False
        """Whether calls may start outside a task (see `Broker.eager`)."""
        self.outbox = Outbox()
        """Its connections' replies, written a loop iteration's worth at a time."""
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
        self.episodes = logs.Episodes()
        """Lines about misbehaving clients, once per episode."""
        self.tls: ssl.SSLContext | None = None
        """The context each connection's TLS handshake uses; None: plain TCP."""

    def __repr__(self) -> str:
        return (
            f"<ChatServer [{self.state.name}] {self.address} connections={len(self._connections)}"
            f" {self.settings.transport}/{self.settings.protocol} broker={redact(self.settings.broker)}>"
        )

    @property
    def state(self) -> ServerState:
        return self._state

    @state.setter
    def state(self, state: ServerState) -> None:
        self._state = state
        self.serving = state is ServerState.SERVING

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
        verifier = auth.Verifier.from_files(
            s.auth_secret_file, s.auth_public_key_file, audience=s.auth_audience, issuer=s.auth_issuer,
            max_identity_length=s.max_name_length,
        )
        sock = _bind(s.host, s.port)
        try:
            self.port = sock.getsockname()[1]
            broker = open_broker(s)
            limits = HubLimits(
                queue_size=s.queue_size, queue_bytes=s.queue_bytes, subscription_ttl=s.subscription_ttl,
                max_subscriptions=s.max_subscriptions, max_reply_bytes=s.max_reply_bytes, overflow=s.overflow,
            )
            hub = Hub(broker, limits)
            await hub.start()
            self.hub = hub
            self.eager = broker.eager
            handler = ChatHandler(hub, s, lambda: (len(self._connections), self.connections_total), verifier)
            metrics = None
            if s.metrics_port is not None:
                metrics, self.monitor = _monitor(self, s.host, s.metrics_port)
                await self.monitor.start()
            self._processor = ChatProcessor(ChatService, handler, metrics)
            self.state = ServerState.SERVING  # before accepting: the first connection may arrive at once
            loop = asyncio.get_running_loop()
            # TLS is not the listener's: each connection upgrades itself (connection.py), so that it counts
            # against the connection limits from accept, and its handshake has the idle timeout to finish.
            self.tls = tls
            self._listener = await loop.create_server(lambda: Connection(self), sock=sock)
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
            "async_chat listening on %s transport=%s protocol=%s tls=%s auth=%s broker=%s history=%d queue_size=%d"
            " decoder=%s core=%s", self.address, s.transport, s.protocol, _tls_mode(s), "on" if verifier else "off",
            redact(s.broker), s.history, s.queue_size, DECODER, build.core(),
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
        assert self._listener is not None
        assert self.hub is not None
        # In this order, before anything awaits: refuse publishes (so no acknowledged message can arrive
        # after the last poll that would have collected it), then wake long-polls with what they have.
        self.state = ServerState.DRAINING
        self.hub.begin_shutdown()
        logger.info(
            "draining: %d connection(s) open", len(self._connections),
            extra={"event": "draining", "connections": len(self._connections)},
        )
        try:
            self._listener.close()
            await cancel_and_wait(self._sweeper)
            for conn in list(self._connections):
                if conn.state is ConnectionState.IDLE and self.may_close(conn):
                    conn.close()
            pending = {conn.closed for conn in self._connections}
            if pending:
                _done, pending = await asyncio.wait(pending, timeout=self.settings.drain_timeout)
            if pending:
                logger.warning("drain timeout: cancelling %d call(s) still in flight", len(pending))
        finally:
            # Whatever happened above (even our own cancellation), no connection or call outlives us.
            for conn in list(self._connections):
                conn.abort()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            await self.hub.aclose()
            if self.monitor is not None:
                await self.monitor.aclose()
            self.state = ServerState.CLOSED
            logger.info("stopped", extra={"event": "stopped"})

    # -- what connections ask of their server ---------------------------------------------------------

    @property
    def processor(self) -> ChatProcessor:
        assert self._processor is not None
        return self._processor

    def admit(self, conn: Connection) -> bool:
        """Register a new connection if it fits the limits (and we still serve); False: close it."""
        if self.state is not ServerState.SERVING or not self._admit(conn):
            return False
        self._connections.add(conn)
        self._per_address[conn.address] = self._per_address.get(conn.address, 0) + 1
        self.connections_total += 1
        return True

    def readdress(self, conn: Connection, address: str) -> bool:
        """`conn` is the client at `address` (its PROXY header said so): count it there, if that address
        is within its limit; False (counted nowhere) if not."""
        self._release_address(conn.address)
        conn.address = address
        if self._per_address.get(address, 0) >= self.settings.max_connections_per_address:
            conn.address = ""  # counted nowhere now: its close releases nothing
            self._refuse(address, self.settings.max_connections_per_address)
            return False
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return True

    def may_close(self, conn: Connection) -> bool:
        """While draining: whether `conn` may close, i.e. none of its subscriptions still owes messages."""
        hub, session = self.hub, conn.session
        return hub is None or session is None or not hub.owes(session.subscriptions)

    def forget(self, conn: Connection) -> None:
        """A registered connection has closed."""
        self._connections.discard(conn)
        self._release_address(conn.address)

    def new_session(self) -> Session:
        s = self.settings
        return Session(publishes=TokenBucket(s.publish_rate, s.publish_burst) if s.publish_rate else None)

    def codec_for(self, dialect: wire.Dialect) -> Codec:
        key = (dialect.protocol, dialect.strict)
        codec = self._codecs.get(key)
        if codec is None:
            codec = self._codecs[key] = Codec(
                ChatService, dialect.protocol, dialect.strict, self.settings.max_call_bytes)
        return codec

    def track(self, task: asyncio.Task[Any]) -> None:
        """Own a waiting call's task until it ends, so that close() can await it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit(self, conn: Connection) -> bool:
        """Whether a new connection fits the limits; a refusal is counted, and logged once per episode.
        Behind a balancer (--proxy-protocol) every connection comes from its address: the per-address
        limit applies once the header names the client (`readdress`)."""
        s = self.settings
        if len(self._connections) >= s.max_connections:
            scope, limit = "", s.max_connections
        elif s.proxy_protocol == "off" and self._per_address.get(conn.address, 0) >= s.max_connections_per_address:
            scope, limit = conn.address, s.max_connections_per_address
        else:
            return True
        self._refuse(scope, limit)
        return False

    def _refuse(self, scope: str, limit: int) -> None:
        """Count a connection refused at a limit (`scope`: the address, or "" for the total), logged once
        per episode."""
        self.refused_total += 1
        if scope not in self._limits_hit:
            self._limits_hit.add(scope)
            logger.warning(
                "connection limit reached (%d%s): refusing new connections%s until some close",
                limit, f" from {scope}" if scope else " in total", f" from {scope}" if scope else "",
                extra={"event": "limit_hit", "limit": "connections_per_address" if scope else "connections",
                       "address": scope or None},
            )

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

    def dialect_of(self, head: bytes, conn: Connection) -> wire.Dialect | None:
        """The dialect `head` begins, if this server takes it; else None, logged once for the connection."""
        s = self.settings
        dialect = wire.detect(head)
        if dialect is None:
            self.episodes.log(
                logger, logging.WARNING, "connection_refused", "refusing %r: its first bytes %s are not a Thrift"
                " call%s", conn, head.hex(" "), _hint(head), peer=conn.peer,
            )
        elif not dialect.allowed_by(s.transport, s.protocol):
            self.episodes.log(
                logger, logging.WARNING, "connection_refused", "refusing %r: it speaks %s, this server takes"
                " --transport %s --protocol %s", conn, dialect, s.transport, s.protocol, peer=conn.peer,
            )
            dialect = None
        if dialect is None:
            self.refused_total += 1
        return dialect

    def _close_idle(self) -> None:
        """End connections that have waited `idle_timeout` for their next call to arrive (a call still
        arriving counts as waiting), or whose peer has left replies unread that long: those are aborted,
        since a graceful close would wait for the peer to read them, forever. (A TLS handshake has the same
        time to finish, as its own timeout: connection.py.)"""
        timeout = self.settings.idle_timeout
        deadline = time.monotonic() - timeout
        for conn in list(self._connections):
            waiting = (ConnectionState.IDLE, ConnectionState.READING, ConnectionState.PROXY)
            if conn.state in waiting and conn.idle_since < deadline:
                if conn.unsent:
                    self.episodes.log(
                        logger, logging.INFO, "connection_stalled", "aborting %r: its peer left %d reply bytes"
                        " unread for %gs", conn, conn.unsent, timeout, peer=conn.peer, unsent=conn.unsent,
                    )
                    conn.abort()
                else:
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


def quiet_gc() -> None:
    """Keep the cyclic garbage collector out of a busy room's way.

    A pass over a thousand subscribers allocates tens of thousands of short-lived objects, which reference
    counting frees. At the default threshold (700 allocations) the collector still ran every few hundred
    microseconds, and its older generations walked every connection and subscription held: a few percent
    of the server's CPU and pauses of milliseconds (p99 of the 1,000-subscriber fan-out 89 ms -> 49 ms on
    this machine). What exists at start is frozen out of its walks, and it runs every 50,000 allocations."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def main(argv: Sequence[str] | None = None) -> int:
    parser: argparse.ArgumentParser = settings_module.build_parser()
    settings = settings_module.load(argv)
    logs.configure(settings.log_level, settings.log_format)
    quiet_gc()
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
