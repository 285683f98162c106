"""Busy rooms, tried from outside: hundreds of parked polls, polls cut while they wait, linger.

A poll that waits holds no task (delivery.py): it is a record on its subscription that the hub answers
in one pass. Each test is a way that could lose a message, leave a subscription stuck, or answer a poll
that nobody asked to wait.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from thriftpy2.transport import TTransportException

from async_chat import ChatClient, InvalidRequest, Message
from async_chat.brokers.memory import MemoryBroker
from async_chat.codec import Codec
from async_chat.contract import ChatService
from async_chat.hub import Hub, HubLimits
from async_chat.server import ChatServer

from .conftest import LOOPBACK, ServerFactory, raw_connection, wait_until
from .test_hub import answered, publish
from .test_messaging import take


async def test_one_message_answers_every_parked_poll_and_leaves_none_waiting(server: ChatServer) -> None:
    """Three hundred connections each park a poll; one publish answers every one of them, each with
    that message, and no poll is left counted as waiting."""
    hub = server.hub
    assert hub is not None
    count = 300
    async with ChatClient(LOOPBACK, server.port) as client, contextlib.AsyncExitStack() as stack:
        subs = [await client.create_subscription("busy") for _ in range(count)]
        conns = [await stack.enter_async_context(raw_connection(server.port)) for _ in range(count)]
        polls = [asyncio.ensure_future(c.client.poll(s.subscription_id, 10, 20_000, s.next_seq))
                 for c, s in zip(conns, subs, strict=True)]
        await wait_until(lambda: hub.polls_waiting == count)
        seq = await client.publish(Message(sender="p", content="to all", room="busy"))
        batches = await asyncio.wait_for(asyncio.gather(*polls), 30)
    assert [[(m.seq, m.content) for m in b.messages] for b in batches] == [[(seq, "to all")]] * count
    assert all(b.missed == 0 and b.next_seq == seq + 1 for b in batches)
    assert hub.polls_waiting == 0


async def test_a_poll_cut_while_it_waits_frees_its_subscription_for_the_next(server: ChatServer) -> None:
    """A subscriber's connection dies while its poll waits. The same subscription, polled from a new
    connection, is served at once (not stuck behind the dead poll), and gets what was published since."""
    hub = server.hub
    assert hub is not None
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("cut")
        async with raw_connection(server.port) as doomed:
            waiting = asyncio.ensure_future(doomed.client.poll(sub.subscription_id, 10, 20_000, sub.next_seq))
            await wait_until(lambda: hub.polls_waiting == 1)
            doomed.writer.transport.abort()
            with pytest.raises((TTransportException, ConnectionError, OSError)):
                await asyncio.wait_for(waiting, 5)
        await wait_until(lambda: hub.polls_waiting == 0)
        seq = await client.publish(Message(sender="p", content="after the cut", room="cut"))
        batch = await client.poll(sub.subscription_id, 10, 5_000, sub.next_seq)
    assert [(m.seq, m.content) for m in batch.messages] == [(seq, "after the cut")]
    assert batch.missed == 0


async def test_a_parked_poll_whose_queue_overflowed_before_its_answer_reads_history() -> None:
    """Nine messages arrive in one loop iteration for a parked poll whose queue holds two: its answer
    reads the dropped ones back from history rather than reporting them missed."""
    hub = Hub(MemoryBroker(history=50, dedup_window=1), HubLimits(queue_size=2))
    await hub.start()
    try:
        sub = await hub.subscribe("r", 0)
        got = answered(hub.poll_now(sub.subscription_id, 100, 30, sub.next_seq))
        await publish(hub, 9)  # the memory broker never waits: all nine before the hub's pass
        delivery = await asyncio.wait_for(got, 5)
        assert [e.message.seq for e in delivery.entries] == list(range(1, 10))
        assert delivery.missed == 0
        assert delivery.next_seq == 10
        assert hub.dropped_total == 7  # the queue did overflow: history served what it dropped
    finally:
        await hub.aclose()


async def test_a_lingering_poll_gathers_what_arrives_within_its_linger(client: ChatClient) -> None:
    """linger_ms: messages published one by one while the poll lingers come back in one batch."""
    sub = await client.create_subscription("linger")
    poll = asyncio.ensure_future(client.poll(sub.subscription_id, 100, 20_000, sub.next_seq, linger_ms=1_500))
    seqs = [await client.publish(Message(sender="p", content=str(i), room="linger")) for i in range(3)]
    batch = await asyncio.wait_for(poll, 10)
    assert [m.seq for m in batch.messages] == seqs
    assert batch.next_seq == seqs[-1] + 1


async def test_a_lingering_poll_answers_at_once_when_its_batch_is_full(client: ChatClient) -> None:
    """A poll that would linger for a minute is answered as soon as max_messages are waiting."""
    sub = await client.create_subscription("full")
    poll = asyncio.ensure_future(client.poll(sub.subscription_id, 3, 60_000, sub.next_seq, linger_ms=60_000))
    seqs = [await client.publish(Message(sender="p", content=str(i), room="full")) for i in range(3)]
    batch = await asyncio.wait_for(poll, 10)  # far less than the linger asked for
    assert [m.seq for m in batch.messages] == seqs


async def test_a_lingering_stream_delivers_everything_in_order(make_server: ServerFactory) -> None:
    """A stream with linger_ms gets every message, in order, across a burst larger than its batches."""
    server = await make_server()
    async with ChatClient(LOOPBACK, server.port) as client, client.subscribe(
        "stream", max_messages=7, linger_ms=20
    ) as stream:
        seqs = [await client.publish(Message(sender="p", content=str(i), room="stream")) for i in range(40)]
        items = await take(stream, len(seqs))
    assert [getattr(item, "seq", item) for item in items] == seqs


async def test_a_negative_linger_is_refused(client: ChatClient) -> None:
    sub = await client.create_subscription("bad")
    with pytest.raises(InvalidRequest, match="linger_ms"):
        await client.poll(sub.subscription_id, 10, 0, 0, linger_ms=-1)


async def test_shutdown_answers_every_parked_poll(make_server: ServerFactory) -> None:
    """Closing the server answers each waiting poll (with what it has) before the connections go."""
    server = await make_server()
    hub = server.hub
    assert hub is not None
    async with ChatClient(LOOPBACK, server.port) as client:
        subs = [await client.create_subscription("bye") for _ in range(20)]
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(raw_connection(server.port)) for _ in range(20)]
        polls = [asyncio.ensure_future(c.client.poll(s.subscription_id, 10, 60_000, s.next_seq))
                 for c, s in zip(conns, subs, strict=True)]
        await wait_until(lambda: hub.polls_waiting == 20)
        closing = asyncio.ensure_future(server.aclose())
        batches = await asyncio.wait_for(asyncio.gather(*polls), 10)
        await asyncio.wait_for(closing, 10)
    assert all(b.messages == [] and b.missed == 0 for b in batches)


def test_the_poll_contract_keeps_its_classic_arguments() -> None:
    """linger_ms is an optional field after the classic four: a client generated from the older
    contract sends the same bytes, and the server answers it as before."""
    spec = ChatService.poll_args.thrift_spec
    assert [spec[i][1] for i in sorted(spec)] == ["subscription_id", "max_messages", "wait_ms", "from_seq", "linger_ms"]


async def _frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return await reader.readexactly(size)


async def test_a_call_pipelined_behind_a_parked_poll_is_answered_after_it(server: ChatServer) -> None:
    """Calls on a connection are answered in order: a call sent right behind a poll that parks waits for
    the poll's answer, then is answered itself (and sees what the poll got)."""
    hub = server.hub
    assert hub is not None
    codec = Codec(ChatService, "binary")
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("line")
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        try:
            calls = [
                codec.request("poll", 1, ChatService.poll_args(subscription_id=sub.subscription_id, max_messages=10,
                                                               wait_ms=20_000, from_seq=sub.next_seq)),
                codec.request("history", 2, ChatService.history_args(room="line", from_seq=1, limit=10)),
            ]
            writer.write(b"".join(len(c).to_bytes(4, "big") + c for c in calls))
            await wait_until(lambda: hub.polls_waiting == 1)
            seq = await client.publish(Message(sender="p", content="first", room="line"))
            first, second = [codec.reply_from(await asyncio.wait_for(_frame(reader), 10)) for _ in calls]
        finally:
            writer.close()
    assert first.seqid == 1
    assert [m.seq for m in first.body.success.messages] == [seq]
    assert second.seqid == 2
    assert [m.seq for m in second.body.success] == [seq]


