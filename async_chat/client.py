"""ChatClient: a task-safe asyncio client with pipelined calls, and `subscribe()` as a reconnecting stream.

Each connection is an `asyncio.Protocol` (`_Wire`) that encodes calls and decodes replies whole, with the
server's own codec (thriftpy2's Cython codec for binary). Calls are pipelined: any number of tasks share
a connection, each request is written as soon as it is made (requests made in the same turn of the event
loop go out in one write), and replies, which a Thrift server sends in the order of the calls, are
matched to their callers in order and checked by seqid: a mismatch means the connection can no longer be
trusted, and it is closed. A call that times out or is cancelled leaves its place in the line: its late
reply is recognised and dropped, so the connection stays in step. A lost connection fails every call in
flight on it with `ConnectionLost`.

Bounded: at most `pool_size` connections, each with at most `max_in_flight` calls; a call past that waits
for room (back-pressure, not a queue that grows). A long poll would hold up every call behind it on its
connection, so polls that wait run on a connection of their own.

Sends are made retry-safe: a message without `client_msg_id` gets one, and a send whose connection was
lost is retried once, so the server stores it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import ssl as ssl_module
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from anyio.abc import AsyncResource
from thriftpy2.thrift import TApplicationException

from . import wire
from .codec import Codec, Frame, Reply, message_length
from .contract import DEFAULT_ROOM, ChatService, Message, WireChatError
from .errors import (
    CallTimeout,
    ChatError,
    ConnectionLost,
    ErrorCode,
    NoSuchSubscription,
    ServerError,
    Unavailable,
)
from .wire import Dialect

logger = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 << 20
"""A reply claiming more than this (a server's --max-reply-bytes is 256 KiB by default) breaks its connection."""


@dataclass(frozen=True)
class Missed:
    """Yielded by `subscribe()` before the messages that follow a loss.

    `count` messages of the room were lost to this subscriber (it read too slowly, or history no longer
    reached back). `reset` means an unknown number may have been lost as well: the server no longer knew
    the room's position it resumed from (it restarted without persistence), or the room's numbering jumped
    after its Redis may have lost data; `count` then counts only what is known.
    """

    count: int
    next_seq: int
    reset: bool = False


class _Incoming:
    """The bytes a compact connection has received, as a `Source` its reader awaits."""

    __slots__ = ("_buffer", "_closed", "_waiter", "skips")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.skips = wire.SkipBudget()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, size: int) -> bytes:
        if size < 0 or size > MAX_REPLY_BYTES:
            raise ValueError(f"a reply claimed {size} bytes")
        while len(self._buffer) < size:
            if self._closed:
                raise EOFError("the connection closed inside a reply")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


