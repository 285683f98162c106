"""The server's lifecycle and its answers when things go wrong: errors, unknown methods, drain, idle."""

from __future__ import annotations

import asyncio
import errno
import struct
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thriftpy2.thrift import TApplicationException

from async_chat import ChatClient, ChatServer, Message, ServerError, Settings, Unavailable
from async_chat.connection import ConnectionState
from async_chat.contract import WireChatError

from .conftest import LOOPBACK, ServerFactory, raw_connection, read_to_close, wait_until


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("disk on fire"), ServerError("disk on fire")],  # ServerError: a ChatError with no wire code
    ids=["unexpected", "codeless-chat-error"],
)
async def test_unexpected_handler_error_is_answered_and_the_connection_lives(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    assert server.hub is not None
    broker = server.hub.broker
    real_publish = broker.publish_now  # the memory broker's publish, awaited or not, comes here
    calls = 0

    def failing_once(message: Any) -> tuple[int, bool]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise failure
        return real_publish(message)

    monkeypatch.setattr(broker, "publish_now", failing_once)
    async with raw_connection(server.port) as raw:
        with pytest.raises(TApplicationException) as refused:
            await raw.client.publish(Message(sender="s", content="x"))
        assert refused.value.type == TApplicationException.INTERNAL_ERROR
        assert await raw.client.publish(Message(sender="s", content="y")) == 1  # same connection
    assert server.connections_total == 1
    assert "disk on fire" in caplog.text


async def test_chat_error_arrives_as_the_idl_exception_with_its_code(server: ChatServer) -> None:
    async with raw_connection(server.port) as raw:
        with pytest.raises(WireChatError) as refused:
            await raw.client.publish(Message(sender="", content="x"))
        assert refused.value.code == 1  # INVALID
        assert "sender" in refused.value.reason
        with pytest.raises(TApplicationException, match="INVALID: sender"):
            await raw.client.sendMessage(Message(sender="", content="x"))
        await raw.client.sendMessage(Message(sender="ok", content="x"))


async def test_unknown_method_gets_unknown_method_and_the_connection_lives(server: ChatServer, tmp_path: Path) -> None:
    idl = tmp_path / "newer.thrift"
    idl.write_text(
        "struct Message { 1: required string sender, 2: required string content }\n"
        "service ChatService { void sendMessage(1: Message message), i32 fromTheFuture(1: i32 x) }\n"
    )
    newer = thriftpy2.load(str(idl), module_name="newer_thrift")
    async with raw_connection(server.port, newer.ChatService) as raw:
        with pytest.raises(TApplicationException) as refused:
            await raw.client.fromTheFuture(7)
        assert refused.value.type == TApplicationException.UNKNOWN_METHOD
        assert refused.value.message == "unknown method 'fromTheFuture'"
        await raw.client.sendMessage(newer.Message(sender="s", content="still here"))
    assert server.connections_total == 1


@pytest.mark.parametrize(
    ("first_bytes", "hint"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "47 45 54 20 2f are not a Thrift call (an HTTP request)"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "16 03 01 02 00 are not a Thrift call (a TLS handshake"),
        (b"\xff\xff\xff\xf0\x80\x01\x00\x01", "ff ff ff f0 80 are not a Thrift call"),  # a negative frame length
        (b"\x00\x00\x00\x05\x07garbage", "00 00 00 05 07 are not a Thrift call"),
    ],
    ids=["http", "tls", "negative-frame", "binary-junk"],
)
async def test_what_is_not_thrift_is_refused_with_a_log_line_and_others_are_served(
    server: ChatServer, client: ChatClient, caplog: pytest.LogCaptureFixture, first_bytes: bytes, hint: str
) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        writer.write(first_bytes)
        await writer.drain()
        async with asyncio.timeout(5):
            assert await read_to_close(reader) == b""  # the server closed it
    finally:
        writer.close()
    assert hint in caplog.text
    assert await client.publish(Message(sender="s", content="others are fine")) == 1


async def test_a_client_that_stops_inside_its_first_bytes_is_closed_as_idle(make_server: ServerFactory) -> None:
    server = await make_server(idle_timeout=0.3, max_poll_wait_ms=100)
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    writer.write(b"\x00\x00")  # two bytes of a frame length, then nothing
    await writer.drain()
    async with asyncio.timeout(5):
        assert await read_to_close(reader) == b""
    writer.close()
    await wait_until(lambda: server.connection_count == 0)


async def test_graceful_shutdown_answers_polls_in_flight(make_server: ServerFactory) -> None:
    server = await make_server()
    async with ChatClient(LOOPBACK, server.port, pool_size=4) as client:
        subs = [await client.create_subscription("r", 0) for _ in range(3)]
        polls = [asyncio.create_task(client.poll(s.subscription_id, 10, 20_000)) for s in subs]
        await wait_until(
            lambda: sum(c.state is ConnectionState.BUSY for c in server._connections) == 3
        )
        async with asyncio.timeout(5):
            await server.aclose()
            batches = await asyncio.gather(*polls)
    assert [(b.messages, b.missed) for b in batches] == [([], 0)] * 3
    assert server.connection_count == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(LOOPBACK, server.port)


