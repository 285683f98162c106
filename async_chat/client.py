"""ChatClient: a pooled, task-safe asyncio client, and `subscribe()` as a reconnecting `async for` stream.

thriftpy2's aio client allows one call in flight per connection (every request has seqid 0, there is no
lock), desynchronises after a timeout (the late reply is read by the next call), never reconnects, and
bounds reads by its connect timeout. So each connection here serves one call at a time out of a bounded
pool; a connection whose call timed out, was cancelled or failed on the wire is closed, never reused; and
timeouts are ours (`asyncio.timeout` around the whole call), with thriftpy2's own switched off.

Sends are made retry-safe: a message without `client_msg_id` gets one, so a send retried after a lost
connection is stored once by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_module
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from anyio.abc import AsyncResource
from thriftpy2.contrib.aio.client import TAsyncClient
from thriftpy2.contrib.aio.socket import StreamHandler
from thriftpy2.thrift import TApplicationException, TException
from thriftpy2.transport import TTransportException

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

_WIRE_ERRORS = (TTransportException, OSError, asyncio.IncompleteReadError, EOFError)


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


class _Conn:
    """One connection and the thriftpy2 client on it; used by one call at a time."""

    __slots__ = ("client", "dedicated", "last_used", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: Any) -> None:
        self.reader, self.writer, self.client = reader, writer, client
        self.last_used = time.monotonic()
        self.dedicated = False  # owned by one MessageStream, never pooled

    def usable(self, max_idle: float) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.last_used < max_idle
        )

    def close(self) -> None:
        self.writer.close()


class ChatClient(AsyncResource):
    """Talks to an async_chat server (or any server of the classic contract, for sendMessage).

    `pool_size` connections at most, each carrying one call at a time: any number of tasks may share a
    client. Every call has a timeout (`timeout` seconds unless the call says otherwise).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9090,
        *,
        transport: str = "buffered",
        protocol: str = "binary",
        pool_size: int = 8,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_idle: float = 60.0,
        retries: int = 1,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        token: str | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.dialect = Dialect(transport, protocol)  # raises ValueError for a name it does not know
        self.host, self.port = host, port
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
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: deque[_Conn] = deque()
        self._streams: set[MessageStream] = set()
        self._closed = False

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else "OPEN"
        return f"<ChatClient [{state}] {self.host}:{self.port} idle={len(self._idle)} streams={len(self._streams)}>"

    async def aclose(self) -> None:
        """Close every pooled connection and every open `subscribe()` stream."""
        self._closed = True
        for stream in list(self._streams):
            await stream.aclose()
        while self._idle:
            self._idle.popleft().close()

    # -- the service --------------------------------------------------------------------------

    async def sendMessage(self, message: Any, *, timeout: float | None = None) -> None:  # the IDL's name
        """The classic call. Retried once on a lost connection (deduplicated by client_msg_id)."""
        await self._send("sendMessage", message, timeout)

    async def publish(self, message: Any, *, timeout: float | None = None) -> int:
        """Publish and return the message's seq in its room."""
        seq: int = await self._send("publish", message, timeout)
        return seq

    async def history(
        self, room: str = DEFAULT_ROOM, from_seq: int = 0, limit: int = 100, *, timeout: float | None = None
    ) -> list[Any]:
        messages: list[Any] = await self.call("history", room, from_seq, limit, timeout=timeout)
        return messages

    async def create_subscription(self, room: str = DEFAULT_ROOM, from_seq: int = 0) -> Any:
        """The raw `subscribe` call: returns the IDL's Subscription. Most apps want `subscribe()`."""
        return await self.call("subscribe", room, from_seq)

    async def poll(self, subscription_id: str, max_messages: int = 100, wait_ms: int = 0, from_seq: int = 0) -> Any:
        """The raw `poll` call: returns the IDL's Batch. Pass `from_seq` (the last Batch's next_seq) to make
        a retried poll safe: a reply lost on the way is served again."""
        timeout = self._poll_timeout(wait_ms)
        return await self.call("poll", subscription_id, max_messages, wait_ms, from_seq, timeout=timeout)

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
    ) -> MessageStream:
        """Messages of `room` as an async iterator, on a connection of its own.

        Yields `Message`s in seq order, and a `Missed` before any loss. It long-polls, reconnects after a
        dropped connection, and resumes from the last seq it yielded (replayed from the room's history).
        """
        self._check_open()
        return MessageStream(self, room or DEFAULT_ROOM, from_seq, max_messages, wait_ms)

    # -- calls ------------------------------------------------------------------------------------

    async def call(self, api: str, *args: Any, timeout: float | None = None) -> Any:
        """Make one call on a pooled connection; errors come back as `ChatError` kinds."""
        self._check_open()
        async with self._slots:
            conn = self._take_idle()
            if conn is None:
                conn = await self.connect()
            return await self.invoke(conn, api, args, timeout)

    async def invoke(self, conn: _Conn, api: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        """Call `api` on `conn`; then pool it if it is still in step, else close it. Maps errors."""
        in_step = False
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                result = await getattr(conn.client, api)(*args)
            in_step = True
            return result
        except TimeoutError:
            raise CallTimeout(f"{api} got no reply from {self.host}:{self.port} in time") from None
        except WireChatError as exc:
            in_step = True
            raise ChatError.from_code(exc.code, exc.reason or "") from None
        except TApplicationException as exc:
            in_step = True
            raise _refusal(exc) from None
        except (*_WIRE_ERRORS, TException) as exc:
            raise ConnectionLost(f"{api}: connection to {self.host}:{self.port} lost ({exc})") from None
        finally:
            if in_step:
                conn.last_used = time.monotonic()
                self._release(conn)
            else:
                conn.close()

    async def connect(self) -> _Conn:
        """Open a new connection (not pooled until released)."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname if self.ssl else None
                )
        except (TimeoutError, OSError) as exc:  # ssl.SSLError (a failed handshake, a bad certificate) is one
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise Unavailable(f"cannot connect to {self.host}:{self.port}: {reason}") from None
        protocol = self.dialect.protocol_on(StreamHandler(reader, writer))
        conn = _Conn(reader, writer, TAsyncClient(ChatService, protocol))
        if self.token is not None:  # every connection proves who it is before its first call
            conn.dedicated = True  # keeps invoke from pooling it midway
            try:
                self.identity = await self.invoke(conn, "authenticate", (self.token,), None)
            except BaseException:
                conn.close()  # refused (or lost): this connection is of no use
                raise
            conn.dedicated = False
        return conn

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the likeliest to be alive
            if conn.usable(self.max_idle):
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        if conn.dedicated:
            return
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    async def _send(self, api: str, message: Any, timeout: float | None) -> Any:
        if message is None:
            raise ValueError("message is required")
        outgoing = Message(
            sender=message.sender,
            content=message.content,
            room=message.room,
            client_msg_id=message.client_msg_id or uuid.uuid4().hex,
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

    def __init__(self, client: ChatClient, room: str, from_seq: int, max_messages: int, wait_ms: int) -> None:
        self._client = client
        self.room = room
        self.next_seq = from_seq
        self.subscription_id: str | None = None
        self._started = False
        self._max_messages = max_messages
        self._wait_ms = wait_ms
        self._buffer: deque[Any] = deque()
        self._conn: _Conn | None = None
        self._closed = False
        self._in_call = False
        self.reconnects = 0
        client._streams.add(self)

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

    async def _ensure_subscribed(self) -> _Conn:
        client = self._client
        if self._conn is None:
            self._conn = await client.connect()
            self._conn.dedicated = True
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
        args = (self.subscription_id, self._max_messages, self._wait_ms, self.next_seq)
        batch = await client.invoke(conn, "poll", args, client._poll_timeout(self._wait_ms))
        if batch.missed or batch.renumbered:
            resume = batch.messages[0].seq if batch.messages else batch.next_seq
            self._buffer.append(Missed(count=batch.missed, next_seq=resume, reset=bool(batch.renumbered)))
        self._buffer.extend(batch.messages)
        self.next_seq = batch.next_seq

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        """Unsubscribe (best effort, briefly) and close the stream's connection."""
        if self._closed:
            return
        self._closed = True
        self._client._streams.discard(self)
        conn, sub_id = self._conn, self.subscription_id
        # Never on a connection another task is polling on: its bytes would interleave with ours. The
        # server then expires the subscription after its TTL.
        if conn is not None and sub_id is not None and not self._in_call and not conn.writer.is_closing():
            with contextlib.suppress(ChatError):
                await self._client.invoke(conn, "unsubscribe", (sub_id,), 1.0)
        self._drop_connection()
