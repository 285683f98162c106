"""The hub over the memory broker, without the network: cursors, replay, overflow and expiry in detail."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_chat import InvalidRequest, Message, NoSuchSubscription, Unavailable
from async_chat.brokers.memory import MemoryBroker
from async_chat.delivery import Delivery, Parked
from async_chat.hub import CHUNK, TICK, Hub, HubLimits, _ParkedPoll

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


async def drain(hub: Hub, sub_id: str, per_poll: int) -> list[tuple[list[int], int]]:
    """(seqs, missed) of each batch until one comes back empty (bounded)."""
    batches = []
    for _ in range(200):
        batch = await hub.poll(sub_id, per_poll, 0)
        if not batch.messages and not batch.missed:
            return batches
        batches.append(([m.seq for m in batch.messages], batch.missed))
    raise AssertionError("the subscription never ran dry")


async def test_live_overflow_during_a_replay_is_read_back_from_history(hub: Hub) -> None:
    await publish(hub, 5)
    sub = await hub.subscribe("r", 1)
    await publish(hub, 7)  # seqs 6..12 into a queue of 4: 6, 7, 8 dropped from it, but history holds them
    batches = await drain(hub, sub.subscription_id, 100)
    assert [seq for seqs, _ in batches for seq in seqs] == list(range(1, 13))
    assert sum(missed for _, missed in batches) == 0


async def test_missed_is_reported_at_its_gap_and_only_for_what_history_lost() -> None:
    """Finding 2: replaying 1..20 three at a time while 21..30 overflow a queue of 5 reported missed=5
    with seqs 1-3, although the gap was 21..25 and history still held it."""
    hub = Hub(MemoryBroker(history=25, dedup_window=3), HubLimits(queue_size=5))
    await hub.start()
    try:
        await publish(hub, 20)
        sub = await hub.subscribe("r", 1)
        await publish(hub, 10)  # 21..30: the queue of 5 keeps 26..30; history (25) still holds 6..30
        batches = await drain(hub, sub.subscription_id, 3)
        assert [seq for seqs, _ in batches for seq in seqs] == list(range(6, 31))
        assert batches[0] == ([6, 7, 8], 5)  # 1..5 left history before the replay reached them: here, first
        assert all(missed == 0 for _, missed in batches[1:])
    finally:
        await hub.aclose()


async def test_a_gap_is_reported_by_the_batch_whose_first_message_follows_it() -> None:
    hub = Hub(MemoryBroker(history=0, dedup_window=3), HubLimits(queue_size=3))
    await hub.start()
    try:
        sub = await hub.subscribe("r", 0)
        await publish(hub, 2)  # 1, 2 polled below; then 3..8 overflow a queue of 3 with no history
        first = await hub.poll(sub.subscription_id, 10, 0)
        await publish(hub, 6)
        assert ([m.seq for m in first.messages], first.missed) == ([1, 2], 0)
        assert await drain(hub, sub.subscription_id, 10) == [([6, 7, 8], 3)]
    finally:
        await hub.aclose()


async def test_a_poll_reply_lost_with_its_connection_is_served_again() -> None:
    """Finding 1: a poll answers 1..5, the reply is lost; polling again from the client's own position
    must give 1..5 again (a lost reply costs a re-send, never a message)."""
    hub = Hub(MemoryBroker(history=0, dedup_window=3), HubLimits(queue_size=100))
    await hub.start()
    try:
        sub = await hub.subscribe("r", 0)
        await publish(hub, 10)
        lost = await hub.poll(sub.subscription_id, 5, 0, from_seq=sub.next_seq)
        assert [m.seq for m in lost.messages] == [1, 2, 3, 4, 5]
        again = await hub.poll(sub.subscription_id, 5, 0, from_seq=sub.next_seq)  # the same position
        assert ([m.seq for m in again.messages], again.missed, again.next_seq) == ([1, 2, 3, 4, 5], 0, 6)
        rest = await hub.poll(sub.subscription_id, 10, 0, from_seq=again.next_seq)
        assert ([m.seq for m in rest.messages], rest.missed) == ([6, 7, 8, 9, 10], 0)
        with pytest.raises(InvalidRequest):
            await hub.poll(sub.subscription_id, 10, 0, from_seq=50)
    finally:
        await hub.aclose()


async def test_a_rewind_past_the_last_batch_reads_history_and_counts_only_what_it_lost(hub: Hub) -> None:
    sub = await hub.subscribe("r", 0)
    await publish(hub, 4)
    first = await hub.poll(sub.subscription_id, 2, 0, from_seq=1)
    second = await hub.poll(sub.subscription_id, 2, 0, from_seq=first.next_seq)
    assert [m.seq for m in second.messages] == [3, 4]
    # A client that only ever got what came before the first batch: history (20) serves all of it again.
    batch = await hub.poll(sub.subscription_id, 10, 0, from_seq=1)
    assert ([m.seq for m in batch.messages], batch.missed, batch.next_seq) == ([1, 2, 3, 4], 0, 5)


async def test_a_lost_batch_too_large_to_keep_is_read_back_from_history() -> None:
    hub = Hub(MemoryBroker(history=20, dedup_window=3), HubLimits(queue_size=100, queue_bytes=200))
    await hub.start()
    try:
        sub = await hub.subscribe("r", 0)
        await publish(hub, 5)
        lost = await hub.poll(sub.subscription_id, 10, 0, from_seq=1)
        assert hub._subs[sub.subscription_id].last is None  # over queue_bytes: not kept
        again = await hub.poll(sub.subscription_id, 10, 0, from_seq=1)
        assert [m.seq for m in again.messages] == [m.seq for m in lost.messages] == [1, 2, 3, 4, 5]
        assert again.missed == 0
    finally:
        await hub.aclose()


async def test_a_poll_without_a_position_is_at_most_once_per_batch(hub: Hub) -> None:
    sub = await hub.subscribe("r", 0)
    await publish(hub, 3)
    assert [m.seq for m in (await hub.poll(sub.subscription_id, 10, 0)).messages] == [1, 2, 3]
    assert (await hub.poll(sub.subscription_id, 10, 0)).messages == []


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


async def test_expiry_spares_a_subscription_whose_poll_is_parked(hub: Hub, clock: Clock) -> None:
    """A poll parked with no task (what the server does with most waiting polls) holds its subscription
    as a waiting task does: the TTL does not take it from under the poll."""
    idle = await hub.subscribe("r", 0)
    busy = await hub.subscribe("r", 0)
    got = answered(hub.poll_now(busy.subscription_id, 10, 30))
    clock.now += 11
    assert hub.reap() == 1
    with pytest.raises(NoSuchSubscription):
        await hub.poll(idle.subscription_id, 10, 0)
    await publish(hub, 1)
    assert [e.message.seq for e in (await asyncio.wait_for(got, 5)).entries] == [1]


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


async def test_a_full_room_table_forgets_its_least_recently_used_idle_room(clock: Clock) -> None:
    """Finding 5: a full table refused every new room until a restart; one client could lock all others out."""
    broker = MemoryBroker(history=5, dedup_window=5, max_rooms=2, clock=clock)
    hub = Hub(broker, clock=clock)
    await hub.start()
    try:
        sub = await hub.subscribe("a", 0)
        await publish(hub, 1, room="a")
        await publish(hub, 1, room="b")
        assert await publish(hub, 1, room="c") == [1]  # "b", idle and unsubscribed, made way
        assert (await hub.broker.next_seq("b"), broker.forgotten) == (1, 1)
        assert [m.seq for m in (await hub.poll(sub.subscription_id, 10, 0)).messages] == [1]
        await hub.subscribe("c", 0)
        with pytest.raises(Unavailable, match="maximum of 2 rooms, each with a subscriber"):
            await publish(hub, 1, room="d")  # only when every room has a subscriber
        assert await publish(hub, 1, room="a") == [2]
    finally:
        await hub.aclose()


async def test_rooms_idle_past_the_ttl_without_subscribers_are_forgotten(clock: Clock) -> None:
    broker = MemoryBroker(history=5, dedup_window=5, room_ttl=60, clock=clock)
    hub = Hub(broker, clock=clock)
    await hub.start()
    try:
        await publish(hub, 3, room="old")
        await hub.subscribe("watched", 0)
        await publish(hub, 1, room="watched")
        clock.now += 61
        await publish(hub, 1, room="new")  # opening a room forgets those idle past the TTL
        assert await hub.broker.next_seq("old") == 1
        assert await hub.broker.next_seq("watched") == 2  # it has a subscriber: kept
    finally:
        await hub.aclose()


async def test_the_memory_budget_trims_the_least_recently_used_rooms_history_first(clock: Clock) -> None:
    """Finding 6: a room could hold 70 MB and 10,000 of them 690 GB. The store keeps to --max-memory."""
    broker = MemoryBroker(history=1000, dedup_window=1000, max_memory=1 << 20, clock=clock)
    hub = Hub(broker, clock=clock)
    await hub.start()
    try:
        big = "x" * 10_000
        for room in ("idle", "busy"):
            for i in range(60):
                await hub.publish(Message(sender="s", content=big, room=room, client_msg_id=f"{room}{i}"))
        assert broker.bytes <= broker.max_memory
        assert broker.trimmed > 0
        idle = await hub.broker.history("idle", 1, 1000)
        busy = await hub.broker.history("busy", 1, 1000)
        assert len(idle) < len(busy)  # the room published to least recently gave up its history first
        assert busy[-1].seq == 60  # the newest message is always kept
        # A replay from the start is told exactly what the budget took, at the gap.
        sub = await hub.subscribe("idle", 1)
        batches = await drain(hub, sub.subscription_id, 1000)
        assert batches[0][1] == 60 - len(idle)
        assert [seq for seqs, _ in batches for seq in seqs] == [m.seq for m in idle]
        assert sum(missed for _, missed in batches) == 60 - len(idle)
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
    assert ([m.seq for m in batch.messages], batch.missed, batch.next_seq) == ([1], 0, 2)
    batch = await hub.poll(sub.subscription_id, 10, 0)
    assert ([m.seq for m in batch.messages], batch.missed, batch.next_seq) == ([4], 2, 5)


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


@settings(max_examples=300, deadline=None)
@given(
    queue_size=st.integers(1, 8),
    history=st.integers(0, 12),
    from_seq=st.integers(0, 15),
    steps=st.lists(
        st.tuples(st.sampled_from(["publish", "poll", "lost", "park", "served"]), st.integers(1, 6)), max_size=30
    ),
)
def test_every_message_is_delivered_once_in_order_or_counted_missed_at_its_gap(
    queue_size: int, history: int, from_seq: int, steps: list[tuple[str, int]]
) -> None:
    """Whatever the interleaving of publishes, polls and replies lost on the way, a subscriber that says
    where it is gets every seq once, in order, or counted in missed exactly at its gap: each batch's
    first seq (or its next_seq when empty) is the client's position plus that batch's missed. Polls go
    through `Hub.poll`, or as the server serves them ("served": `poll_now`, else `poll_later`), or park
    to wait for the next publishes ("park") and are answered by the hub's pass."""

    async def scenario() -> None:
        hub = Hub(MemoryBroker(history=history, dedup_window=1), HubLimits(queue_size=queue_size))
        await hub.start()
        try:
            await publish(hub, 5)
            sub = await hub.subscribe("r", from_seq)
            position = sub.next_seq
            delivered: list[int] = []
            missed = 0

            async def poll(limit: int, lose: bool = False, way: str = "poll") -> None:
                nonlocal position, missed
                if way == "poll":
                    batch = await hub.poll(sub.subscription_id, limit, 0, from_seq=position)
                else:
                    batch = (await serve(hub, sub.subscription_id, limit, position, park=way == "park")).batch()
                if lose:
                    return  # the reply never arrived: the client polls again from the same position
                seqs = [m.seq for m in batch.messages]
                assert (seqs[0] if seqs else batch.next_seq) == position + batch.missed
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
                assert batch.next_seq == (seqs[-1] + 1 if seqs else position + batch.missed)
                delivered.extend(seqs)
                missed += batch.missed
                position = batch.next_seq

            for action, n in steps:
                if action == "publish":
                    await publish(hub, n)
                else:
                    await poll(n, lose=action == "lost", way=action)
            last = await hub.broker.next_seq("r") - 1
            for _ in range(20):  # enough polls of 100 to drain whatever is left (bounded: no endless loop)
                await poll(100)
            assert delivered == sorted(set(delivered))
            assert len(delivered) + missed == last - sub.next_seq + 1
        finally:
            await hub.aclose()

    asyncio.run(scenario())


