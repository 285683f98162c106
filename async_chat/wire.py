"""Wire dialects: which Thrift transport and protocol a connection speaks, told from its first bytes.

Clients in the wild speak four combinations (buffered or framed, binary or compact), plus binary without
a version header from old clients. A server that made its operator pick one would turn the others away
with a confusing decode error, so the server reads a connection's first five bytes and picks for it:

    80 ..            buffered, strict binary   (version word 0x8001 0000 | message type)
    82 ..            buffered, compact         (protocol id 0x82)
    LL LL LL LL 80   framed, strict binary     (a 4-byte frame length, 1..16 MiB, then as above)
    LL LL LL LL 82   framed, compact
    LL LL LL LL 00   framed, non-strict binary (the frame holds a 4-byte method-name length, high byte 0)
    00 00 00 NN a    buffered, non-strict binary (a name length, then the name's first letter)

Anything else is not Thrift we can read. A non-strict client is answered non-strict, as it writes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from thriftpy2.contrib.aio.transport.buffered import TAsyncBufferedTransportFactory
from thriftpy2.contrib.aio.transport.framed import TAsyncFramedTransportFactory
from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.thrift import TType


def _own_copy(name: str) -> ModuleType:
    """A second instance of thriftpy2's module `name`, ours alone: its decoder calls module-level functions
    (`skip`, `read_varint`), and those are replaced in this copy, so that an application's own thriftpy2
    clients and servers, which use the original module, behave exactly as thriftpy2 made them."""
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


aio_binary: Any = _own_copy("thriftpy2.contrib.aio.protocol.binary")
aio_compact: Any = _own_copy("thriftpy2.contrib.aio.protocol.compact")
TAsyncBinaryProtocol: Any = aio_binary.TAsyncBinaryProtocol
"""The binary aio protocol of our copy: its unknown fields are skipped by `_safe_binary_skip`."""
TAsyncCompactProtocol: Any = aio_compact.TAsyncCompactProtocol

TRANSPORTS = ("buffered", "framed")
"""The transports a client may choose (the server also takes "auto": any of them)."""

PROTOCOLS = ("binary", "compact")
"""The protocols a client may choose (the server also takes "auto": any of them)."""

AUTO = "auto"

HEAD_SIZE = 5
"""Bytes the longest decision needs; every Thrift call is longer than this."""

MAX_FIRST_FRAME = 16 * 1024 * 1024
"""A first frame claiming more than this is not a chat call: a TLS handshake (16 03 01 02 00) would
otherwise pass for a 352 MiB frame of non-strict binary."""



class CallTooLarge(Exception):
    """A call longer than --max-call-bytes, or with a negative length: its connection is closed before the
    rest is read. `call` is the (method, seqid) it began with, when that was read: the server then answers
    it TOO_LARGE before closing, so that its client is told why."""

    call: tuple[str, int] | None = None


class TruncatedCall(Exception):
    """A frame that ended before the call in it did."""


class TrailingBytes(Exception):
    """A frame that went on after the call in it (a second call, or junk)."""


_STRICT_BINARY = 0x80
_COMPACT = 0x82
_NAME_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")

_TRANSPORT_FACTORIES: dict[str, Any] = {
    "buffered": TAsyncBufferedTransportFactory(),
    "framed": TAsyncFramedTransportFactory(),
}


_SKIPPABLE = frozenset({
    TType.BOOL, TType.BYTE, TType.DOUBLE, TType.I16, TType.I32, TType.I64, TType.STRING, TType.BINARY,
    TType.STRUCT, TType.MAP, TType.SET, TType.LIST,
})
"""The types whose every value takes at least one byte on the wire."""

MAX_SKIPPED_VALUES = 1_000
"""Values of fields the contract does not have (or of the wrong type) that one call may carry, the
containers and their elements included. thriftpy2 skips them one await at a time (a compact varint one
await a byte): a 1 MiB list of bools held the loop for a second, and at 10,000 values a call of 10-byte
varints still held it 40 ms. At 1,000 the worst call we could build holds it about 4 ms, and a newer
client's extra field of a few hundred values still passes. A container claiming more is refused at its
header, before anything of it is read (a buffered call claiming 2**31 values no longer waits for bytes
that never come)."""

MAX_VARINT_BYTES = 10
"""The longest varint that holds 64 bits. thriftpy2's compact reader reads until a byte without the
continuation bit, however many come, and its big-integer arithmetic makes that quadratic: a 200 KB
varint froze the server for seconds."""


class SkipBudget:
    """What one call may still skip: each source a call is read from carries one (`skips`)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_SKIPPED_VALUES

    def claim(self, values: int) -> None:
        """A container's header claims `values`: refused now if they cannot all be skipped."""
        if values > self.left:
            raise CallTooLarge(
                f"a call carries more than {MAX_SKIPPED_VALUES} values in fields this server does not know"
            )

    def spend(self) -> None:
        self.claim(1)
        self.left -= 1


