"""The hub over the memory broker, without the network: cursors, replay, overflow and expiry in detail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_chat import Message, NoSuchSubscription, Unavailable
from async_chat.brokers.memory import MemoryBroker
from async_chat.hub import Hub, HubLimits

from .conftest import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def hub(clock: Clock) -> AsyncIterator[Hub]:
    hub = Hub(MemoryBroker(history=20, dedup_window=3), HubLimits(queue_size=4, subscription_ttl=10), clock=clock)
    await hub.start()
    yield hub
    await hub.aclose()


async def publish(hub: Hub, n: int, room: str = "r") -> list[int]:
    return [await hub.publish(Message(sender="s", content=str(i), room=room)) for i in range(n)]


async def test_replay_longer_than_the_queue_is_read_from_history_not_dropped(hub: Hub) -> None:
    await publish(hub, 10)
    sub = await hub.subscribe("r", 1)
    seqs: list[int] = []
    missed = 0
    for _ in range(5):
        batch = await hub.poll(sub.subscription_id, 3, 0)
        seqs += [m.seq for m in batch.messages]
        missed += batch.missed
    assert (seqs, missed) == (list(range(1, 11)), 0)


async def test_live_overflow_during_a_replay_is_counted_once(hub: Hub) -> None:
    await publish(hub, 5)
    sub = await hub.subscribe("r", 1)
    await publish(hub, 7)  # seqs 6..12 into a queue of 4: 6, 7, 8 dropped
    got: list[int] = []
    missed = 0
    while True:
        batch = await hub.poll(sub.subscription_id, 100, 0)
        if not batch.messages:
            break
        got += [m.seq for m in batch.messages]
        missed += batch.missed
    assert got == [1, 2, 3, 4, 5, 9, 10, 11, 12]
    assert missed == 3


async def test_resuming_past_the_end_of_a_forgotten_room_replays_it_from_the_start(hub: Hub) -> None:
    await publish(hub, 2)
    sub = await hub.subscribe("r", 50)
    assert sub.next_seq == 1
    batch = await hub.poll(sub.subscription_id, 10, 0)
    assert [m.seq for m in batch.messages] == [1, 2]


async def test_resuming_at_the_next_seq_is_live(hub: Hub) -> None:
    await publish(hub, 3)
    sub = await hub.subscribe("r", 4)
    assert (await hub.poll(sub.subscription_id, 10, 0)).messages == []
    await publish(hub, 1)
    assert [m.seq for m in (await hub.poll(sub.subscription_id, 10, 0)).messages] == [4]


async def test_expiry_spares_a_subscription_inside_a_poll(hub: Hub, clock: Clock) -> None:
    idle = await hub.subscribe("r", 0)
    busy = await hub.subscribe("r", 0)
    poll = asyncio.create_task(hub.poll(busy.subscription_id, 10, 30))
    await wait_until(lambda: hub.polls_waiting == 1)
    clock.now += 11
    assert hub.reap() == 1
    with pytest.raises(NoSuchSubscription):
        await hub.poll(idle.subscription_id, 10, 0)
    await publish(hub, 1)
    assert [m.seq for m in (await poll).messages] == [1]


async def test_polls_on_one_subscription_are_served_one_at_a_time(hub: Hub) -> None:
    sub = await hub.subscribe("r", 0)
    first = asyncio.create_task(hub.poll(sub.subscription_id, 1, 30))
    second = asyncio.create_task(hub.poll(sub.subscription_id, 1, 30))
    await wait_until(lambda: hub.polls_waiting == 1)  # the first waits; the second queues on its lock
    await publish(hub, 2)
    batches = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert sorted(m.seq for b in batches for m in b.messages) == [1, 2]


async def test_dedup_window_is_bounded(hub: Hub) -> None:
    seqs = [await hub.publish(Message(sender="s", content="x", room="r", client_msg_id=f"id{i}")) for i in range(4)]
    # The window holds 3 ids: id0 has fallen out, id3 is still remembered.
    again = await hub.publish(Message(sender="s", content="x", room="r", client_msg_id="id3"))
    forgotten = await hub.publish(Message(sender="s", content="x", room="r", client_msg_id="id0"))
    assert (seqs, again, forgotten) == ([1, 2, 3, 4], 4, 5)


async def test_subscription_limit_is_enforced(clock: Clock) -> None:
    hub = Hub(MemoryBroker(history=1, dedup_window=1), HubLimits(max_subscriptions=2), clock=clock)
    await hub.start()
    try:
        await hub.subscribe("r", 0)
        await hub.subscribe("r", 0)
        with pytest.raises(Unavailable, match="maximum of 2"):
            await hub.subscribe("r", 0)
    finally:
        await hub.aclose()


async def test_room_limit_refuses_new_rooms_but_serves_existing_ones(clock: Clock) -> None:
    hub = Hub(MemoryBroker(history=5, dedup_window=5, max_rooms=2), clock=clock)
    await hub.start()
    try:
        await publish(hub, 1, room="a")
        await publish(hub, 1, room="b")
        with pytest.raises(Unavailable, match="maximum of 2 rooms"):
            await publish(hub, 1, room="c")
        assert await publish(hub, 1, room="a") == [2]
    finally:
        await hub.aclose()


async def test_closing_wakes_polls_and_refuses_publishes(hub: Hub) -> None:
    sub = await hub.subscribe("r", 0)
    poll = asyncio.create_task(hub.poll(sub.subscription_id, 10, 30))
    await wait_until(lambda: hub.polls_waiting == 1)
    hub.begin_shutdown()
    batch = await asyncio.wait_for(poll, 5)
    assert batch.messages == []
    with pytest.raises(Unavailable):
        await publish(hub, 1)


async def test_a_seq_the_broker_never_delivered_is_counted_as_missed(hub: Hub) -> None:
    """A Redis broker may lose a message before this node reads it: the gap must reach the client."""
    sub = await hub.subscribe("r", 0)
    hub._deliver(Message(sender="s", content="a", room="r", seq=1))
    hub._deliver(Message(sender="s", content="d", room="r", seq=4))  # 2 and 3 never arrive
    batch = await hub.poll(sub.subscription_id, 10, 0)
    assert ([m.seq for m in batch.messages], batch.missed, batch.next_seq) == ([1, 4], 2, 5)


async def test_a_replay_the_broker_cannot_serve_now_is_an_empty_batch_not_an_error(hub: Hub) -> None:
    await publish(hub, 3)
    sub = await hub.subscribe("r", 1)

    async def broker_away(room: str, from_seq: int, limit: int) -> list[Message]:
        raise Unavailable("the broker is unreachable")

    real_history, hub.broker.history = hub.broker.history, broker_away  # type: ignore[method-assign]
    batch = await hub.poll(sub.subscription_id, 10, 0)
    assert (batch.messages, batch.missed, batch.next_seq) == ([], 0, 1)
    hub.broker.history = real_history  # type: ignore[method-assign]
    batch = await hub.poll(sub.subscription_id, 10, 0)
    assert [m.seq for m in batch.messages] == [1, 2, 3]


async def test_overflow_can_end_the_subscription_and_a_resubscribe_replays_from_history(clock: Clock) -> None:
    hub = Hub(MemoryBroker(history=20, dedup_window=3), HubLimits(queue_size=4, overflow="drop-subscription"),
              clock=clock)
    await hub.start()
    try:
        slow = await hub.subscribe("r", 0)
        fast = await hub.subscribe("r", 0)
        await publish(hub, 4)
        assert len((await hub.poll(fast.subscription_id, 10, 0)).messages) == 4
        await publish(hub, 1)  # the slow queue is full: the subscription ends, the fast one is untouched
        with pytest.raises(NoSuchSubscription):
            await hub.poll(slow.subscription_id, 10, 0)
        assert hub.evicted_total == 1
        assert [m.seq for m in (await hub.poll(fast.subscription_id, 10, 0)).messages] == [5]
        again = await hub.subscribe("r", 1)  # what a client does on NO_SUCH_SUBSCRIPTION: resume
        batch = await hub.poll(again.subscription_id, 10, 0)
        assert ([m.seq for m in batch.messages], batch.missed) == ([1, 2, 3, 4, 5], 0)
    finally:
        await hub.aclose()


@settings(max_examples=200, deadline=None)
@given(
    queue_size=st.integers(1, 8),
    history=st.integers(0, 12),
    from_seq=st.integers(0, 15),
    steps=st.lists(st.tuples(st.sampled_from(["publish", "poll"]), st.integers(1, 6)), max_size=25),
)
def test_every_message_is_delivered_once_in_order_or_counted_missed(
    queue_size: int, history: int, from_seq: int, steps: list[tuple[str, int]]
) -> None:
    """Whatever the interleaving of publishes and polls, a subscriber gets seqs in increasing order, each
    once, and delivered + missed covers every seq it was owed: loss is counted, never silent."""

    async def scenario() -> None:
        hub = Hub(MemoryBroker(history=history, dedup_window=1), HubLimits(queue_size=queue_size))
        await hub.start()
        try:
            await publish(hub, 5)
            sub = await hub.subscribe("r", from_seq)
            first_owed = sub.next_seq
            delivered: list[int] = []
            missed = 0

            async def drain(limit: int) -> None:
                nonlocal missed
                batch = await hub.poll(sub.subscription_id, limit, 0)
                delivered.extend(m.seq for m in batch.messages)
                missed += batch.missed

            for action, n in steps:
                if action == "publish":
                    await publish(hub, n)
                else:
                    await drain(n)
            last = await hub.broker.next_seq("r") - 1
            for _ in range(10):  # enough polls of 100 to drain whatever is left (bounded: no endless loop)
                await drain(100)
            assert delivered == sorted(set(delivered))
            assert len(delivered) + missed == last - first_owed + 1
        finally:
            await hub.aclose()

    asyncio.run(scenario())
