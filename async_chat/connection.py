"""One client connection, as an `asyncio.Protocol`: bytes in, calls answered in order, replies out.

thriftpy2's aio server gives each connection a task that awaits a StreamReader field by field. Here the
event loop hands us bytes (`data_received`) and we answer every call that has arrived whole at once:
decoded from memory (codec.py), run eagerly (most calls never wait: `tasks.start_eagerly`), and the
reply written in one piece. No task exists for a connection, and one exists for a call only while it
waits (a long poll, a Redis round trip). Calls on one connection are answered one after another, in
the order they came, as every Thrift client expects.

Bounded at every step: a call may take at most --max-call-bytes (its claimed lengths are checked before
anything is read); while a call is answered, at most HIGH_WATER further bytes are held before reading
pauses (beyond a frame still arriving, which is read whole); while the peer does not read its replies
(the transport asks us to pause writing), no further call is answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TTransportException

from . import proxy_protocol, wire
from .codec import Call, Codec, Frame
from .delivery import Parked
from .session import SESSION, Session
from .tasks import start_eagerly
from .wire import CallTooLarge, TrailingBytes

if TYPE_CHECKING:
    from .server import ChatServer

logger = logging.getLogger("async_chat.server")

HIGH_WATER = 256 * 1024
"""Unread bytes held while a call is being answered; past this, the connection stops reading."""

WRITE_HIGH_WATER = 64 * 1024
"""Unsent bytes past which the transport asks us to pause writing (set so on every transport: uvloop's and
asyncio's defaults differ); no further call is answered until the peer has read below a quarter of it."""

DEFERRED_BYTES = 16 * 1024
"""Replies a connection holds for its Outbox's flush at most; a larger one is written at once."""

BUFFERED_CHUNK = 4096
"""A buffered call asking for more than this in one read names a length (a string's), not a read-ahead."""


class Outbox:
    """The replies of calls answered at once, written when the loop has read all it was handed, rather than
    each as it is made. On loopback a write costs the writer the reader's half of TCP as well, and wakes
    the reader: 54 % of our CPU per call at 64 connections. Written a loop iteration's worth at a time, the
    readers are mostly awake already, and a connection with several calls in one read gets one write. In
    six interleaved pairs (framed binary, 64 connections) that made 2-11 % more calls/s, 7.5 % on average. A
    reply waits for the rest of the iteration's reads at most.

    A parked poll's answer (the hub's, in chunks already) is written at once."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[Connection] = []

    def add(self, conn: Connection) -> None:
        """`conn` holds replies: flush it in the loop's next pass of callbacks (after this pass of reads)."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(conn)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for conn in pending:
            conn.flush()


class ConnectionState(enum.Enum):
    PROXY = "proxy"  # its PROXY header (--proxy-protocol) awaited: it has the idle timeout to come
    HANDSHAKE = "handshake"  # TLS being set up: it has the idle timeout to finish, like any wait for a call
    IDLE = "idle"  # waiting for the first byte of the next call: closed at once on shutdown
    READING = "reading"  # a call is arriving
    BUSY = "busy"  # a call is being answered: allowed to finish on shutdown


# The states as plain globals for the per-call path: an enum member's lookup costs about 55 ns, a global's 15,
# and a call took four.
_PROXY, _HANDSHAKE, _IDLE, _BUSY = ConnectionState.PROXY, ConnectionState.HANDSHAKE, ConnectionState.IDLE, \
    ConnectionState.BUSY


class Connection(asyncio.Protocol):
    """The server's side of one client connection."""

    def __init__(self, server: ChatServer) -> None:
        self._server = server
        self.state = ConnectionState.IDLE
        self.idle_since = time.monotonic()
        self.calls = 0
        self.peer = self.address = "?"
        self.dialect: wire.Dialect | None = None
        self._codec: Codec | None = None
        self._framed = False
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._context = contextvars.copy_context()
        self._task: asyncio.Task[bytes | Parked | None] | None = None
        """The call in flight, while it waits in a task; None when nothing does."""
        self._parked: Parked | None = None
        """The poll in flight, while it waits with no task (delivery.py)."""
        self._waiter: asyncio.Future[None] | None = None
        """Set while the streaming decoder waits for bytes."""
        self._budget = 0
        """Bytes the call being streamed may still take."""
        self.skips = wire.SkipBudget()
        """Values of unknown fields the call being streamed may still make the decoder skip."""
        self._processor = server.processor
        self._outbox = server.outbox
        self._call_limit = server.settings.max_call_bytes
        self._unsent_limit = server.settings.max_reply_bytes + WRITE_HIGH_WATER + DEFERRED_BYTES
        """No reply is larger than --max-reply-bytes, none is written while writing is paused, and what the
        Outbox flushes at once is at most DEFERRED_BYTES: only a peer that stopped reading can leave more
        than this unsent."""
        self._out: list[bytes] = []
        """Replies held for the Outbox's flush."""
        self._out_bytes = 0
        self._frame_size = 0
        """The length of a frame still arriving at the head of the buffer: held whole, HIGH_WATER aside."""
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False
        self._eof = False
        """The client half-closed: no more calls will come."""
        self._polling = False
        """The call in `_task` is a poll (it may wait for messages)."""
        self.admitted = False
        self.session: Session | None = None
        """Set once admitted: who the connection is and what it subscribed to."""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<Connection {self.peer} {self.dialect or '?'} [{self.state.name}, calls={self.calls}]>"

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peername = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.peer = _format_peer(peername)
        self.address = str(peername[0]) if isinstance(peername, tuple) and peername else self.peer
        if not self._server.admit(self):
            self._closing = True
            transport.close()
            return
        self.admitted = True
        self.session = self._server.new_session()
        self._context.run(SESSION.set, self.session)
        if self._server.settings.proxy_protocol == "on":
            self.state = ConnectionState.PROXY  # the balancer's header first (TLS is not combined with it)
            return
        tls = self._server.tls
        if tls is not None:
            self.state = ConnectionState.HANDSHAKE
            # Started now, not on the loop's next turn: by then the client's first TLS bytes would have been
            # handed to us (its first step gives the transport to TLS). In a context of its own: the calls it
            # goes on to answer enter the connection's.
            _done, task = start_eagerly(self._start_tls(transport, tls), contextvars.copy_context())
            if task is not None:
                self._server.track(task)

    async def _start_tls(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        """Upgrade to TLS; a handshake that fails (or is aborted) ends the connection like any other."""
        failure: Exception | None = None
        try:
            secured = await asyncio.get_running_loop().start_tls(
                raw, self, tls, server_side=True, ssl_handshake_timeout=self._server.settings.idle_timeout
            )
        except (TimeoutError, ConnectionAbortedError):  # how asyncio and uvloop say the handshake timed out
            self._server.episodes.log(
                logger, logging.INFO, "connection_stalled", "aborting %r: its TLS handshake did not finish in %gs"
                " (--idle-timeout)", self, self._server.settings.idle_timeout, peer=self.peer,
            )
            secured = None
        except (OSError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            logger.debug("closing %r: TLS handshake failed (%s)", self, exc)
            secured, failure = None, exc
        if secured is None or self._closing:
            raw.abort()
            self.connection_lost(failure)
            return
        self._transport = secured
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.state = ConnectionState.IDLE
        self.idle_since = time.monotonic()
        if self._buffer:
            self._advance()

    def data_received(self, data: bytes) -> None:
        if self.state is _PROXY:
            self._buffer += data
            self._read_proxy_header()
            return
        if self.state is _HANDSHAKE:
            # asyncio hands us the first call through TLS before start_tls has returned the transport to
            # answer it on: keep it until then.
            self._buffer += data
            return
        buffer = self._buffer
        # `_answering`, spelled out: this test runs on every call
        if not buffer and self._task is None and self._parked is None and self._waiter is None \
                and self._codec is not None and not self._writing_paused and not self._closing \
                and self._answer_whole(data):
            return
        buffer += data
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif not self._answering and not self._writing_paused:
            self._advance()
        if len(buffer) > HIGH_WATER + self._frame_size and self._waiter is None and not self._reading_paused \
                and not self._closing:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def _read_proxy_header(self) -> None:
        """Take the client's address from the PROXY header, once it is whole; then serve what follows."""
        try:
            parsed = proxy_protocol.parse(self._buffer)
        except proxy_protocol.ProxyHeaderError as exc:
            self._server.refused_total += 1
            self._server.episodes.log(logger, logging.WARNING, "connection_refused", "closing %r: %s", self, exc,
                                      peer=self.peer)
            self.close()
            return
        if parsed is None:
            return
        used, client = parsed
        del self._buffer[:used]
        if client is not None:
            host, port = client
            if not self._server.readdress(self, host):
                self.close()  # the client's own address is at its limit
                return
            self.peer = _format_peer((host, port))
        self.state = ConnectionState.IDLE
        self.idle_since = time.monotonic()
        if self._buffer:
            self._advance()

    def _answer_whole(self, data: bytes) -> bool:
        """The common case, without copying into the buffer: `data` is exactly one call, and nothing else
        is pending. False (nothing done) when it is not."""
        codec = self._codec
        assert codec is not None
        if self._framed:
            if int.from_bytes(data[:4], "big", signed=True) != len(data) - 4 or len(data) - 4 > self._call_limit:
                return False
            decoded = codec.decode(data[4:], whole=True)
            if decoded is None:
                return False
        else:
            decoded = codec.decode(data)
            if decoded is None or decoded[1] != len(data):
                return False
        self.state = _BUSY
        try:
            self._answer(decoded[0], codec)
        except Exception as exc:
            self._fail(exc)
        return True

    def eof_received(self) -> bool | None:
        """The client sends no more (a half-close): every call that came whole is still answered, and then
        the connection closes (`_advance`). A call still arriving never will: it ends the connection. So does
        a poll waiting for messages, which would hold its subscription until its wait ends, for a client
        that has most likely gone: it is cancelled, taking nothing (as when a connection drops)."""
        self._eof = True
        if self._parked is not None or (self._task is not None and self._polling):
            self.flush()
            return None  # closed: connection_lost cancels the poll
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)  # `read` finds the end, and the call fails as cut off
        elif not self._answering and not self._writing_paused:
            self._advance()
        if self._server.tls is not None:
            self.flush()  # asyncio's TLS cannot stay half open: it closes now, with what was answered so far
            return None
        return True  # open, to write the replies still owed: we close it

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._answering:
            self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed.done():
            return  # a failed handshake may report it twice: once from TLS, once from us
        self._closing = True  # a handshake under way fails by itself now, and says why (_start_tls)
        if self._task is not None:
            self._task.cancel()  # nobody is left to read its answer; the server awaits it
        self._unpark()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
        self._buffer = bytearray()
        self._out, self._out_bytes = [], 0
        if self.admitted:
            self._server.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- control, for the server ----------------------------------------------------------------------

    @property
    def _answering(self) -> bool:
        """A call is in flight: waiting in a task, or parked (a poll the hub answers by callback). The next
        call waits until it is answered: replies go out in the order their calls came."""
        return self._task is not None or self._parked is not None

    def _unpark(self) -> None:
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.cancel()  # the subscription may serve another poll

    @property
    def unsent(self) -> int:
        """Reply bytes made and not yet taken by the peer."""
        return self._out_bytes + (self._transport.get_write_buffer_size() if self._transport is not None else 0)

    def close(self) -> None:
        """Close after the replies already written are sent."""
        self.flush()
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Stop now: cancel the call in flight (the drain timeout passed) and drop the connection, with
        whatever it has not sent."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        self._unpark()
        self._out, self._out_bytes = [], 0
        if self._transport is not None:
            self._transport.abort()

    # -- reading calls --------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Answer the calls that have arrived, in order, until one must wait or none is left."""
        try:
            while not self._answering and not self._writing_paused and not self._closing:
                buffer = self._buffer
                if not buffer:
                    self.state = ConnectionState.IDLE
                    if not self._server.serving and self._server.may_close(self):
                        self.close()  # shutting down: an idle connection goes once it is owed nothing
                    break
                self.state = ConnectionState.READING
                codec = self._codec
                if codec is None:
                    head = bytes(buffer[: wire.HEAD_SIZE])
                    if wire.needs_more(head):
                        break
                    codec = self._choose(head)
                    if codec is None:
                        self.close()
                        return
                if self._framed:
                    call = self._next_frame(codec)
                    if call is None:
                        break
                else:
                    decoded = codec.decode(buffer)
                    if decoded is None:  # not whole yet, or not for the fast decoder: read it as it comes
                        self._budget = self._server.settings.max_call_bytes
                        self.skips = wire.SkipBudget()
                        if not self._start(self._stream_call(codec)):
                            break
                        continue
                    call, used = decoded
                    del buffer[:used]
                self.state = ConnectionState.BUSY
                if not self._answer(call, codec):
                    break
        except Exception as exc:
            self._fail(exc)
            return
        if self._eof and not self._answering and not self._writing_paused and not self._closing:
            self.close()  # the client half-closed, and every call it sent whole is answered
            return
        if self._reading_paused and not self._closing and (
            len(self._buffer) < HIGH_WATER // 2 or len(self._buffer) < self._frame_size
        ):
            self._resume_reading()  # drained, or the next frame is still arriving: it must be read whole

    def _choose(self, head: bytes) -> Codec | None:
        self.dialect = dialect = self._server.dialect_of(head, self)
        if dialect is None:
            return None
        self._framed = dialect.transport == "framed"
        self._codec = self._server.codec_for(dialect)
        return self._codec

    def _next_frame(self, codec: Codec) -> Call | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        size = int.from_bytes(buffer[:4], "big", signed=True)
        limit = self._server.settings.max_call_bytes
        if size < 0:
            raise CallTooLarge(f"a frame claimed a negative length ({size})")
        if size > limit:
            refused = CallTooLarge(f"a call of {size} bytes; the limit is {limit}")
            refused.call = codec.header(bytes(buffer[4:4 + 1024]))
            raise refused
        if len(buffer) < 4 + size:
            self._frame_size = 4 + size  # within the limit: read on until it is all here
            return None
        self._frame_size = 0
        frame = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        decoded = codec.decode(frame, whole=True)
        if decoded is not None:
            return decoded[0]
        source = Frame(frame)
        reading = codec.read_call(source)  # never waits: the frame is all here
        try:
            reading.send(None)
        except StopIteration as done:
            call: Call = done.value
        else:
            reading.close()
            raise RuntimeError("reading a whole frame waited")
        if source.left:
            # A frame is one call (Thrift's framed transport): a second one in it would go unanswered and
            # its caller wait forever. Say so and close, rather than guess where the next call starts.
            raise TrailingBytes(f"a frame held {source.left} byte(s) after its call; a frame carries one call")
        return call

    async def _stream_call(self, codec: Codec) -> bytes | Parked | None:
        call = await codec.read_call(self)
        self.state = ConnectionState.BUSY
        return await self._processor.answer(call, codec)

    async def read(self, size: int) -> bytes:
        """Exactly `size` bytes of the call being streamed, within its budget (the codec's `Source`).

        A length past the budget is refused before anything is read (a "2 GiB" string allocates nothing);
        a negative one would make the decoder read nothing, forever.
        """
        if size <= 0:
            if size == 0:
                return b""
            raise CallTooLarge(f"a call claimed a negative length ({size})")
        if size > self._budget:
            limit = self._server.settings.max_call_bytes
            if size > BUFFERED_CHUNK:
                raise CallTooLarge(f"a call claimed {size} bytes more; the limit is {limit}")
            raise CallTooLarge(f"a call ran past the limit of {limit} bytes")
        buffer = self._buffer
        while len(buffer) < size:
            if self._closing or self._eof:
                raise TTransportException(type=TTransportException.END_OF_FILE, message="connection closed")
            if self._reading_paused:
                self._resume_reading()
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            await waiter
            buffer = self._buffer
        chunk = bytes(buffer[:size])
        del buffer[:size]
        self._budget -= size
        return chunk

    # -- answering ------------------------------------------------------------------------------------

    def _answer(self, call: Call, codec: Codec) -> bool:
        """Answer a decoded call: at once when its method has a synchronous form, else as `_start` says."""
        processor = self._processor
        reply = processor.answer_now(call, codec, self._context)
        if reply is not None:
            return self._finished(reply)
        self._polling = call.api == "poll"
        return self._start(processor.answer(call, codec))

    def _start(self, answering: Coroutine[Any, Any, bytes | Parked | None]) -> bool:
        """Run a call to its reply; True if it finished now, False if it waits (in a task of its own, or
        parked: a poll with no task, answered by callback)."""
        task: asyncio.Task[bytes | Parked | None] | None
        if self._server.eager:
            reply, task = start_eagerly(answering, self._context)
            if task is None:
                return self._finished(reply)
        else:
            task = asyncio.get_running_loop().create_task(answering, context=self._context)
        self._task = task
        self._server.track(task)
        task.add_done_callback(self._call_done)
        return False

    def _call_done(self, task: asyncio.Task[bytes | Parked | None]) -> None:
        if task is not self._task:
            return
        self._task = None
        if task.cancelled():
            self.close()
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc)
            return
        if self._finished(task.result()):
            self._advance()

    def _finished(self, reply: bytes | Parked | None) -> bool:
        """A call's outcome: its reply written (True), or a parked poll whose reply comes later (False)."""
        if not isinstance(reply, Parked):
            self._replied(reply)
            return True
        if self._closing or self._eof:
            reply.cancel()  # nobody is left to read it, or it would wait on a half-closed connection
        else:
            self._parked = reply
            reply.deliver = self._answered
        return False

    def _answered(self, reply: bytes) -> None:
        """A parked poll's reply (the hub's pass, or its wait's end)."""
        self._parked = None
        self._replied(reply, now=True)
        self._advance()

    def _replied(self, reply: bytes | None, now: bool = False) -> None:
        """A call answered: its reply held for the Outbox's flush, or written `now`."""
        self.calls += 1
        self.idle_since = time.monotonic()
        self.state = _IDLE
        if reply is not None and not self._closing:
            self._send(reply, now)
            if self._closing:
                return  # aborted: its peer stopped reading
        if not self._server.serving and self._server.may_close(self):
            # Shutting down: the call in flight was allowed to finish. A subscriber still owed messages
            # may poll on until it has them all (publishes are refused by now, so that ends).
            self.close()

    def _send(self, reply: bytes, now: bool = False) -> None:
        """Frame `reply` if the connection is framed, and hold it for the Outbox, or write it `now` (and
        whatever is held before it)."""
        data = len(reply).to_bytes(4, "big") + reply if self._framed else reply
        if not now and self._out_bytes + len(data) <= DEFERRED_BYTES:
            if not self._out:
                self._outbox.add(self)
            self._out.append(data)
            self._out_bytes += len(data)
            return
        self.flush()
        self._write(data)

    def flush(self) -> None:
        """Write the replies held for the Outbox (in one piece)."""
        out = self._out
        if out:
            self._out = []
            self._out_bytes = 0
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self._unsent_limit:
            # Only a peer that stopped reading gets here (see _unsent_limit). Drop it now; a graceful close
            # would wait for it forever.
            self._server.episodes.log(
                logger, logging.INFO, "connection_stalled", "aborting %r: its peer left %d reply bytes unread"
                " (--max-reply-bytes plus 80 KiB at most)", self, transport.get_write_buffer_size(), peer=self.peer,
            )
            self.abort()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        assert self._transport is not None
        self._transport.resume_reading()

    def _fail(self, exc: BaseException) -> None:
        """Close the connection over a call that cannot be read or answered, saying why."""
        if isinstance(exc, (TTransportException, ConnectionError, asyncio.CancelledError)) or self._closing:
            pass  # the peer went away, or we are closing it
        elif isinstance(exc, CallTooLarge):
            self._server.oversized_total += 1
            self._server.episodes.log(
                logger, logging.WARNING, "call_too_large", "closing %r: %s (--max-call-bytes)", self, exc,
                peer=self.peer,
            )
            if exc.call is not None and self._codec is not None and self._transport is not None:
                api, seqid = exc.call  # its client is told why, in the one way every Thrift client reads
                refusal = TApplicationException(TApplicationException.UNKNOWN, f"TOO_LARGE: {exc} (--max-call-bytes)")
                self._send(self._codec.exception(api, seqid, refusal))
        else:
            self._server.unreadable_total += 1
            self._server.episodes.log(
                logger, logging.WARNING, "connection_unreadable", "closing %r: unreadable request (%s: %s)", self,
                type(exc).__name__, exc, peer=self.peer,
            )
        self.close()


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)