async def serve(hub: Hub, sub_id: str, limit: int, position: int, park: bool = False, linger: float = 0.0) -> Delivery:
    """A poll served the way the server serves it: at once, parked, or awaited. Parked (`park`): a publish
    of three messages wakes it, and the hub's pass answers it."""
    answer = hub.poll_now(sub_id, limit, 30 if park else 0, position, linger)
    if answer is None:
        return await hub.poll_later(sub_id, limit, 0, position)
    if isinstance(answer, Parked):
        got = answered(answer)
        await publish(hub, 3)
        return await asyncio.wait_for(got, 5)
    return answer


def answered(answer: Delivery | Parked | None) -> asyncio.Future[Delivery]:
    """What the hub answers the parked poll `answer` with: the Delivery itself, where the server's processor
    would encode it and its connection write it."""
    assert isinstance(answer, Parked)
    got: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
    encoded: list[Delivery] = []

    def encode(delivery: Delivery) -> bytes:
        encoded.append(delivery)
        return b""  # bytes, as a reply is: a compiled hub checks what `encode` returns

    answer.encode = encode
    answer.deliver = lambda _reply: got.set_result(encoded[0])
    return got


def ends_within_its_linger(tick: int, due: float) -> bool:
    """`tick` is the last tick at or before `due` (a tick within a nanosecond of `due` counts as on it)."""
    return tick * TICK <= due + 1e-9 < (tick + 1) * TICK