async def test_shutdown_refuses_new_publishes_on_open_connections(make_server: ServerFactory) -> None:
    server = await make_server()
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("r", 0)
        poll = asyncio.create_task(client.poll(sub.subscription_id, 10, 20_000))
        await wait_until(lambda: any(c.state is ConnectionState.BUSY for c in server._connections))
        closing = asyncio.create_task(server.aclose())
        async with asyncio.timeout(5):
            await poll
            await closing
        with pytest.raises(Unavailable):
            await client.publish(Message(sender="s", content="too late"))


async def test_idle_connections_are_closed(make_server: ServerFactory) -> None:
    server = await make_server(idle_timeout=0.3, max_poll_wait_ms=100, subscription_ttl=1.0)
    async with raw_connection(server.port) as raw:
        await raw.client.sendMessage(Message(sender="s", content="x"))
        assert server.connection_count == 1
        async with asyncio.timeout(5):
            assert await raw.reader.read() == b""
    assert server.connection_count == 0


async def test_a_poll_longer_than_nothing_is_not_cut_as_idle(make_server: ServerFactory) -> None:
    server = await make_server(idle_timeout=0.5, max_poll_wait_ms=400, subscription_ttl=1.0)
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("r", 0)
        # The idle timer runs only between calls: a poll waiting its full 400 ms is fine, twice.
        for _ in range(2):
            batch = await client.poll(sub.subscription_id, 10, 400)
            assert batch.messages == []
        assert server.connections_total == 1


async def test_port_in_use_is_an_error_not_a_shared_port(server: ChatServer) -> None:
    with pytest.raises(OSError, match="in use") as failed:
        async with ChatServer(Settings(host=LOOPBACK, port=server.port)):
            pass
    assert failed.value.errno == errno.EADDRINUSE


def test_settings_refuse_an_idle_timeout_shorter_than_the_longest_poll() -> None:
    with pytest.raises(Exception, match="idle-timeout"):
        Settings(idle_timeout=10, max_poll_wait_ms=30_000)


async def test_repr_shows_state(server: ChatServer) -> None:
    assert "SERVING" in repr(server)
    assert f"{LOOPBACK}:{server.port}" in repr(server)


def void_reply_seqids(data: bytes) -> list[int]:
    """The seqid of each strict binary REPLY in `data` (buffered), in the order they came; each must be a
    void call's success (its result struct empty)."""
    seqids, at = [], 0
    while at < len(data):
        version, size = struct.unpack_from(">iI", data, at)
        at += 8 + size
        (seqid,) = struct.unpack_from(">i", data, at)
        assert version == -2147418110, data[at - 8 - size : at + 40]  # 0x80010002: a REPLY
        assert data[at + 4] == 0, data[at - 8 - size : at + 40]  # an empty result: success
        seqids.append(seqid)
        at += 5
    return seqids


async def test_calls_sent_in_one_piece_then_a_half_close_are_all_answered_in_order(
    make_server: ServerFactory,
) -> None:
    """A client that pipelines 3,000 publishes and then half-closes (as a script piping calls into a socket
    does) gets every reply, in order, before the server closes its side. The server used to close at the
    end of the stream: the last 92 were published and never answered (a retry would publish them again)."""
    from .test_malformed import call, message, string

    server = await make_server(publish_rate=0)
    publish = message(string(1, b"s"), string(2, b"c"))
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    writer.write(b"".join(call(b"sendMessage", publish, seqid) for seqid in range(1, 3001)))
    writer.write_eof()
    async with asyncio.timeout(20):
        data = await read_to_close(reader)
    writer.close()
    assert void_reply_seqids(data) == list(range(1, 3001))
    assert server.hub is not None
    assert server.hub.published_total == 3000


@pytest.mark.parametrize("cut", ["buffered", "framed", "streamed"])
async def test_a_half_close_inside_a_call_answers_the_calls_before_it_and_closes(
    make_server: ServerFactory, cut: str
) -> None:
    """A client that half-closes partway through a call has the calls before it answered, and then the
    connection closes: the cut call can never arrive (not a hang until the idle timeout, nor a crash). A
    buffered call that is streamed (one not all here yet: a long string) is cut as it is read."""
    from .test_malformed import call, message, string

    server = await make_server(publish_rate=0, idle_timeout=60)
    whole = call(b"sendMessage", message(string(1, b"s"), string(2, b"c")), 1) + call(
        b"sendMessage", message(string(1, b"s"), string(2, b"c")), 2)
    if cut == "streamed":  # a 100 KB string, of which 10 KB came
        sent = whole + call(b"sendMessage", message(string(1, b"s"), string(2, b"x" * 100_000)), 3)[:10_000]
    elif cut == "framed":
        frames = [call(b"sendMessage", message(string(1, b"s"), string(2, b"c")), seqid) for seqid in (1, 2, 3)]
        sent = b"".join(len(f).to_bytes(4, "big") + f for f in frames)[:-5]
    else:
        sent = whole + call(b"sendMessage", message(string(1, b"s"), string(2, b"c")), 3)[:-5]
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    writer.write(sent)
    await writer.drain()
    writer.write_eof()
    async with asyncio.timeout(10):
        data = await read_to_close(reader)
    writer.close()
    if cut == "framed":
        assert [int.from_bytes(data[i : i + 4], "big") for i in (0, 28)] == [24, 24]
        data = data[4:28] + data[32:]
    assert void_reply_seqids(data) == [1, 2]
    await wait_until(lambda: server.connection_count == 0)
    async with ChatClient(LOOPBACK, server.port) as client:
        assert await client.publish(Message(sender="s", content="others are served")) == 3
