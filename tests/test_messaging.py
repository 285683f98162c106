"""Publishing, fan-out, order, replay, overflow, expiry and dedup, over real loopback connections."""

from __future__ import annotations

import asyncio

import pytest

from async_chat import (
    ChatClient,
    ChatServer,
    InvalidRequest,
    Message,
    Missed,
    NoSuchSubscription,
    TooLarge,
)

from .conftest import LOOPBACK, ServerFactory, wait_until


async def take(stream: object, n: int, timeout: float = 10.0) -> list[object]:
    items: list[object] = []
    async with asyncio.timeout(timeout):
        async for item in stream:  # type: ignore[attr-defined]
            items.append(item)
            if len(items) == n:
                break
    return items


async def test_messages_reach_subscribers_of_their_room_only(client: ChatClient) -> None:
    async with client.subscribe("a") as in_a, client.subscribe("b") as in_b, client.subscribe() as in_general:
        await client.publish(Message(sender="ann", content="to a", room="a"))
        await client.publish(Message(sender="bob", content="to b", room="b"))
        await client.sendMessage(Message(sender="cat", content="to general"))
        await client.publish(Message(sender="ann", content="to a again", room="a"))
        got_a, got_b, got_general = await take(in_a, 2), await take(in_b, 1), await take(in_general, 1)
    assert [(m.content, m.room, m.seq) for m in got_a] == [("to a", "a", 1), ("to a again", "a", 2)]
    assert [(m.content, m.room, m.seq) for m in got_b] == [("to b", "b", 1)]
    assert [(m.sender, m.room, m.seq) for m in got_general] == [("cat", "general", 1)]
    for m in got_a + got_b + got_general:
        assert m.sent_at_ms > 1_600_000_000_000


async def test_seq_is_gapless_and_ordered_under_concurrent_publishers(server: ChatServer) -> None:
    publishers, each = 8, 40
    async with ChatClient(LOOPBACK, server.port, pool_size=8) as client, client.subscribe("busy") as stream:

        async def publish_all(who: int) -> list[int]:
            return [
                await client.publish(Message(sender=f"p{who}", content=str(i), room="busy")) for i in range(each)
            ]

        returned = await asyncio.gather(*(publish_all(p) for p in range(publishers)))
        received = await take(stream, publishers * each)
    total = publishers * each
    assert sorted(seq for seqs in returned for seq in seqs) == list(range(1, total + 1))
    assert [m.seq for m in received] == list(range(1, total + 1))
    for p in range(publishers):  # each publisher's messages arrive in the order it sent them
        assert [int(m.content) for m in received if m.sender == f"p{p}"] == list(range(each))


async def test_replay_from_seq_then_live(client: ChatClient) -> None:
    for i in range(1, 11):
        await client.publish(Message(sender="s", content=f"m{i}", room="r"))
    async with client.subscribe("r", from_seq=4) as stream:
        replayed = await take(stream, 7)
        await client.publish(Message(sender="s", content="live", room="r"))
        live = await take(stream, 1)
    assert [m.seq for m in replayed] == list(range(4, 11))
    assert [(m.seq, m.content) for m in live] == [(11, "live")]


async def test_replay_past_retained_history_reports_missed(make_server: ServerFactory) -> None:
    server = await make_server(history=5)
    async with ChatClient(LOOPBACK, server.port) as client:
        for i in range(1, 11):
            await client.publish(Message(sender="s", content=f"m{i}", room="r"))
        async with client.subscribe("r", from_seq=1) as stream:
            items = await take(stream, 6)
    assert items[0] == Missed(count=5, next_seq=6)
    assert [m.seq for m in items[1:]] == [6, 7, 8, 9, 10]


async def test_history_reads_retained_messages(client: ChatClient) -> None:
    for i in range(1, 6):
        await client.publish(Message(sender="s", content=f"m{i}", room="h"))
    assert [m.seq for m in await client.history("h", 0, 100)] == [1, 2, 3, 4, 5]
    assert [m.content for m in await client.history("h", 3, 2)] == ["m3", "m4"]
    assert await client.history("never-written", 0, 10) == []
    with pytest.raises(InvalidRequest):
        await client.history("h", 0, 0)


async def test_many_subscribers_on_one_room_each_get_everything(server: ChatServer) -> None:
    async with ChatClient(LOOPBACK, server.port) as client:
        streams = [await client.subscribe("crowd").__aenter__() for _ in range(40)]
        try:
            for i in range(25):
                await client.publish(Message(sender="host", content=str(i), room="crowd"))
            results = await asyncio.gather(*(take(s, 25) for s in streams))
        finally:
            for s in streams:
                await s.aclose()
    for items in results:
        assert [m.seq for m in items] == list(range(1, 26))


async def test_queue_overflow_drops_oldest_and_reports_missed(make_server: ServerFactory) -> None:
    server = await make_server(queue_size=5, history=0)  # no history to read the dropped ones back from
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("slow", 0)
        for i in range(1, 13):
            await client.publish(Message(sender="fast", content=str(i), room="slow"))
        batch = await client.poll(sub.subscription_id, 100, 0)
        assert batch.missed == 7
        assert [m.seq for m in batch.messages] == [8, 9, 10, 11, 12]
        assert batch.next_seq == 13
        again = await client.poll(sub.subscription_id, 100, 0)
        assert (again.missed, again.messages, again.next_seq) == (0, [], 13)
    assert server.hub is not None
    assert server.hub.dropped_total == 7


