"""Calls from bytes and replies to bytes, per dialect: thriftpy2's Cython codec on the hot path.

thriftpy2's aio server decodes a call value by value, awaiting its transport for each one: a void
`sendMessage` costs tens of microseconds of Python before the handler runs. Here a call that has
arrived whole is decoded in one go from memory, and every reply is encoded to bytes in one piece, for one
write. A binary call is decoded by our compiled decoder (_binary_call.pyx) when the package was built with
it; what it does not take (and every call, without it) goes through thriftpy2's Cython codec (`cybin`).

cybin was written for trusted transports, and three of its behaviours are unsafe on bytes from a socket.
Each is handled here rather than patched in thriftpy2:
- From a memory buffer, a string that claims more bytes than there are is copied out at its claimed
  length anyway, from uninitialised memory: a 2 GiB claim in a 20-byte call makes a 2 GiB string. We
  decode through cybin's buffered transport over the bytes instead, which fails at their end
  (`_Bytes` hands them out, then nothing).
- Skipping a list, set or map of a zero-width type (STOP, VOID, an unknown type) loops up to 2**31 times
  without reading a byte: seconds of a blocked loop per 11 bytes sent. Only a container can start such a
  loop, and no call of the contract has one in its arguments, so a call that holds one is never given to
  cybin. Bytes without a 0x0d..0x0f (the container type bytes) anywhere hold none; bytes with one (a
  string of 13 to 15 bytes, a seqid, an i64 timestamp) are walked field by field (`call_length`), which
  also tells where the call ends.
- A negative length raises SystemError.
A buffered call has no length of its own: when the bytes hold more than one call, the walk says where the
first one ends. Compact calls have a fast decoder of their own (compact.py). Whatever the fast decode
does not take — a call not yet complete, one it refuses (a container, a call over the window) — goes to
the streaming decoder: thriftpy2's aio
protocol over the connection's bytes (`read_call`), which reads exactly one call, each length checked
against the call's byte budget before anything is read, and with the zero-width skips refused (wire.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.protocol.cybin import TCyBinaryProtocol  # type: ignore[attr-defined]  # a Cython module
from thriftpy2.thrift import TApplicationException, TMessageType, TType
from thriftpy2.transport.buffered.cybuffered import TCyBufferedTransport  # type: ignore[import-not-found]
from thriftpy2.transport.memory.cymemory import TCyMemoryBuffer  # type: ignore[import-not-found]

from . import build, compact, wire
from .delivery import Delivery

DecodeCall = Callable[[bytes, dict[str, Any]], tuple[str, int, Any, int] | None]

COMPILED: DecodeCall | None
try:
    from ._binary_call import decode_call as COMPILED
except ImportError:  # not built (no Cython or no C compiler at install): cybin, through Python
    COMPILED = None
if build.PURE:
    COMPILED = None
"""The compiled binary decoder (_binary_call.pyx), if it is built and not turned off by setting
ASYNC_CHAT_PURE_PYTHON (build.py); what it does not take, the pure-Python path does."""
DECODER = "compiled" if COMPILED is not None else "python"
"""Which decoder binary calls get, as the server's start-up line and the benchmark results name it."""

FAST_WINDOW = 16 * 1024
"""At most this much of a connection's unread bytes is copied for a fast decode. A larger call, or one
still arriving, is read by the streaming decoder, linearly, however it trickles in."""

_CONTAINER_TYPES = b"\x0d\x0e\x0f"
"""The type bytes of map, set and list."""


class Source(Protocol):
    """Where the streaming decoder reads: exactly `size` bytes, waiting for them if they have not arrived;
    `skips` bounds what the call may make it skip (wire.py)."""

    skips: wire.SkipBudget

    async def read(self, size: int) -> bytes: ...


class Call:
    """One decoded call; `args` is None for a method the service does not have.

    A plain class, not a dataclass: compiled (setup.py), its __init__ is C, where a dataclass's stays the
    Python one `dataclasses` writes, a Python frame on every call."""

    __slots__ = ("api", "args", "seqid")

    def __init__(self, api: str, seqid: int, args: Any) -> None:
        self.api = api
        self.seqid = seqid
        self.args = args

    def __repr__(self) -> str:
        return f"Call({self.api!r}, {self.seqid}, {self.args!r})"


@dataclass(slots=True)
class Reply:
    """One decoded reply: `body` is the method's `_result` struct, or a TApplicationException."""

    api: str
    kind: int
    seqid: int
    body: Any