class _Wire(asyncio.Protocol):
    """One connection: calls pipelined in order, replies matched to them in order and by seqid."""

    def __init__(self, client: ChatClient) -> None:
        self._client = client
        self._codec = client._codec
        self._framed = client.dialect.transport == "framed"
        self._binary = client.dialect.protocol == "binary"
        self.transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[int, str, asyncio.Future[Any]]] = deque()
        """Calls sent and not yet answered, oldest first: (seqid, method, its caller's future)."""
        self._seqid = 0
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._turn = False
        """Whether a call was written in this turn of the event loop: later ones wait for its end."""
        self._answered = False
        self._lost: str | None = None
        self._incoming: _Incoming | None = None
        self._reader: asyncio.Task[None] | None = None
        self.last_used = time.monotonic()
        self.alone = False
        """Kept for one call alone (a long poll, which would hold up any call behind it)."""

    def __repr__(self) -> str:
        state = f"LOST ({self._lost})" if self._lost else "OPEN"
        return f"<_Wire [{state}] in_flight={len(self._waiting)}>"

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    @property
    def lost(self) -> bool:
        return self._lost is not None

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        if not self._binary:  # compact is read value by value, by a task of this connection's
            self._incoming = _Incoming()
            self._reader = asyncio.get_running_loop().create_task(self._read_compact(), name="async_chat.client.reader")

    def data_received(self, data: bytes) -> None:
        if self._incoming is not None:
            self._incoming.feed(data)
            return
        buffer = self._buffer
        buffer += data
        try:
            while buffer:
                if self._framed:
                    if len(buffer) < 4:
                        return
                    size = int.from_bytes(buffer[:4], "big", signed=True)
                    if not 0 <= size <= MAX_REPLY_BYTES:
                        raise ValueError(f"a frame of {size} bytes")
                    if len(buffer) < 4 + size:
                        return
                    message = bytes(buffer[4 : 4 + size])
                    del buffer[: 4 + size]
                else:
                    end = message_length(buffer)
                    if end is None:
                        if len(buffer) > MAX_REPLY_BYTES:
                            raise ValueError(f"a reply of more than {MAX_REPLY_BYTES} bytes")
                        return
                    message = bytes(buffer[:end])
                    del buffer[:end]
                self._answer(self._codec.reply_from(message))
        except ValueError as exc:
            self._break(f"an unreadable reply: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            why = f"connection lost ({exc})"
        elif not self._answered:
            why = ("the server closed the connection before answering anything (does it speak TLS only, or"
                   " another transport or protocol?)")
        else:
            why = "the server closed the connection"
        self._fail(why)
        if self._incoming is not None:
            self._incoming.close()

    # -- calls ---------------------------------------------------------------------------------------

    def call(self, api: str, args: Any) -> asyncio.Future[Any]:
        """Send `api(args)`: at once if it is this turn's first call, else with the rest of the turn's in one
        write; its reply's future."""
        if self._lost is not None:
            raise ConnectionLost(f"{api}: {self._lost}")
        self._seqid = seqid = (self._seqid + 1) & 0x7FFFFFFF
        data = self._codec.request(api, seqid, args)
        if self._framed:
            data = len(data).to_bytes(4, "big") + data
        loop = asyncio.get_running_loop()
        if self._turn:
            self._out.append(data)  # not the first call of this turn of the loop: in one write at its end
        else:
            self._turn = True
            loop.call_soon(self._end_turn)
            assert self.transport is not None
            self.transport.write(data)  # the first goes at once: a lone call waits for nothing
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((seqid, api, future))
        self.last_used = time.monotonic()
        return future

    def _end_turn(self) -> None:
        self._turn = False
        out, self._out = self._out, []
        if out and self.transport is not None and self._lost is None:
            self.transport.write(b"".join(out))

    def _answer(self, reply: Reply) -> None:
        if not self._waiting:
            raise ValueError("a reply to no call")
        seqid, api, future = self._waiting[0]
        if reply.seqid != seqid or reply.api != api:  # the call stays in line, to fail with the rest
            raise ValueError(f"a reply to {reply.api} #{reply.seqid} where {api} #{seqid} was next")
        self._waiting.popleft()
        self._answered = True
        self.last_used = time.monotonic()
        self._client._room_freed()
        if future.done():  # its caller gave up (a timeout, a cancellation): the reply only keeps us in step
            return
        try:
            future.set_result(_outcome(api, reply))
        except ChatError as exc:
            future.set_exception(exc)

    async def _read_compact(self) -> None:
        incoming = self._incoming
        assert incoming is not None
        try:
            while True:
                incoming.skips = wire.SkipBudget()
                if self._framed:
                    size = int.from_bytes(await incoming.read(4), "big", signed=True)
                    if not 0 <= size <= MAX_REPLY_BYTES:
                        raise ValueError(f"a frame of {size} bytes")
                    frame = Frame(await incoming.read(size))
                    reply = await self._codec.read_reply(frame)
                else:
                    reply = await self._codec.read_reply(incoming)
                self._answer(reply)
        except EOFError:
            pass  # connection_lost said why
        except Exception as exc:  # anything the bytes make the decoder raise: the stream is unreadable
            self._break(f"an unreadable reply: {exc}")

    # -- ending --------------------------------------------------------------------------------------

    def _break(self, why: str) -> None:
        """The replies can no longer be matched to their calls: fail them all and close."""
        self._fail(why)
        self.close()

    def _fail(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        waiting, self._waiting = self._waiting, deque()
        for _seqid, api, future in waiting:
            if not future.done():
                future.set_exception(ConnectionLost(f"{api}: {why}"))
        self._client._forget(self)

    def close(self) -> None:
        """Close the connection. A compact reader's task is cancelled and handed to the client, whose
        `aclose` awaits it."""
        if self._lost is None:
            self._lost = "closed by this client"
        self._client._forget(self)
        if self.transport is not None:
            self.transport.close()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            self._client._stopping.add(reader)
            reader.add_done_callback(self._client._stopping.discard)


class ChatClient(AsyncResource):
    """Talks to an async_chat server (or any server of the classic contract, for sendMessage).

    Any number of tasks may share one client: calls are pipelined over at most `pool_size` connections,
    at most `max_in_flight` calls each. Every call has a timeout (`timeout` seconds unless the call says
    otherwise).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9090,
        *,
        transport: str = "buffered",
        protocol: str = "binary",
        pool_size: int = 8,
        max_in_flight: int = 64,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_idle: float = 60.0,
        retries: int = 1,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        token: str | None = None,
    ) -> None:
        if pool_size < 1 or max_in_flight < 1:
            raise ValueError("pool_size and max_in_flight must be at least 1")
        self.dialect = Dialect(transport, protocol)  # raises ValueError for a name it does not know
        self.host, self.port = host, port
        self.pool_size, self.max_in_flight = pool_size, max_in_flight
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.retries = retries
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.token = token
        self.identity: str | None = None
        """Who the server says this client is, once a connection authenticated with `token`."""
        if ssl is not None and not ssl.check_hostname:
            logger.warning("ChatClient TLS without hostname checking: anyone with a certificate from a trusted CA"
                           " can pose as %s", host)
        self._codec = Codec(ChatService, protocol)
        self._ids = secrets.token_hex(8) + "-"
        """The client_msg_ids this client makes: this prefix (64 random bits), then a count."""
        self._sent = itertools.count(1)
        self._wires: list[_Wire] = []
        """Pooled connections, shared by calls (a stream's and a long poll's are not here)."""
        self._opening = 0
        self._room = asyncio.Event()
        """Set when a call finished: a caller waiting for room in a full pool looks again."""
        self._streams: set[MessageStream] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        """Readers of closed compact connections, cancelled: `aclose` awaits them."""
        self._closed = False

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else "OPEN"
        in_flight = sum(w.in_flight for w in self._wires)
        return (f"<ChatClient [{state}] {self.host}:{self.port} connections={len(self._wires)}"
                f" in_flight={in_flight} streams={len(self._streams)}>")

    async def aclose(self) -> None:
        """Close every connection and every open `subscribe()` stream; calls in flight fail ConnectionLost."""
        self._closed = True
        for stream in list(self._streams):
            await stream.aclose()
        for conn in list(self._wires):
            conn.close()
        self._wires.clear()
        await asyncio.gather(*self._stopping, return_exceptions=True)

    # -- the service --------------------------------------------------------------------------

    async def sendMessage(self, message: Any, *, timeout: float | None = None) -> None:  # the IDL's name
        """The classic call. Retried once on a lost connection (deduplicated by client_msg_id)."""
        await self._send("sendMessage", message, timeout)

    async def publish(self, message: Any, *, timeout: float | None = None) -> int:
        """Publish and return the message's seq in its room."""
        seq: int = await self._send("publish", message, timeout)
        return seq

    async def publish_many(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[int]:
        """Publish every message, pipelined, and return their seqs in the same order. Each is sent (and,
        on a lost connection, retried once) as `publish` would; the first failure is raised once all
        have finished, so that none is left running."""
        results = await asyncio.gather(
            *(self.publish(message, timeout=timeout) for message in messages), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]  # no exception left: every one is an int

    async def history(
        self, room: str = DEFAULT_ROOM, from_seq: int = 0, limit: int = 100, *, timeout: float | None = None
    ) -> list[Any]:
        messages: list[Any] = await self.call("history", room, from_seq, limit, timeout=timeout)
        return messages

    async def create_subscription(self, room: str = DEFAULT_ROOM, from_seq: int = 0) -> Any:
        """The raw `subscribe` call: returns the IDL's Subscription. Most apps want `subscribe()`."""
        return await self.call("subscribe", room, from_seq)

    async def poll(
        self, subscription_id: str, max_messages: int = 100, wait_ms: int = 0, from_seq: int = 0, linger_ms: int = 0
    ) -> Any:
        """The raw `poll` call: returns the IDL's Batch. Pass `from_seq` (the last Batch's next_seq) to make
        a retried poll safe: a reply lost on the way is served again. A poll that may wait runs on a
        connection of its own, so that it holds up no other call. `linger_ms`: see `subscribe`."""
        args = (subscription_id, max_messages, wait_ms, from_seq, linger_ms or None)
        timeout = self._poll_timeout(wait_ms + linger_ms)
        if wait_ms <= 0:
            return await self.call("poll", *args, timeout=timeout)
        self._check_open()
        conn = await self._choose(alone=True)
        try:
            return await self.invoke(conn, "poll", args, timeout)
        finally:
            conn.alone = False
            self._room.set()

    async def unsubscribe(self, subscription_id: str) -> None:
        await self.call("unsubscribe", subscription_id)

    async def stats(self, max_rooms: int = 20) -> Any:
        """The server's `ServerStats`, with its `max_rooms` busiest rooms (for operators)."""
        return await self.call("stats", max_rooms)

    def subscribe(
        self,
        room: str = DEFAULT_ROOM,
        *,
        from_seq: int = 0,
        max_messages: int = 100,
        wait_ms: int = 20_000,
        linger_ms: int = 0,
    ) -> MessageStream:
        """Messages of `room` as an async iterator, on a connection of its own.

        Yields `Message`s in seq order, and a `Missed` before any loss. It long-polls, reconnects after a
        dropped connection, and resumes from the last seq it yielded (replayed from the room's history).
        `linger_ms` > 0 asks the server to gather messages for up to that long before answering (poll in
        chat.thrift): for a busy room, fewer and larger batches for a little latency.
        """
        self._check_open()
        return MessageStream(self, room or DEFAULT_ROOM, from_seq, max_messages, wait_ms, linger_ms)

    # -- calls ------------------------------------------------------------------------------------

    async def call(self, api: str, *args: Any, timeout: float | None = None) -> Any:
        """Make one call on a pooled connection; errors come back as `ChatError` kinds."""
        self._check_open()
        conn = await self._choose()
        return await self.invoke(conn, api, args, timeout)

    async def invoke(self, conn: _Wire, api: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        """Call `api` on `conn` and wait for its reply (bounded by the timeout). A timeout or a
        cancellation leaves the connection in step: its late reply is dropped when it comes."""
        try:
            request = getattr(ChatService, api + "_args")(*args)
        except TypeError as exc:
            raise ValueError(f"{api}: {exc}") from None
        future = conn.call(api, request)
        # A timer that fails the future, cheaper than asyncio.timeout (a scope, a task lookup) on every call.
        expiry = asyncio.get_running_loop().call_later(
            self.timeout if timeout is None else timeout, self._expire, future, api
        )
        try:
            return await future
        finally:
            expiry.cancel()

    def _expire(self, future: asyncio.Future[Any], api: str) -> None:
        if not future.done():
            future.set_exception(CallTimeout(f"{api} got no reply from {self.host}:{self.port} in time"))

    async def _choose(self, *, alone: bool = False) -> _Wire:
        """The pooled connection with the fewest calls in flight; a new one while the pool has room and
        every connection is busy; or, the pool full and busy, a wait until a call finishes. `alone`: one
        with no call in flight, kept for this call alone (a long poll) until the caller resets `alone`."""
        while True:
            now = time.monotonic()
            best: _Wire | None = None
            for conn in list(self._wires):
                if conn.alone:
                    continue
                if conn.in_flight == 0 and now - conn.last_used > self.max_idle:
                    conn.close()  # idle long enough that the server may be about to cut it
                elif best is None or conn.in_flight < best.in_flight:
                    best = conn
            can_open = len(self._wires) + self._opening < self.pool_size
            if best is not None and (best.in_flight == 0 or (not can_open and not alone
                                                            and best.in_flight < self.max_in_flight)):
                best.alone = alone
                return best
            if can_open:
                self._opening += 1
                try:
                    conn = await self.connect()
                finally:
                    self._opening -= 1
                    self._room.set()  # a connection, or room to try one: callers waiting look again
                if self._closed:
                    conn.close()
                    raise Unavailable("this ChatClient is closed")
                self._wires.append(conn)
                conn.alone = alone
                return conn
            self._room.clear()
            await self._room.wait()

    def _room_freed(self) -> None:
        self._room.set()

    def _forget(self, conn: _Wire) -> None:
        with contextlib.suppress(ValueError):
            self._wires.remove(conn)
        self._room.set()

    async def connect(self) -> _Wire:
        """Open a new connection, authenticated if the client has a token: the pool's (`_choose`), a
        stream's or a long poll's own."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, conn = await loop.create_connection(
                    lambda: _Wire(self), self.host, self.port,
                    ssl=self.ssl, server_hostname=self.server_hostname if self.ssl else None,
                )
        except (TimeoutError, OSError) as exc:  # ssl.SSLError (a failed handshake, a bad certificate) is one
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise Unavailable(f"cannot connect to {self.host}:{self.port}: {reason}") from None
        if self.token is not None:  # every connection proves who it is before its first call
            try:
                self.identity = await self.invoke(conn, "authenticate", (self.token,), None)
            except BaseException:
                conn.close()  # refused (or lost): this connection is of no use
                raise
        return conn

    async def _send(self, api: str, message: Any, timeout: float | None) -> Any:
        if message is None:
            raise ValueError("message is required")
        outgoing = Message(
            sender=message.sender,
            content=message.content,
            room=message.room,
            client_msg_id=message.client_msg_id or f"{self._ids}{next(self._sent)}",
        )
        for attempt in range(self.retries + 1):
            try:
                return await self.call(api, outgoing, timeout=timeout)
            except ConnectionLost:
                if attempt == self.retries:
                    raise
                logger.debug("%s: connection lost, retrying with client_msg_id=%s", api, outgoing.client_msg_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def _poll_timeout(self, wait_ms: int) -> float:
        return wait_ms / 1000 + self.timeout

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("this ChatClient is closed")


def _outcome(api: str, reply: Reply) -> Any:
    """What the caller of `api` gets from `reply`: its value, or the ChatError it carries (raised)."""
    body = reply.body
    if isinstance(body, TApplicationException):
        raise _refusal(body)
    error = getattr(body, "error", None)
    if isinstance(error, WireChatError):
        raise ChatError.from_code(error.code, error.reason or "")
    if not hasattr(body, "success"):
        return None  # a void method
    if body.success is None:
        raise ServerError(f"{api}: the reply carried no result", type=TApplicationException.MISSING_RESULT)
    return body.success


def _refusal(exc: TApplicationException) -> ChatError:
    """A TApplicationException "CODE: reason" is how sendMessage (no `throws`) carries a ChatError."""
    text = str(exc)
    code, sep, reason = text.partition(": ")
    if sep and exc.type == TApplicationException.UNKNOWN and code in ErrorCode.__members__:
        return ChatError.from_code(ErrorCode[code], reason)
    return ServerError(text, type=exc.type)


class MessageStream(AsyncResource):
    """`client.subscribe(...)`: an async iterator of `Message | Missed` with its own connection.

    Use it as `async with client.subscribe("room") as stream: async for item in stream:`, or iterate it
    directly and `aclose()` it (the client's `aclose()` closes it too).
    """

    def __init__(
        self, client: ChatClient, room: str, from_seq: int, max_messages: int, wait_ms: int, linger_ms: int = 0
    ) -> None:
        self._client = client
        self.room = room
        self.next_seq = from_seq
        self.subscription_id: str | None = None
        self._started = False
        self._max_messages = max_messages
        self._wait_ms = wait_ms
        self._linger_ms = linger_ms
        self._buffer: deque[Any] = deque()
        self._conn: _Wire | None = None
        self._closed = False
        self._in_call = False
        self.reconnects = 0
        client._streams.add(self)

    @property
    def connected(self) -> bool:
        """Whether the stream has a connection up now (it reconnects by itself when it has not)."""
        return self._conn is not None and not self._conn.lost

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else ("SUBSCRIBED" if self.subscription_id else "CONNECTING")
        return f"<MessageStream {self.room!r} [{state}] next_seq={self.next_seq} reconnects={self.reconnects}>"

    async def __aenter__(self) -> MessageStream:
        """Subscribe now, so that nothing published after this returns is missed; errors raise here."""
        try:
            await self._ensure_subscribed()
        except BaseException:
            await self.aclose()
            raise
        return self

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        backoff = 0.05
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            try:
                self._in_call = True
                try:
                    await self._fill()
                finally:
                    self._in_call = False
                backoff = 0.05
            except (Unavailable, NoSuchSubscription) as exc:
                # Covers connection loss, timeouts, a server shutting down or restarting, an expired
                # subscription: reconnect with backoff and resume from next_seq.
                self._drop_connection()
                if isinstance(exc, NoSuchSubscription):
                    self.subscription_id = None
                    continue
                self.reconnects += 1
                logger.info("subscription to %r interrupted (%s); retrying in %.2fs", self.room, exc, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
        return self._buffer.popleft()

    async def _ensure_subscribed(self) -> _Wire:
        client = self._client
        if self._conn is None:
            self._conn = await client.connect()  # its own: a long poll would hold up calls behind it
        if self.subscription_id is None:
            asked = self.next_seq
            sub = await client.invoke(self._conn, "subscribe", (self.room, asked), None)
            if self._started and sub.next_seq < asked:
                self._buffer.append(Missed(count=0, next_seq=sub.next_seq, reset=True))
            self.subscription_id, self.next_seq, self._started = sub.subscription_id, sub.next_seq, True
        return self._conn

    async def _fill(self) -> None:
        client = self._client
        conn = await self._ensure_subscribed()
        # Saying where we are makes the poll safe to repeat: a reply lost with its connection is served again
        # when we poll the same subscription from a new one.
        args = (self.subscription_id, self._max_messages, self._wait_ms, self.next_seq, self._linger_ms or None)
        batch = await client.invoke(conn, "poll", args, client._poll_timeout(self._wait_ms + self._linger_ms))
        if batch.missed or batch.renumbered:
            resume = batch.messages[0].seq if batch.messages else batch.next_seq
            self._buffer.append(Missed(count=batch.missed, next_seq=resume, reset=bool(batch.renumbered)))
        self._buffer.extend(batch.messages)
        self.next_seq = batch.next_seq

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Unsubscribe (best effort, briefly) and close the stream's connection."""
        if self._closed:
            return
        self._closed = True
        self._client._streams.discard(self)
        conn, sub_id = self._conn, self.subscription_id
        # Not behind a long poll of ours in flight: the server answers it first, after up to wait_ms. The
        # server then expires the subscription after its TTL.
        if conn is not None and sub_id is not None and not self._in_call and not conn.lost:
            with contextlib.suppress(ChatError):
                await self._client.invoke(conn, "unsubscribe", (sub_id,), 1.0)
        self._drop_connection()
