"""Malformed input of every kind against a live server: a corpus of known-bad calls, and random bytes
(hypothesis). Each bad connection is answered or closed; the server keeps serving everyone else, and no
call ever fails as an internal error."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_chat import ChatServer, Settings
from async_chat.contract import ChatService, Message

from .conftest import LOOPBACK

CALL = -2147418111  # 0x80010001: strict binary, a call


def call(name: bytes, body: bytes, seqid: int = 1) -> bytes:
    return struct.pack(">iI", CALL, len(name)) + name + struct.pack(">i", seqid) + body


def string(fid: int, value: bytes) -> bytes:
    return b"\x0b" + struct.pack(">hi", fid, len(value)) + value


def message(*fields: bytes) -> bytes:
    """publish's argument 1, a Message struct of `fields`, then the args struct's stop."""
    return b"\x0c\x00\x01" + b"".join(fields) + b"\x00" + b"\x00"


class LiveServer:
    """A real server on its own thread and loop, so that blocking sockets (and hypothesis) can drive it."""

    def __init__(self) -> None:
        self.errors: list[logging.LogRecord] = []
        self._watch = _Collect(self.errors)
        logging.getLogger("async_chat").addHandler(self._watch)
        self.loop = uvloop.new_event_loop()
        self.server = ChatServer(Settings(host=LOOPBACK, port=0, idle_timeout=5, max_poll_wait_ms=1000))
        self._stop = asyncio.Event()
        started = threading.Event()

        async def main() -> None:
            async with self.server:
                started.set()
                await self._stop.wait()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.port = self.server.port

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.loop.close()
        logging.getLogger("async_chat").removeHandler(self._watch)

    def exchange(self, data: bytes) -> bytes:
        """Send `data`, stop sending, and return all the server answers before it closes (bounded)."""
        with socket.create_connection((LOOPBACK, self.port), timeout=10) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    def serves(self) -> bool:
        """A sound publish on a fresh connection is answered with a seq."""
        body = message(string(1, b"probe"), string(2, b"still here"))
        answer = self.exchange(call(b"publish", body))
        return answer[19:22] == b"\x0a\x00\x00"  # after the reply's 19-byte header: field 0 (success), an i64


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = LiveServer()
    yield server
    server.close()
    assert not server.errors, [r.getMessage() for r in server.errors]  # no INTERNAL_ERROR, no crash


CORPUS = {
    "nothing": b"",
    "garbage": bytes(range(256)) * 4,
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "truncated-header": call(b"publish", b"")[:7],
    "truncated-string": call(b"publish", message(string(1, b"s"))[:-1] + b"\x0b\x00\x02\x00\x00\x01\x00abc"),
    "compact-header-binary-body": b"\x82" + call(b"publish", b"")[1:],
    "bad-version": struct.pack(">i", -2147352575) + b"\x00\x00\x00\x01x",  # 0x80020001
    "negative-string-length": call(b"publish", message(string(1, b"s"), b"\x0b\x00\x02" + struct.pack(">i", -5))),
    # a string that claims 2 GiB, or one byte more than the call holds: nothing is allocated for either
    "huge-string-length": call(b"publish", message(b"\x0b\x00\x01" + struct.pack(">i", 2**31 - 1) + b"abc")),
    "string-one-past-the-end": call(b"publish", message(b"\x0b\x00\x01" + struct.pack(">i", 4) + b"abc")),
    "negative-name-length": struct.pack(">ii", CALL, -7) + b"publish",
    "huge-name-length": struct.pack(">ii", CALL, 2**31 - 1) + b"publish",
    "wrong-field-types": call(b"publish", message(b"\x08\x00\x01\x00\x00\x00\x07", b"\x08\x00\x02\x00\x00\x00\x07")),
    "absent-required-fields": call(b"publish", message()),
    "invalid-utf8": call(b"publish", message(string(1, b"\xff\xfe\xfd"), string(2, b"\xc3\x28"))),
    "deep-nesting": call(b"publish", b"\x0c\x00\x05" * 5000 + b"\x00" * 5000 + b"\x00"),
    "huge-list-claim": call(b"publish", b"\x0f\x00\x05\x03" + struct.pack(">i", 2**31 - 1) + b"\x01\x02"),
    "unknown-method": call(b"noSuchMethod", b"\x00"),
    # 2**31 values of a type that takes no bytes: thriftpy2 would loop without reading (the fuzzer's find).
    "zero-width-list-in-unknown-method": call(b"noSuchMethod", b"\x0f\x00\x01\x00" + struct.pack(">i", 2**31 - 1)),
    "zero-width-list-in-message": call(b"publish", message(b"\x0f\x00\x09\x01" + struct.pack(">i", 2**31 - 1))),
    "zero-width-map": call(b"publish", message(b"\x0d\x00\x09\x00\x00" + struct.pack(">i", 2**31 - 1))),
    "reply-not-call": struct.pack(">iI", -2147418110, 7) + b"publish" + b"\x00\x00\x00\x01\x00",
}


@pytest.mark.parametrize("payload", list(CORPUS.values()), ids=list(CORPUS))
def test_each_malformed_input_is_answered_or_closed_and_the_server_serves_on(live: LiveServer, payload: bytes) -> None:
    live.exchange(payload)  # returns: answered and/or closed, never hung
    assert live.serves()


def test_refusals_that_can_be_answered_are(live: LiveServer) -> None:
    for case in ("absent-required-fields", "wrong-field-types", "invalid-utf8"):  # the frame itself was sound
        answer = live.exchange(CORPUS[case])
        assert b"sender is required" in answer or b"must be a string" in answer, (case, answer)
    assert b"unknown method 'noSuchMethod'" in live.exchange(CORPUS["unknown-method"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_random_bytes_never_take_the_server_down(live: LiveServer, data: bytes) -> None:
    live.exchange(data)
    assert live.serves()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sender=st.text(max_size=300), content=st.text(max_size=2000), room=st.one_of(st.none(), st.text(max_size=300)),
    cut=st.integers(min_value=0, max_value=4000),
)
def test_sound_calls_cut_anywhere_never_take_the_server_down(
    live: LiveServer, sender: str, content: str, room: str | None, cut: int
) -> None:
    from thriftpy2.protocol import TBinaryProtocol
    from thriftpy2.transport import TMemoryBuffer

    buffer = TMemoryBuffer()
    protocol = TBinaryProtocol(buffer)
    protocol.write_message_begin("publish", 1, 1)
    args = ChatService.publish_args(message=Message(sender=sender, content=content, room=room))
    args.write(protocol)
    encoded = buffer.getvalue()
    live.exchange(encoded[:cut])  # a prefix: the server waits, then sees the end and lets go
    assert live.serves()