class Codec:
    """One protocol's decoder and encoder, shared by every connection that speaks it.

    The event loop runs one callback at a time and nothing here awaits, so one set of buffers serves all.
    """

    def __init__(
        self, service: Any, protocol: str, strict: bool = True, max_call_bytes: int = FAST_WINDOW, compiled: bool = True
    ) -> None:
        """`compiled`: decode binary calls with the compiled decoder when it is built (`COMPILED`)."""
        self.service = service
        self._window = min(FAST_WINDOW, max_call_bytes)
        self.protocol = protocol
        self.strict = strict
        self._methods = frozenset(service.thrift_services)
        self._args = {api: getattr(service, api + "_args") for api in self._methods}
        self._fast = protocol == "binary"
        self._compiled = COMPILED if self._fast and compiled else None
        self._void: dict[str, tuple[bytes, bytes]] = {}
        self._heads: dict[str, bytes] = {}
        self._last_batch: tuple[tuple[Any, ...], bytes] = ((), b"")
        """The last poll reply's body, with what it was made of (`batch_reply`)."""
        self._source = _Bytes()
        self._in_prot = TCyBinaryProtocol(TCyBufferedTransport(self._source), strict_read=False)
        self._out = TCyMemoryBuffer()
        self._out_prot: Any = (
            TCyBinaryProtocol(self._out, strict_write=strict) if protocol == "binary" else TCompactProtocol(self._out)
        )

    def __repr__(self) -> str:
        return f"<Codec {self.protocol}{'' if self.strict else ' (non-strict)'}>"

    # -- decoding -------------------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray, whole: bool = False) -> tuple[Call, int] | None:
        """The call `data` begins with and how many bytes it took; None when the streaming decoder must
        read it (not all there, not alone, not for cybin, or not valid: it will say which). `whole`: `data`
        is a frame, within the call-size limit, and holds one call, so no window or probe applies."""
        size = len(data)
        if size > self._window and not whole:
            return None
        compiled = self._compiled
        if compiled is not None:  # before the protocol's test: the busiest path (only binary has one)
            decoded = compiled(data if type(data) is bytes else bytes(data), self._args)
            if decoded is not None:
                api, seqid, args, used = decoded
                return (Call(api, seqid, args), used) if not whole or used == size else None
        if not self._fast:
            decoded = compact.decode_call(data if type(data) is bytes else bytes(data), self._args)
            if decoded is None or (whole and decoded[3] != size):
                return None  # not all there, not for the fast decoder, or a frame with more than its call
            api, seqid, args, used = decoded
            return Call(api, seqid, args), used
        if len(data.translate(None, _CONTAINER_TYPES)) != size:
            end = call_length(data)
            if end is None or (whole and end != size):
                return None
            data, size, whole = data[:end], end, True
        source, prot = self._source, self._in_prot
        source.load(data if type(data) is bytes else bytes(data))
        pipelined = False
        try:
            api, _kind, seqid = prot.read_message_begin()
            args_type = self._args.get(api)
            if args_type is None:
                prot.skip(TType.STRUCT)
                args = None
            else:
                args = prot.read_struct(args_type())
            source.probe()
            prot.trans.read(1)  # from what cybin read ahead, if anything is left there; else the probe
            if not source.probed:
                pipelined = True
        except Exception:
            prot.trans = TCyBufferedTransport(source)  # a fresh one: this one may have grown to a claimed size
            return None
        finally:
            source.load(b"")
            prot.trans.clean()  # nothing read ahead (the probe, a second call) stays for the next decode
        if pipelined:  # more than one call: the first is decoded; the walk says where it ends
            if whole:
                return None  # a frame holds one call: the streaming decoder reads it and says what is left
            end = call_length(data)
            if end is None:
                return None
            size = end
        if type(api) is not str:
            return None  # a name that is not UTF-8: the streaming decoder says so
        return Call(api, seqid, args), size

    def reply_from(self, data: bytes) -> Reply:
        """The reply `data` holds, whole (binary; a client's side): its method's `_result` struct, or the
        TApplicationException it carries. Raises ValueError for bytes that are not such a reply."""
        if len(data.translate(None, _CONTAINER_TYPES)) != len(data) and message_length(data) != len(data):
            raise ValueError("the reply is not one whole message")  # and cybin never sees a zero-width list
        source, prot = self._source, self._in_prot
        source.load(data)
        try:
            api, kind, seqid = prot.read_message_begin()
            body = self._reply_body(api, kind)
            prot.read_struct(body)
        except Exception as exc:
            prot.trans = TCyBufferedTransport(source)
            raise ValueError(f"an unreadable reply ({exc})") from None
        finally:
            source.load(b"")
            prot.trans.clean()
        return Reply(api, kind, seqid, body)

    async def read_reply(self, source: Source) -> Reply:
        """Read one reply from `source`, value by value: compact's way (and any reply not whole)."""
        prot = self._streaming(source)
        api, kind, seqid = await prot.read_message_begin()
        if isinstance(api, bytes):
            api = api.decode("utf-8")
        body = self._reply_body(api, kind)
        await prot.read_struct(body)
        return Reply(api, kind, seqid, body)

    def _streaming(self, source: Any) -> Any:
        """The aio protocol that reads this codec's protocol value by value from `source` (bounded: wire.py)."""
        if self.protocol == "binary":
            return wire.TAsyncBinaryProtocol(source, strict_read=False)
        return wire.SafeCompactProtocol(source)

    def _reply_body(self, api: Any, kind: int) -> Any:
        if kind == TMessageType.EXCEPTION:
            return TApplicationException()
        if kind != TMessageType.REPLY or api not in self._methods:
            raise ValueError(f"not a reply of this service: {api!r} (message type {kind})")
        return getattr(self.service, api + "_result")()

    async def read_call(self, source: Source) -> Call:
        """Read one call from `source`, value by value (the aio protocol's way): the safe, slow path."""
        prot = self._streaming(source)
        api, _kind, seqid = await prot.read_message_begin()
        if isinstance(api, bytes):  # a non-strict call's name: thriftpy2 leaves it undecoded
            api = api.decode("utf-8")
        try:
            args_type = self._args.get(api)
            if args_type is None:
                await prot.skip(TType.STRUCT)
                return Call(api, seqid, None)
            args = args_type()
            await prot.read_struct(args)
        except wire.CallTooLarge as exc:
            exc.call = (api, seqid)  # the header was read: the call can be answered before its connection goes
            raise
        return Call(api, seqid, args)

    def header(self, data: bytes) -> tuple[str, int] | None:
        """The (method, seqid) a call's first bytes carry, if they hold its header; else None."""
        prot = self._streaming(Frame(data))
        reading = prot.read_message_begin()
        try:
            reading.send(None)
        except StopIteration as done:
            api, _kind, seqid = done.value
            if isinstance(api, bytes):
                api = api.decode("utf-8", "replace")
            return (api, seqid) if isinstance(api, str) and isinstance(seqid, int) else None
        except Exception:  # not a header, or not all of it
            return None
        reading.close()
        return None

    # -- encoding -------------------------------------------------------------------------------------

    def reply(self, api: str, seqid: int, result: Any) -> bytes:
        """A REPLY message carrying `result` (the method's `_result` struct)."""
        return self._encode(api, TMessageType.REPLY, seqid, result)

    def void_reply(self, api: str, seqid: int) -> bytes:
        """The REPLY of a void method that succeeded: the same bytes every time but for the seqid, so they
        are encoded once per method (binary), or spliced around it (compact writes it as a varint)."""
        if self.protocol != "binary":
            return self._reply_head(api, seqid) + b"\x00"  # the empty result struct
        parts = self._void.get(api)
        if parts is None:
            encoded = self.reply(api, 0, getattr(self.service, api + "_result")())
            parts = self._void[api] = (encoded[:-5], encoded[-1:])  # ... seqid (4 bytes), the struct's STOP
        return parts[0] + seqid.to_bytes(4, "big", signed=True) + parts[1]

    def batch_reply(self, api: str, seqid: int, delivery: Delivery) -> bytes:
        """The REPLY of a poll: what encoding `delivery.batch()` would give, made of each message's bytes as
        first encoded for any subscriber (kept on its entry) between a header and a trailer."""
        entries = delivery.entries
        # The subscribers a pass answers mostly get the same messages and figures: the same body. Entries
        # compare by identity, and a batch is a run of seqs: the same first and last, the same batch.
        key = (entries[0] if entries else None, entries[-1] if entries else None, len(entries), delivery.next_seq,
               delivery.missed, delivery.renumbered)
        if key == self._last_batch[0]:
            body = self._last_batch[1]
        else:
            body = self._batch_body(delivery)
            self._last_batch = (key, body)
        if self.protocol == "binary":
            return self._reply_head(api) + seqid.to_bytes(4, "big", signed=True) + body
        return self._reply_head(api, seqid) + body

    def _batch_body(self, delivery: Delivery) -> bytes:
        """A poll reply past its header."""
        entries, count = delivery.entries, len(delivery.entries)
        binary = self.protocol == "binary"
        parts: list[bytes] = []
        if binary:
            parts.append(b"\x0c\x00\x00\x0f\x00\x01\x0c" + count.to_bytes(4, "big"))  # success: Batch, messages
        else:  # success (field 0: a long field header), messages (field 1), a list of structs
            parts.append(b"\x0c\x00\x19" + (bytes((count << 4 | 0x0C,)) if count <= 14 else b"\xfc" + _varint(count)))
        for entry in entries:
            data = entry.binary if binary else entry.compact
            if data is None:
                data = self._struct(entry.message)
                if binary:
                    entry.binary = data
                else:
                    entry.compact = data
            parts.append(data)
        if binary:
            parts.append(
                b"\x0a\x00\x02" + delivery.next_seq.to_bytes(8, "big", signed=True)
                + b"\x0a\x00\x03" + delivery.missed.to_bytes(8, "big", signed=True)
                + (b"\x02\x00\x04\x01\x00\x00" if delivery.renumbered else b"\x02\x00\x04\x00\x00\x00")
            )
        else:
            parts.append(
                b"\x16" + _varint(_zigzag(delivery.next_seq)) + b"\x16" + _varint(_zigzag(delivery.missed))
                + (b"\x11\x00\x00" if delivery.renumbered else b"\x12\x00\x00")
            )
        return b"".join(parts)

    def _reply_head(self, api: str, seqid: int = 0) -> bytes:
        """A REPLY's header up to its seqid (binary), or whole (compact, whose seqid comes before the name)."""
        head = self._heads.get(api)
        if head is None:
            name = api.encode("utf-8")
            if self.protocol != "binary":
                head = _varint(len(name)) + name  # the name, after the seqid
            else:
                size = len(name).to_bytes(4, "big")
                head = b"\x80\x01\x00\x02" + size + name if self.strict else size + name + b"\x02"
            self._heads[api] = head
        if self.protocol != "binary":
            return b"\x82\x41" + _varint(seqid & 0xFFFFFFFF) + head
        return head

    def _struct(self, value: Any) -> bytes:
        """One struct's bytes, alone."""
        return self._encode(None, 0, 0, value)

    def request(self, api: str, seqid: int, args: Any) -> bytes:
        """A CALL message carrying `args` (the method's `_args` struct): what a client sends."""
        return self._encode(api, TMessageType.CALL, seqid, args)

    def exception(self, api: str, seqid: int, error: TApplicationException) -> bytes:
        """An EXCEPTION message: what Thrift clients raise as TApplicationException."""
        return self._encode(api, TMessageType.EXCEPTION, seqid, error)

    def _encode(self, api: str | None, kind: int, seqid: int, body: Any) -> bytes:
        """A message carrying `body`; `body`'s bytes alone when `api` is None."""
        out, prot = self._out, self._out_prot
        try:
            if api is not None:
                prot.write_message_begin(api, kind, seqid)
            prot.write_struct(body)
            data: bytes = out.getvalue()
        except BaseException:
            if self.protocol != "binary":  # the compact writer keeps field-id state: start it afresh
                self._out_prot = TCompactProtocol(out)
            raise
        finally:
            out.clean()
        return data


