"""atheris fuzz target: the server's decode path, from a connection's first byte to decoded calls.

It feeds the bytes to the server's own `Connection` (connection.py), as the event loop would: dialect
detection (`wire.detect`), frames, the call-size budget, the fast decoders (the compiled one when it is
built, cybin, compact.py) and the streaming decode (codec.py), for every call in the input. Calls are
decoded and dispatched by the server's own processor to a handler that does nothing, so each is answered
empty. It runs the package as installed: compiled where the core was compiled, which atheris cannot
instrument; ASYNC_CHAT_PURE_PYTHON=1 runs the .py files, whose coverage guides the fuzzer.
A connection the server would close with one log line is an expected outcome; an exception escaping,
a hang (-timeout), memory past -rss_limit_mb, or an input that holds the loop longer than its budget
(TIME_BUDGET: a fixed part, plus a part per MiB) is a finding.

    python fuzz/fuzz_decoder.py -max_total_time=600 -rss_limit_mb=512 -max_len=65536 fuzz/corpus
or `make fuzz SECONDS=600`. CI runs it briefly (tests/test_fuzz_target.py: 10,000 inputs).
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import sys
import time
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    from async_chat import wire
    from async_chat.codec import Codec
    from async_chat.connection import Connection, Outbox
    from async_chat.contract import ChatService, Message
    from async_chat.logs import Episodes
    from async_chat.processor import ChatProcessor
    from async_chat.session import Session
    from async_chat.settings import Settings

LOOP = asyncio.new_event_loop()
TIME_BUDGET = (0.5, 8.0)
"""CPU seconds an input may take: this much, plus this much per MiB. Generous (the target runs
instrumented, about ten times slower), yet far below the seconds an unbounded varint or a million-element
skip took. CPU time of this process, not wall time: a machine busy with other work made a 5 KB input of
216 calls (19 ms of CPU) look like a finding at 0.3 s of wall time."""


class _Handler:
    """Every method of the service, doing nothing (none has a synchronous form)."""

    def at_once(self) -> dict[str, Any]:
        return {}

    def __getattr__(self, api: str) -> Any:
        if api.startswith("_"):
            raise AttributeError(api)
        return _nothing


async def _nothing(*args: Any) -> None:
    return None


class _Server:
    """What a Connection asks of its server: the processor is the real one, over a handler that does nothing."""

    settings = Settings(max_call_bytes=65536, max_content_bytes=1024)
    serving = True
    tls = None
    episodes = Episodes(quiet=0.0)
    eager = True
    oversized_total = unreadable_total = refused_total = 0

    def __init__(self) -> None:
        self.processor = ChatProcessor(ChatService, _Handler())
        self.outbox = Outbox()
        self._codecs: dict[tuple[str, bool], Codec] = {}

    def admit(self, conn: Connection) -> bool:
        return True

    def forget(self, conn: Connection) -> None:
        pass

    def new_session(self) -> Session:
        return Session()

    def dialect_of(self, head: bytes, conn: Connection) -> wire.Dialect | None:
        return wire.detect(head)

    def codec_for(self, dialect: wire.Dialect) -> Codec:
        key = (dialect.protocol, dialect.strict)
        if key not in self._codecs:
            self._codecs[key] = Codec(ChatService, dialect.protocol, dialect.strict, 1 << 20)
        return self._codecs[key]

    def track(self, task: asyncio.Task[Any]) -> None:
        pass


class _Transport:
    """The connection's transport: replies are dropped; closing ends the connection, as a socket's would."""

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def write(self, data: bytes) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed and self.conn is not None:
            self.closed = True
            self.conn.connection_lost(None)

    abort = close


SERVER = _Server()


async def decode(data: bytes) -> None:
    conn = Connection(SERVER)  # type: ignore[arg-type]  # the subset of ChatServer it uses
    transport = _Transport()
    transport.conn = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    for start in range(0, len(data), 4096):  # as the loop would hand it over
        if transport.closed:
            break
        conn.data_received(data[start : start + 4096])
    task = conn._task
    transport.close()  # the peer is done: a call still arriving is abandoned
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


def test_one_input(data: bytes) -> None:
    started = time.process_time()
    LOOP.run_until_complete(decode(data))
    took = time.process_time() - started
    budget = TIME_BUDGET[0] + TIME_BUDGET[1] * len(data) / (1 << 20)
    if took > budget:
        raise AssertionError(f"{len(data)} bytes held the loop for {took:.3f}s of CPU (budget {budget:.3f}s)")


def seeds(where: Path) -> None:
    """Sound calls of every dialect, for the fuzzer to start from."""
    from thriftpy2.protocol import TBinaryProtocol, TCompactProtocol
    from thriftpy2.transport import TMemoryBuffer

    where.mkdir(parents=True, exist_ok=True)
    calls = {
        "publish": ChatService.publish_args(message=Message(sender="s", content="hello", room="r")),
        "poll": ChatService.poll_args(subscription_id="abc", max_messages=10, wait_ms=0, from_seq=3),
        "subscribe": ChatService.subscribe_args(room="r", from_seq=1),
    }
    protocols = {
        "binary": lambda b: TBinaryProtocol(b),
        "nonstrict": lambda b: TBinaryProtocol(b, strict_write=False),
        "compact": lambda b: TCompactProtocol(b),
    }
    for (pname, make), (api, args) in itertools.product(protocols.items(), calls.items()):
        buffer = TMemoryBuffer()
        protocol = make(buffer)
        protocol.write_message_begin(api, 1, 1)
        args.write(protocol)
        call = buffer.getvalue()
        (where / f"buffered-{pname}-{api}").write_bytes(call)
        (where / f"framed-{pname}-{api}").write_bytes(struct.pack(">i", len(call)) + call)
    # Containers in fields the contract does not have: what the skip budget bounds.
    head = struct.pack(">iI", -2147418111, 7) + b"publish" + struct.pack(">i", 1)
    (where / "binary-unknown-list").write_bytes(head + b"\x0f\x00\x09\x08" + struct.pack(">i", 3) + bytes(12) + b"\x00")
    (where / "compact-unknown-list").write_bytes(b"\x82\x21\x01\x07publish" + b"\x99\x31\x01\x01\x01\x00")


if __name__ == "__main__":
    corpus = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    for directory in corpus:
        if not directory.exists() or not any(directory.iterdir()):
            seeds(directory)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