async def test_two_polls_on_one_subscription_from_two_connections_take_turns(server: ChatServer) -> None:
    """A second poll on a subscription whose poll is parked waits its turn (polls on one subscription are
    served one at a time), then gets the next message: none is given to both, none to neither."""
    hub = server.hub
    assert hub is not None
    async with (
        ChatClient(LOOPBACK, server.port) as client,
        raw_connection(server.port) as a,
        raw_connection(server.port) as b,
    ):
        sub = await client.create_subscription("turns")
        first = asyncio.ensure_future(a.client.poll(sub.subscription_id, 1, 20_000))
        await wait_until(lambda: hub.polls_waiting == 1)
        second = asyncio.ensure_future(b.client.poll(sub.subscription_id, 1, 20_000))
        one = await client.publish(Message(sender="p", content="1", room="turns"))
        got_first = await asyncio.wait_for(first, 10)
        await wait_until(lambda: hub.polls_waiting == 1)  # the second, now waiting for a message
        two = await client.publish(Message(sender="p", content="2", room="turns"))
        got_second = await asyncio.wait_for(second, 10)
    assert [m.seq for m in got_first.messages] == [one]
    assert [m.seq for m in got_second.messages] == [two]
    assert got_second.missed == 0


async def test_unsubscribing_answers_the_parked_poll_at_once(server: ChatServer) -> None:
    """A subscription ended from another connection while its poll waits: the poll is answered (empty),
    not left to its wait, and nothing stays counted as waiting."""
    hub = server.hub
    assert hub is not None
    async with ChatClient(LOOPBACK, server.port) as client, raw_connection(server.port) as waiting:
        sub = await client.create_subscription("gone")
        poll = asyncio.ensure_future(waiting.client.poll(sub.subscription_id, 10, 60_000, sub.next_seq))
        await wait_until(lambda: hub.polls_waiting == 1)
        await client.unsubscribe(sub.subscription_id)
        batch = await asyncio.wait_for(poll, 10)  # far less than the minute it asked to wait
    assert batch.messages == []
    assert hub.polls_waiting == 0