def _refuse_unskippable(ttype: int) -> None:
    """thriftpy2 skips a value of type STOP, VOID or an unknown type by reading nothing. A list that claims
    2**31 of them then loops 2**31 times without reading a byte, and blocks the event loop for hours: a
    call of about 20 bytes took the server down (found by the fuzzer, fuzz/fuzz_decoder.py). Refused here;
    every other type reads at least a byte per value, so the call-size budget bounds the loop."""
    if ttype not in _SKIPPABLE:
        raise TProtocolException(TProtocolException.INVALID_DATA, f"no value of type {ttype} can be skipped")


def _budget_of(source: Any) -> SkipBudget | None:
    """The skip budget of what a call is read from; None for a client's own transports (it trusts its
    server, and the budget is the server's defence)."""
    budget = getattr(source, "skips", None)
    return budget if isinstance(budget, SkipBudget) else None


_MAX_DEPTH: int = getattr(aio_binary, "DEFAULT_MAX_DEPTH", 64)


def _check_depth(depth: int) -> None:
    if depth <= 0:
        raise TProtocolException(TProtocolException.INVALID_DATA, "nesting too deep while skipping a value")


async def _safe_binary_skip(inbuf: Any, ftype: int, depth: int = _MAX_DEPTH) -> None:
    """thriftpy2's binary skip, with the refusal above, and every value counted against the call's budget
    (a container's whole claim at its header)."""
    _refuse_unskippable(ftype)
    budget = _budget_of(inbuf)
    if budget is not None:
        budget.spend()
    if ftype in (TType.SET, TType.LIST):
        _check_depth(depth)
        v_type, size = await aio_binary.read_list_begin(inbuf)
        if budget is not None:
            budget.claim(size)
        _refuse_unskippable(v_type)
        for _ in range(size):
            await _safe_binary_skip(inbuf, v_type, depth - 1)
    elif ftype == TType.MAP:
        _check_depth(depth)
        k_type, v_type, size = await aio_binary.read_map_begin(inbuf)
        if budget is not None:
            budget.claim(2 * size)
        _refuse_unskippable(k_type)
        _refuse_unskippable(v_type)
        for _ in range(size):
            await _safe_binary_skip(inbuf, k_type, depth - 1)
            await _safe_binary_skip(inbuf, v_type, depth - 1)
    elif ftype == TType.STRUCT:
        _check_depth(depth)
        while True:
            f_type, _fid = await aio_binary.read_field_begin(inbuf)
            if f_type == TType.STOP:
                break
            await _safe_binary_skip(inbuf, f_type, depth - 1)
    else:
        await _thriftpy2_binary_skip(inbuf, ftype, depth)


_thriftpy2_binary_skip: Any = aio_binary.skip
# thriftpy2's binary decoder calls its module-level `skip` (for unknown fields and methods, and for its
# own recursion): replaced in our copy of the module only.
aio_binary.skip = _safe_binary_skip


async def _read_varint(trans: Any) -> int:
    """thriftpy2's compact varint, at most MAX_VARINT_BYTES long."""
    result = shift = 0
    for _ in range(MAX_VARINT_BYTES):
        byte: int = (await trans.read(1))[0]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
        shift += 7
    raise TProtocolException(TProtocolException.INVALID_DATA, f"a varint longer than {MAX_VARINT_BYTES} bytes")


