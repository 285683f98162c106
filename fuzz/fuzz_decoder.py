"""atheris fuzz target: the server's decode path, from a connection's first byte to decoded calls.

It runs what the server runs on bytes from a socket: the call-size budget (`_Connection.read`), dialect
detection (`wire.detect`), and thriftpy2's transports, protocols and argument decoding (`read_call`),
for up to four calls. Every exception the server handles by closing the connection is expected; any
other exception, a hang (-timeout) or memory past -rss_limit_mb is a finding.

    python fuzz/fuzz_decoder.py -max_total_time=600 -rss_limit_mb=512 -max_len=65536 fuzz/corpus
or `make fuzz SECONDS=600`. Not run by CI.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    from thriftpy2.protocol.exc import TProtocolException
    from thriftpy2.transport import TTransportException

    from async_chat import wire
    from async_chat.contract import ChatService, Message
    from async_chat.processor import ChatProcessor
    from async_chat.server import CallTooLarge, _Connection

EXPECTED = (TTransportException, TProtocolException, CallTooLarge, asyncio.IncompleteReadError)
"""What the server answers by closing the connection with one log line."""
HANDLED = (UnicodeDecodeError, struct.error, ValueError, TypeError, KeyError, IndexError, OverflowError)
"""Malformed input thriftpy2 reports with a generic error: the fuzzer's finds, such as KeyError from its
compact decoder for an unknown type id, and OverflowError for a varint length past 2**63. The server
closes the connection for these too (its catch-all, one log line), so they are no longer findings:
each kind is reported once, when first seen."""
seen: dict[str, int] = {}


class _Sink:
    """The write side of the fuzzed connection: replies are dropped (nothing to read them)."""

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


PROCESSOR = ChatProcessor(ChatService, handler=None)  # read_call only decodes; the handler is never called
LOOP = asyncio.new_event_loop()


async def decode(data: bytes) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    conn = _Connection(reader, _Sink(), max_call_bytes=65536)  # type: ignore[arg-type]
    dialect = wire.detect(await conn.read_head())
    if dialect is None:
        return
    protocol = dialect.protocol_on(conn)
    for _ in range(4):
        conn.budget = conn.max_call_bytes
        await PROCESSOR.read_call(protocol)


def test_one_input(data: bytes) -> None:
    try:
        LOOP.run_until_complete(decode(data))
    except EXPECTED:
        pass
    except HANDLED as exc:
        kind = type(exc).__name__
        if kind not in seen:  # libFuzzer ends with _exit(): report each kind as it is first seen
            print(f"handled (the server closes such a connection): {kind}: {exc!r:.200}", file=sys.stderr)
        seen[kind] = seen.get(kind, 0) + 1


def seeds(where: Path) -> None:
    """Sound calls of every dialect, for the fuzzer to start from."""
    from thriftpy2.protocol import TBinaryProtocol, TCompactProtocol
    from thriftpy2.transport import TMemoryBuffer

    where.mkdir(parents=True, exist_ok=True)
    for name, make in (("binary", TBinaryProtocol), ("compact", TCompactProtocol)):
        buffer = TMemoryBuffer()
        protocol = make(buffer)
        protocol.write_message_begin("publish", 1, 1)
        ChatService.publish_args(message=Message(sender="s", content="hello", room="r")).write(protocol)
        call = buffer.getvalue()
        (where / f"buffered-{name}").write_bytes(call)
        (where / f"framed-{name}").write_bytes(struct.pack(">i", len(call)) + call)


if __name__ == "__main__":
    corpus = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    for directory in corpus:
        if not directory.exists() or not any(directory.iterdir()):
            seeds(directory)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