class Frame:
    """A whole frame as a `Source`: reading past its end is an error, never a wait."""

    __slots__ = ("_data", "_pos", "skips")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.skips = wire.SkipBudget()

    @property
    def left(self) -> int:
        """Bytes of the frame not read."""
        return len(self._data) - self._pos

    async def read(self, size: int) -> bytes:
        if size < 0:
            raise wire.CallTooLarge(f"a call claimed a negative length ({size})")
        end = self._pos + size
        if end > len(self._data):
            raise wire.TruncatedCall(f"the frame ended inside its call ({len(self._data)} bytes)")
        chunk = self._data[self._pos:end]
        self._pos = end
        return chunk


class _Bytes:
    """The bytes of one decode, as the transport under cybin's buffered transport: handed out as asked,
    then nothing (cybin's end of file). `probe` then offers one more byte, to learn whether cybin had
    read ahead past the call: if it asks for it, it had not."""

    __slots__ = ("_data", "_pos", "probed")

    def __init__(self) -> None:
        self._data = b""
        self._pos = 0
        self.probed = True

    def load(self, data: bytes) -> None:
        self._data, self._pos, self.probed = data, 0, True

    def probe(self) -> None:
        self._data, self._pos, self.probed = b"\x00", 0, False

    def read(self, size: int) -> bytes:
        data, pos = self._data, self._pos
        if not self.probed:
            self.probed = True
        if pos == 0 and size >= len(data):
            self._pos = len(data)
            return data
        self._pos = pos + size
        return data[pos : pos + size]


