"""Delivery you can prove, tried from outside: replies cut mid-way, polls repeated from new connections.

Each test is one way a subscriber could lose a message without being told; each must end with every
seq delivered once, in order, or counted in `missed` at its gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import struct

import pytest

from async_chat import ChatClient, ChatError, Message, Missed, Unavailable
from async_chat.contract import ChatService
from benchmarks.processes import UNLIMITED, start_server

from .conftest import LOOPBACK, ServerFactory, raw_connection, read_to_close
from .proxy import Proxy
from .test_malformed import call, message, string
from .test_messaging import take


async def test_a_poll_reply_cut_mid_way_is_served_again_to_the_stream(make_server: ServerFactory) -> None:
    """Finding 1: a poll answered 1..5 whose reply died with its connection; the stream reconnected,
    polled the same subscription and got 6..10 with missed = 0."""
    server = await make_server(history=0)  # nothing to read back from: only the repeatable poll can help
    async with (
        Proxy(server.port) as proxy,
        ChatClient(LOOPBACK, server.port) as publisher,
        ChatClient(LOOPBACK, proxy.port) as client,
        client.subscribe("r", max_messages=5) as stream,
    ):
        for i in range(1, 11):
            await publisher.publish(Message(sender="p", content=f"m{i:02}", room="r"))
        proxy.cut_once_within(b"m01")  # the first poll's reply, which carries 1..5, dies halfway
        items = await take(stream, 10)
        assert proxy.cuts == 1
        assert stream.reconnects >= 1
    assert not [i for i in items if isinstance(i, Missed)]
    assert [m.seq for m in items] == list(range(1, 11))


async def test_the_raw_recipe_polls_again_from_a_new_connection_with_its_position(make_server: ServerFactory) -> None:
    """What the README tells authors of other clients: keep next_seq, and after a lost reply poll the same
    subscription from a new connection with it."""
    server = await make_server(history=0)
    async with Proxy(server.port) as proxy, ChatClient(LOOPBACK, server.port) as publisher:
        async with raw_connection(proxy.port, ChatService) as first:
            sub = await first.client.subscribe("r", 0)
            for i in range(1, 11):
                await publisher.publish(Message(sender="p", content=f"m{i:02}", room="r"))
            proxy.cut_once_within(b"m01")
            lost = False
            try:
                await first.client.poll(sub.subscription_id, 5, 0, sub.next_seq)
            except Exception:  # the reply died halfway: whatever thriftpy2 raises for a cut connection
                lost = True
            assert lost
        async with raw_connection(server.port, ChatService) as second:
            again = await second.client.poll(sub.subscription_id, 5, 0, sub.next_seq)
            rest = await second.client.poll(sub.subscription_id, 5, 0, again.next_seq)
    assert ([m.seq for m in again.messages], again.missed) == ([1, 2, 3, 4, 5], 0)
    assert ([m.seq for m in rest.messages], rest.missed) == ([6, 7, 8, 9, 10], 0)


async def test_a_classic_poll_without_a_position_is_at_most_once_per_batch(make_server: ServerFactory) -> None:
    """The documented behaviour of clients generated before from_seq: a lost reply is a lost batch."""
    server = await make_server(history=0)
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("r", 0)
        for i in range(1, 4):
            await client.publish(Message(sender="p", content=str(i), room="r"))
        assert [m.seq for m in (await client.poll(sub.subscription_id, 10, 0)).messages] == [1, 2, 3]
        assert (await client.poll(sub.subscription_id, 10, 0)).messages == []


async def test_a_frame_holding_two_calls_is_closed_with_a_reason_not_half_answered(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 5: two calls in one frame had the first answered and the second dropped, its caller waiting
    forever. A frame is one call: the connection is closed, with a log line that says why."""
    server = await make_server()
    one = call(b"publish", message(string(1, b"s"), string(2, b"x")))
    frame = struct.pack(">i", 2 * len(one)) + one + one
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        writer.write(frame)
        async with asyncio.timeout(10):
            answer = await read_to_close(reader)
    finally:
        writer.close()
    assert answer == b""
    assert any("after its call" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    async with ChatClient(LOOPBACK, server.port, transport="framed") as client:  # one call a frame: served
        assert await client.publish(Message(sender="s", content="x", room="r")) >= 1


@pytest.mark.one_loop
async def test_sigterm_under_load_acknowledges_nothing_its_pollers_do_not_get() -> None:
    """Finding 4: under load, SIGTERM had 1 to 11 publishes acknowledged after the signal that reached no
    subscriber, although all were long-polling. Every acknowledged publish must reach every subscriber
    that was polling throughout (the memory broker's messages die with the process: no one can be told)."""
    server = await start_server(*UNLIMITED)
    acked: list[int] = []
    refused: list[ChatError] = []
    got: list[list[int]] = [[] for _ in range(4)]
    polling = [asyncio.Event() for _ in got]
    publishing = asyncio.Event()

    async def subscriber(index: int) -> None:
        async with ChatClient(LOOPBACK, server.port, pool_size=1, retries=0) as client:
            sub = await client.create_subscription("load", 0)
            position = sub.next_seq
            polling[index].set()
            with contextlib.suppress(ChatError):  # the server has gone: this subscriber is done
                for _ in range(100_000):
                    batch = await client.poll(sub.subscription_id, 1000, 10_000, position)
                    assert batch.missed == 0
                    got[index].extend(m.seq for m in batch.messages)
                    position = batch.next_seq

    async def publisher(index: int) -> None:
        async with ChatClient(LOOPBACK, server.port, pool_size=1) as client:
            for i in range(100_000):
                try:
                    acked.append(await client.publish(Message(sender=f"p{index}", content=str(i), room="load")))
                except ChatError as exc:
                    refused.append(exc)
                    return
                if len(acked) >= 400:
                    publishing.set()

    try:
        async with asyncio.timeout(60):
            subscribers = [asyncio.create_task(subscriber(i)) for i in range(len(got))]
            for event in polling:
                await event.wait()
            publishers = [asyncio.create_task(publisher(i)) for i in range(4)]
            await publishing.wait()
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*publishers, *subscribers)
            assert await server.proc.wait() == 0
    finally:
        await server.kill()
    assert len(refused) == 4
    assert all(isinstance(e, Unavailable) for e in refused)
    for seqs in got:
        assert seqs == sorted(acked), f"{len(set(acked) - set(seqs))} acknowledged publishes never arrived"
