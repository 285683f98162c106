"""Compact calls decoded from memory in one go: what cybin does for binary, for the compact protocol.

thriftpy2 has no compiled compact codec, and its aio compact protocol awaits its transport for every
byte of a varint: a compact `sendMessage` cost about four times a binary one, so compact ran no faster
than thriftpy2's stock server. A call that has arrived whole is decoded here instead, by plain indexing
into its bytes.

It takes only what it can decode exactly as the streaming decoder would: a call whose arguments are
numbers, strings and structs of the fields the IDL gives them. Anything else (a list, set or map, a value
of another type than its field's, a name that is not UTF-8, bytes that end before the call) is `None`,
and the streaming decoder (codec.py, wire.py) reads it and says what is wrong with it. Every step reads
at least one byte of a bounded buffer, so no claim in the bytes can make it allocate or loop beyond them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from thriftpy2.thrift import TType

_PROTOCOL_ID = 0x82
_VERSION = 1

# compact type -> the TType a field must have for us to read it here
_TTYPE_OF = {1: TType.BOOL, 2: TType.BOOL, 3: TType.BYTE, 4: TType.I16, 5: TType.I32, 6: TType.I64,
             7: TType.DOUBLE, 8: TType.STRING, 12: TType.STRUCT}
_NUMBERS = frozenset((4, 5, 6))
_MAX_DEPTH = 16


class _Unreadable(Exception):
    """Not for this decoder: the streaming one reads it (and says why, if it is wrong)."""


def decode_call(data: bytes, args: dict[str, Any]) -> tuple[str, int, Any, int] | None:
    """(method, seqid, its `_args` struct or None for a method `args` lacks, bytes used) of the compact
    call `data` begins with; None when the streaming decoder must read it."""
    try:
        if data[0] != _PROTOCOL_ID or data[1] & 0x1F != _VERSION:
            return None
        seqid, pos = _varint(data, 2)
        size, pos = _varint(data, pos)
        end = pos + size
        if end > len(data):
            return None
        api = data[pos:end].decode("utf-8")
        args_type = args.get(api)
        if args_type is None:
            return None  # an unknown method: the streaming decoder skips its arguments and says so
        struct = args_type()
        pos = _struct(data, end, struct, 0)
    except (IndexError, _Unreadable, UnicodeDecodeError):
        return None
    return api, seqid, struct, pos


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    result, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos + 1
        shift += 7
        if shift > 63:
            raise _Unreadable  # longer than any 64-bit value


def _struct(data: bytes, pos: int, obj: Any, depth: int) -> int:
    """Read the fields of `obj`'s struct from `pos` to its STOP; where it ended."""
    if depth > _MAX_DEPTH:
        raise _Unreadable
    spec = obj.thrift_spec
    last = 0
    while True:
        header = data[pos]
        pos += 1
        if header == 0:
            return pos
        kind = header & 0x0F
        delta = header >> 4
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(data, pos)
            fid = (raw >> 1) ^ -(raw & 1)
        last = fid
        ttype = _TTYPE_OF.get(kind)
        if ttype is None:
            raise _Unreadable  # a container, or no type at all
        field = spec.get(fid)
        if field is None:
            pos = _skip(data, pos, kind, depth)
            continue
        if field[0] != ttype:
            raise _Unreadable  # thriftpy2 would skip it: the streaming decoder does exactly that
        if kind in _NUMBERS:
            raw, pos = _varint(data, pos)
            value: Any = (raw >> 1) ^ -(raw & 1)
        elif kind == 8:
            size, pos = _varint(data, pos)
            end = pos + size
            if end > len(data):
                raise _Unreadable
            value = data[pos:end].decode("utf-8")
            pos = end
        elif kind == 12:
            value = field[2]()
            pos = _struct(data, pos, value, depth + 1)
        elif kind == 1 or kind == 2:
            value = kind == 1
        elif kind == 3:
            byte = data[pos]
            value = byte - 256 if byte > 127 else byte
            pos += 1
        else:
            raise _Unreadable  # a double: no field of the contract has one
        setattr(obj, field[1], value)


def _skip(data: bytes, pos: int, kind: int, depth: int) -> int:
    """Step over the value of a field the struct does not have."""
    if kind in _NUMBERS:
        return _varint(data, pos)[1]
    if kind == 8:
        size, pos = _varint(data, pos)
        if pos + size > len(data):
            raise _Unreadable
        return pos + size
    if kind == 1 or kind == 2:
        return pos
    if kind == 3:
        return pos + 1
    if kind == 7:
        return pos + 8
    if kind == 12:
        return _struct(data, pos, _NOTHING, depth + 1)  # a struct of no known field: every one skipped
    raise _Unreadable


class _Nothing:
    """A struct with no fields: what `_struct` reads an unknown struct into, skipping all it holds."""

    thrift_spec: ClassVar[dict[int, Any]] = {}


_NOTHING = _Nothing()