# The compact decoder calls its module-level `read_varint` everywhere: bound in our copy of the module.
aio_compact.read_varint = _read_varint


class SafeCompactProtocol(TAsyncCompactProtocol):  # type: ignore[misc]  # a class from a module copy
    """Compact, with the same refusal and budget; its skip is a method that recurses through `self.skip`."""

    async def skip(self, ttype: int) -> None:  # the aio base is async
        _refuse_unskippable(ttype)
        budget = _budget_of(self.trans)
        if budget is not None:
            budget.spend()
        await super().skip(ttype)

    async def _read_collection_begin(self) -> tuple[int, int]:
        ttype, size = await super()._read_collection_begin()
        self._claim(size)
        return ttype, size

    async def _read_map_begin(self) -> tuple[int, int, int]:
        ktype, vtype, size = await super()._read_map_begin()
        self._claim(2 * size)
        return ktype, vtype, size

    def _claim(self, values: int) -> None:
        budget = _budget_of(self.trans)
        if budget is not None:
            budget.claim(values)


class _NonStrictBinaryProtocol(TAsyncBinaryProtocol):  # type: ignore[misc]  # as above
    """Binary that also reads messages without a version header.

    thriftpy2 returns such a message's method name as bytes (its strict path decodes it), which no
    method matches and which its reply writer cannot encode; decode it here.
    """

    def __init__(self, trans: Any) -> None:
        super().__init__(trans, strict_read=False, strict_write=False)

    async def read_message_begin(self) -> tuple[str, int, int]:  # the aio base is async
        name, kind, seqid = await super().read_message_begin()
        if isinstance(name, bytes):
            name = name.decode("utf-8")
        return name, kind, seqid


@dataclass(frozen=True)
class Dialect:
    """One transport and protocol pairing; `strict` is False only for binary without a version header."""

    transport: str = "buffered"
    protocol: str = "binary"
    strict: bool = True

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS or self.protocol not in PROTOCOLS:
            raise ValueError(
                f"transport must be one of {', '.join(TRANSPORTS)} and protocol one of {', '.join(PROTOCOLS)},"
                f" not {self.transport!r} and {self.protocol!r}"
            )

    def __str__(self) -> str:
        return f"{self.transport}/{self.protocol}" + ("" if self.strict else " (non-strict)")

    def protocol_on(self, stream: Any) -> Any:
        """A thriftpy2 aio protocol over `stream` (anything with StreamHandler's read/write/flush/close)."""
        trans = _TRANSPORT_FACTORIES[self.transport].get_transport(stream)
        if self.protocol == "compact":
            return SafeCompactProtocol(trans)
        return TAsyncBinaryProtocol(trans) if self.strict else _NonStrictBinaryProtocol(trans)

    def allowed_by(self, transport: str, protocol: str) -> bool:
        """Whether a server configured with `transport` and `protocol` (each maybe "auto") serves this."""
        return transport in (AUTO, self.transport) and protocol in (AUTO, self.protocol)


def needs_more(head: bytes) -> bool:
    """Whether `head` is too short for `detect`: one byte tells buffered calls, framed ones need five."""
    return len(head) < HEAD_SIZE and (not head or head[0] not in (_STRICT_BINARY, _COMPACT))


def detect(head: bytes) -> Dialect | None:
    """The dialect whose call begins with `head`, or None if no Thrift client we serve writes that."""
    if not head:
        return None
    if head[0] == _STRICT_BINARY:
        return Dialect("buffered", "binary")
    if head[0] == _COMPACT:
        return Dialect("buffered", "compact")
    if len(head) < HEAD_SIZE:
        return None
    length = int.from_bytes(head[:4], "big", signed=True)
    if not 0 < length <= MAX_FIRST_FRAME:
        return None
    fifth = head[4]
    if fifth == _STRICT_BINARY:
        return Dialect("framed", "binary")
    if fifth == _COMPACT:
        return Dialect("framed", "compact")
    if fifth == 0:
        return Dialect("framed", "binary", strict=False)
    if fifth in _NAME_START:
        return Dialect("buffered", "binary", strict=False)
    return None
