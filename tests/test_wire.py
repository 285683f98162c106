"""Telling a connection's transport and protocol from its first bytes."""

from __future__ import annotations

import pytest

from async_chat.wire import HEAD_SIZE, Dialect, detect, needs_more

# What each client writes first, byte for byte: a call of `sendMessage`, seqid 0, as Apache's libraries
# write it (thriftpy2's and Apache's encoders agree on these headers).
STRICT = b"\x80\x01\x00\x01" + b"\x00\x00\x00\x0bsendMessage" + b"\x00\x00\x00\x00"
NON_STRICT = b"\x00\x00\x00\x0bsendMessage" + b"\x01" + b"\x00\x00\x00\x00"
COMPACT = b"\x82\x21\x00\x0bsendMessage"


def framed(call: bytes) -> bytes:
    return len(call).to_bytes(4, "big") + call


@pytest.mark.parametrize(
    ("first", "dialect"),
    [
        (STRICT, Dialect("buffered", "binary")),
        (COMPACT, Dialect("buffered", "compact")),
        (NON_STRICT, Dialect("buffered", "binary", strict=False)),
        (framed(STRICT), Dialect("framed", "binary")),
        (framed(COMPACT), Dialect("framed", "compact")),
        (framed(NON_STRICT), Dialect("framed", "binary", strict=False)),
    ],
    ids=str,
)
def test_every_dialect_is_told_from_five_bytes_or_fewer(first: bytes, dialect: Dialect) -> None:
    head = first[:1]
    if needs_more(head):
        head = first[:HEAD_SIZE]
    assert not needs_more(head)
    assert detect(head) == dialect


@pytest.mark.parametrize(
    "head",
    [
        b"GET /",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello: would be a 352 MiB frame
        b"\x00\x00\x00\x00\x80",
        b"\xff\xff\xff\xff\x80",
        b"\x01\x00\x00\x01\x80",  # a frame past MAX_FIRST_FRAME
        b"\x00\x00\x00\x05\x07",
        b"",
    ],
    ids=["http", "tls", "empty-frame", "negative-frame", "huge-frame", "junk", "nothing"],
)
def test_what_no_client_writes_is_not_a_dialect(head: bytes) -> None:
    assert detect(head) is None


def test_dialects_name_themselves_and_know_what_a_server_allows() -> None:
    assert str(Dialect("framed", "binary", strict=False)) == "framed/binary (non-strict)"
    assert Dialect("framed", "compact").allowed_by("auto", "auto")
    assert Dialect("framed", "compact").allowed_by("framed", "auto")
    assert not Dialect("framed", "compact").allowed_by("buffered", "auto")
    assert not Dialect("framed", "compact").allowed_by("auto", "binary")
    with pytest.raises(ValueError, match="transport must be one of buffered, framed"):
        Dialect("auto", "binary")


def test_our_decoder_fixes_stay_in_our_own_copy_of_thriftpy2() -> None:
    """Importing async_chat changes nothing of thriftpy2 for an application's own clients and servers: the
    bounded skip and varint live in a copy of thriftpy2's modules that only our protocols use."""
    import importlib

    import thriftpy2.contrib.aio.protocol.binary as their_binary
    import thriftpy2.contrib.aio.protocol.compact as their_compact

    from async_chat import wire

    pristine_binary = importlib.util.find_spec(their_binary.__name__)
    assert pristine_binary is not None
    assert their_binary.skip.__module__ == their_binary.__name__  # thriftpy2's own skip, not ours
    assert their_binary.skip.__code__.co_filename == pristine_binary.origin
    assert their_compact.read_varint.__module__ == their_compact.__name__
    assert wire.aio_binary.skip is wire._safe_binary_skip  # ours, in our copy
    assert wire.aio_compact.read_varint is wire._read_varint
    assert wire.TAsyncBinaryProtocol is not their_binary.TAsyncBinaryProtocol