def _varint(n: int) -> bytes:
    """An unsigned varint (compact protocol)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> int:
    """An i64 as compact writes it before its varint."""
    return (n << 1) ^ (n >> 63)


_WIDTHS = {TType.BOOL: 1, TType.BYTE: 1, TType.I16: 2, TType.I32: 4, TType.I64: 8, TType.DOUBLE: 8}


def _body_start(data: bytes | bytearray) -> int | None:
    """Where the struct of the binary message `data` begins, past its header; None if the header is not all
    there. ValueError for a negative name length."""
    if len(data) < 4:
        return None
    head = int.from_bytes(data[0:4], "big", signed=True)
    if head < 0:  # strict: version and type, name length, name, seqid
        if len(data) < 8:
            return None
        name = int.from_bytes(data[4:8], "big", signed=True)
        pos = 8 + name + 4
    else:  # non-strict: name length, name, type, seqid
        name = head
        pos = 4 + name + 1 + 4
    if name < 0:
        raise ValueError("a negative name length")
    return pos


def call_length(data: bytes | bytearray) -> int | None:
    """How many bytes the binary call `data` begins with takes, if it is all there and holds no list,
    set or map; else None (the streaming decoder's to read). A walk over the field headers, never a
    decode: each step moves forward, so it ends within len(data) steps whatever the bytes say."""
    end = len(data)
    try:
        pos = _body_start(data)
    except ValueError:
        return None
    if pos is None:
        return None
    depth = 1  # the arguments' struct
    widths, stop, string, struct = _WIDTHS, TType.STOP, TType.STRING, TType.STRUCT
    while pos < end:
        kind = data[pos]
        if kind == stop:
            pos += 1
            depth -= 1
            if depth == 0:
                return pos
            continue
        pos += 3  # the type and the field id
        width = widths.get(kind)
        if width is not None:
            pos += width
        elif kind == string:
            if pos + 4 > end:
                return None
            length = int.from_bytes(data[pos : pos + 4], "big", signed=True)
            if length < 0:
                return None
            pos += 4 + length
        elif kind == struct:
            depth += 1
        else:
            return None  # a container, or no type at all
    return None


_ELEMENT_TYPES = frozenset(
    (TType.BOOL, TType.BYTE, TType.DOUBLE, TType.I16, TType.I32, TType.I64, TType.STRING, TType.STRUCT,
     TType.MAP, TType.SET, TType.LIST)
)
"""Types a value may have in the binary protocol: each takes at least one byte."""


def message_length(data: bytes | bytearray) -> int | None:
    """How many bytes the binary message `data` begins with takes, lists, sets and maps included; None if
    it is not all there. A walk over the headers, never a decode. Raises ValueError for what no Thrift
    peer writes: a negative length or count, a value of no type (which cybin would "skip" 2**31 times
    without reading). Every step moves forward or closes a struct it opened, so it ends within about
    len(data) steps, and a list of fixed-width values is stepped over at once."""
    end = len(data)
    pos = _body_start(data)
    if pos is None:
        return None
    widths, stop, types = _WIDTHS, TType.STOP, _ELEMENT_TYPES
    # Each frame: None for a struct (read fields until STOP), else [value types, values left].
    frames: list[list[Any] | None] = [None]
    while frames:
        if pos > end:
            return None
        frame = frames[-1]
        if frame is None:
            if pos >= end:
                return None
            kind = data[pos]
            if kind == stop:
                pos += 1
                frames.pop()
                continue
            pos += 3
        else:
            if frame[1] == 0:
                frames.pop()
                continue
            frame[1] -= 1
            kinds = frame[0]
            kind = kinds[frame[1] % len(kinds)]
        if kind not in types:
            raise ValueError(f"a value of no type ({kind})")
        width = widths.get(kind)
        if width is not None:
            pos += width
        elif kind == TType.STRING:
            if pos + 4 > end:
                return None
            length = int.from_bytes(data[pos : pos + 4], "big", signed=True)
            if length < 0:
                raise ValueError("a negative string length")
            pos += 4 + length
        elif kind == TType.STRUCT:
            frames.append(None)
        else:
            header = 6 if kind == TType.MAP else 5
            if pos + header > end:
                return None
            kinds = tuple(data[pos : pos + header - 4])
            count = int.from_bytes(data[pos + header - 4 : pos + header], "big", signed=True)
            pos += header
            if count < 0:
                raise ValueError("a negative count")
            if any(k not in types for k in kinds):
                raise ValueError(f"a container of no type ({kinds})")
            fixed = [widths.get(k) for k in kinds]
            if all(w is not None for w in fixed):
                pos += count * sum(fixed)  # type: ignore[arg-type]
            elif count:
                frames.append([kinds, count * len(kinds)])
    return pos if pos <= end else None