def hairline_due(now: float) -> float:
    """A 20 ms linger's due time after `now`, on a whole millisecond, that the division by TICK puts a hair
    under its tick. How many there are depends on the float's binade, and the loop's clock is the machine's
    uptime: about one in 125 at 35,804 s, none from 2**16 s to 2**17. So later binades are tried too."""
    starts = [math.ceil(now) + 1] + [2**p + 1 for p in range(math.ceil(now).bit_length(), 25)]
    for start in starts:
        for ms in range(100_000):
            due = start + ms / 1000 + 0.02
            if (due / TICK) % 1 > 0.999999:
                return due
    raise AssertionError(f"no due time after {now} lands a hair under a tick")


async def test_a_linger_due_on_a_tick_ends_on_that_tick(hub: Hub) -> None:
    """uvloop's clock counts whole milliseconds, so a 20 ms linger is due on a 5 ms tick one time in five,
    and the float division can land a hair under it: it must still end on that tick, not 5 ms early (the
    suite's flake that found it: 35804.555 + 0.02 ended on 35804.570)."""
    hairline = hairline_due(asyncio.get_running_loop().time())
    end = hub._linger_end(hairline)
    assert end is not None
    assert ends_within_its_linger(end, hairline)


@pytest.mark.parametrize("linger", [0.0123, 0.02, 0.0371])
async def test_a_lingering_poll_is_answered_no_later_than_its_linger(hub: Hub, linger: float) -> None:
    """chat.thrift promises that a message waits at most linger_ms: a linger ends at the tick at or before
    its end, never the one after (a wait for a message, at the one after: never early)."""
    sub = await hub.subscribe("r", 0)
    waiting = hub.poll_now(sub.subscription_id, 100, 30, 0, linger)  # parked with nothing queued yet
    assert isinstance(waiting, _ParkedPoll)
    assert waiting.tick * TICK >= waiting.since + 30
    await publish(hub, 1)  # the first message: it lingers from when the poll came
    assert waiting.lingering
    assert ends_within_its_linger(waiting.tick, waiting.since + linger)
    waiting.cancel()

    await publish(hub, 1)  # a message already waits when the next poll comes: it lingers from the message
    oldest = hub._subs[sub.subscription_id].queue[0].at
    parked = hub.poll_now(sub.subscription_id, 100, 30, 0, linger)
    assert isinstance(parked, _ParkedPoll)
    assert ends_within_its_linger(parked.tick, oldest + linger)
    parked.cancel()