async def test_stream_surfaces_missed_before_the_messages_after_the_gap(make_server: ServerFactory) -> None:
    server = await make_server(queue_size=3, history=0)
    async with ChatClient(LOOPBACK, server.port) as client, client.subscribe("slow") as stream:
        for i in range(1, 9):
            await client.publish(Message(sender="fast", content=str(i), room="slow"))
        items = await take(stream, 4)
    assert items[0] == Missed(count=5, next_seq=6)
    assert [m.seq for m in items[1:]] == [6, 7, 8]


async def test_long_poll_returns_when_a_message_arrives(client: ChatClient) -> None:
    sub = await client.create_subscription("lp", 0)
    poll = asyncio.create_task(client.poll(sub.subscription_id, 10, 20_000))
    await client.publish(Message(sender="s", content="wake up", room="lp"))
    async with asyncio.timeout(5):
        batch = await poll
    assert [m.content for m in batch.messages] == ["wake up"]


async def test_unpolled_subscription_expires(make_server: ServerFactory) -> None:
    server = await make_server(subscription_ttl=0.3, max_poll_wait_ms=100)
    assert server.hub is not None
    hub = server.hub
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("r", 0)
        assert hub.subscription_count == 1
        await wait_until(lambda: hub.subscription_count == 0)
        with pytest.raises(NoSuchSubscription):
            await client.poll(sub.subscription_id, 10, 0)
    assert hub.expired_total == 1


async def test_unsubscribe_frees_the_subscription(server: ChatServer, client: ChatClient) -> None:
    sub = await client.create_subscription("r", 0)
    await client.unsubscribe(sub.subscription_id)
    await client.unsubscribe("never-issued")  # ignored, not an error
    with pytest.raises(NoSuchSubscription):
        await client.poll(sub.subscription_id, 10, 0)
    assert server.hub is not None
    assert server.hub.subscription_count == 0


async def test_retried_send_with_same_client_msg_id_is_stored_once(client: ChatClient) -> None:
    first = await client.publish(Message(sender="ann", content="once", room="d", client_msg_id="k1"))
    retry = await client.publish(Message(sender="ann", content="once", room="d", client_msg_id="k1"))
    await client.sendMessage(Message(sender="ann", content="once", room="d", client_msg_id="k1"))
    other_sender = await client.publish(Message(sender="bob", content="mine", room="d", client_msg_id="k1"))
    other_room = await client.publish(Message(sender="ann", content="there", room="e", client_msg_id="k1"))
    assert (first, retry, other_sender, other_room) == (1, 1, 2, 1)
    assert [m.content for m in await client.history("d", 0, 10)] == ["once", "mine"]


async def test_every_control_character_in_a_name_is_refused_and_nothing_else_is(client: ChatClient) -> None:
    """Names are checked for control characters without a search when they are printable ASCII: around
    every boundary of that shortcut (ASCII's controls and DEL, C1, the line and paragraph separators), each
    code point in a sender, a room and a client_msg_id is refused exactly when chat.thrift says so."""
    controls = {*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029}
    for code in [*range(0x100), 0x2027, 0x2028, 0x2029, 0x202A]:
        name = f"a{chr(code)}b"
        for message in (Message(sender=name, content="x"), Message(sender="s", content="x", room=name),
                        Message(sender="s", content="x", room="names", client_msg_id=name)):
            if code in controls:
                with pytest.raises(InvalidRequest, match="control characters"):
                    await client.publish(message)
            else:
                assert await client.publish(message) >= 1, (hex(code), message)


async def test_invalid_messages_are_refused_with_a_reason(client: ChatClient) -> None:
    with pytest.raises(InvalidRequest, match="sender"):
        await client.publish(Message(sender="", content="x"))
    with pytest.raises(InvalidRequest, match="sender"):  # sendMessage: a TApplicationException on the wire
        await client.sendMessage(Message(sender="", content="x"))
    with pytest.raises(TooLarge, match="content"):
        await client.publish(Message(sender="s", content="x" * (64 * 1024 + 1)))
    with pytest.raises(TooLarge, match="room"):
        await client.create_subscription("r" * 300, 0)
    with pytest.raises(InvalidRequest, match="from_seq"):
        await client.create_subscription("r", -1)
    sub = await client.create_subscription("r", 0)
    with pytest.raises(InvalidRequest, match="max_messages"):
        await client.poll(sub.subscription_id, 0, 0)
    # The connection survived every refusal.
    assert await client.publish(Message(sender="s", content="fine")) == 1


async def test_seq_and_time_sent_by_a_client_are_ignored(client: ChatClient) -> None:
    seq = await client.publish(Message(sender="s", content="x", seq=999, sent_at_ms=1))
    [stored] = await client.history("general", 0, 10)
    assert seq == stored.seq == 1
    assert stored.sent_at_ms > 1


async def test_content_limit_counts_utf8_bytes_not_characters(client: ChatClient) -> None:
    limit = 64 * 1024
    assert await client.publish(Message(sender="s", content="x" * limit)) == 1
    assert await client.publish(Message(sender="s", content="é" * (limit // 2))) == 2  # 2 bytes each: exactly full
    with pytest.raises(TooLarge, match=f"{limit + 1} bytes"):
        await client.publish(Message(sender="s", content="é" * (limit // 2) + "x"))