async def test_a_fan_out_answers_every_parked_poll_once_without_holding_the_loop_until_the_last(hub: Hub) -> None:
    """A busy room wakes hundreds of parked polls at once. Answered all in one callback, they held the loop
    for up to 18 ms (1,000 subscribers): every publish and poll that came meanwhile waited behind them. The
    hub answers them CHUNK at a time, and a callback queued after the publish runs before the last
    answer; each poll is still answered exactly once, and a poll cancelled meanwhile is skipped."""
    subs = [await hub.subscribe("r", 0) for _ in range(3 * CHUNK + 5)]
    parked = [hub.poll_now(sub.subscription_id, 100, 30, 0) for sub in subs]
    replies = [answered(answer) for answer in parked]
    await publish(hub, 1)  # wakes every parked poll: a fan-out of 3 x CHUNK + 5 answers
    gone = parked[2 * CHUNK + 1]
    assert isinstance(gone, Parked)
    gone.cancel()  # its connection closed while its answer was queued
    answered_before: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: answered_before.append(sum(r.done() for r in replies)))
    async with asyncio.timeout(10):
        await asyncio.gather(*(r for r in replies if r is not replies[2 * CHUNK + 1]))
    assert 0 < answered_before[0] < len(replies) - 1  # other callbacks ran between the answers
    assert not replies[2 * CHUNK + 1].done()
    seqs = [[e.message.seq for e in r.result().entries] for r in replies if r.done()]
    assert seqs == [[1]] * (len(replies) - 1)
