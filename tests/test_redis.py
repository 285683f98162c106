"""Several server processes on one real redis-server: shared rooms, one seq, outages, data loss."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from async_chat import ChatClient, Message, Missed, Unavailable
from benchmarks.processes import LOOPBACK, RedisProcess, ServerProcess, start_server

from .certs import make_certificates

pytestmark = pytest.mark.one_loop  # the servers are processes of their own; the test's loop is not the subject

Nodes = Callable[..., Awaitable[list[ServerProcess]]]


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    server = RedisProcess(tmp_path, persistent=False)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture
async def nodes(redis: RedisProcess) -> AsyncIterator[Nodes]:
    """Start N server processes on the test's Redis; all are stopped at the end."""
    started: list[ServerProcess] = []

    async def start(count: int, *args: str, url: str | None = None) -> list[ServerProcess]:
        new = [await start_server("--broker", url or redis.url, "--broker-timeout", "1", *args) for _ in range(count)]
        started.extend(new)
        return new

    try:
        yield start
    finally:
        for node in started:
            await node.kill()
    assert_no_internal_errors(started)


def assert_no_internal_errors(servers: list[ServerProcess]) -> None:
    """Whatever Redis did, no call may have failed as a bug (INTERNAL_ERROR): only UNAVAILABLE."""
    for node in servers:
        bugs = [line for line in node.log if "event=internal_error" in line]
        assert not bugs, "\n".join(bugs)


async def collect(
    stream: AsyncIterator[Message | Missed], count: int | None = None, *, until_seq: int | None = None
) -> tuple[list[Message], int]:
    """Read `count` messages, or up to the one with `until_seq` (bounded in time), and how many the stream
    reported missed meanwhile."""
    messages, missed, _resets = await collect_noting_jumps(stream, count, until_seq=until_seq)
    return messages, missed


async def collect_noting_jumps(
    stream: AsyncIterator[Message | Missed], count: int | None = None, *, until_seq: int | None = None
) -> tuple[list[Message], int, int]:
    """As `collect`, and how many times the stream said the room was renumbered (Missed with reset)."""
    messages: list[Message] = []
    missed = resets = 0
    async with asyncio.timeout(30):
        async for item in stream:
            if isinstance(item, Missed):
                missed += item.count
                resets += item.reset
                continue
            messages.append(item)
            if len(messages) == count or (until_seq is not None and item.seq >= until_seq):
                break
    return messages, missed, resets


async def test_three_nodes_share_a_room_in_one_gapless_order(nodes: Nodes) -> None:
    servers = await nodes(3)
    per_publisher = 40
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(ChatClient(LOOPBACK, s.port, timeout=10)) for s in servers]
        streams = [await stack.enter_async_context(c.subscribe("shared")) for c in clients]

        async def publish_from(index: int) -> None:
            for i in range(per_publisher):
                await clients[index].publish(Message(sender=f"p{index}", content=str(i), room="shared"))

        readers = [asyncio.create_task(collect(s, 3 * per_publisher)) for s in streams]
        async with asyncio.TaskGroup() as publishers:
            for index in range(3):
                publishers.create_task(publish_from(index))
        results = [await r for r in readers]

    orders = [[(m.seq, m.sender, m.content) for m in got] for got, _missed in results]
    assert [missed for _got, missed in results] == [0, 0, 0]
    first = orders[0][0][0]
    assert [seq for seq, _s, _c in orders[0]] == list(range(first, first + 3 * per_publisher))  # gapless, one counter
    assert orders[0] == orders[1] == orders[2]  # every node delivers the same order
    for index in range(3):  # each publisher's messages in the order it sent them
        assert [int(c) for _seq, s, c in orders[0] if s == f"p{index}"] == list(range(per_publisher))


async def test_fan_out_costs_redis_one_reader_per_node_not_one_per_subscriber(
    redis: RedisProcess, nodes: Nodes
) -> None:

    a, b = await nodes(2)
    async with (
        aioredis.Redis.from_url(redis.url) as probe,
        ChatClient(LOOPBACK, a.port) as on_a,
        ChatClient(LOOPBACK, b.port, pool_size=4) as on_b,
    ):
        subs = [await on_b.create_subscription(f"room{i % 3}", 0) for i in range(60)]
        for i in range(3):
            await on_a.publish(Message(sender="s", content="x", room=f"room{i}"))
        for sub in subs:  # every subscriber got its message: the fan-out worked
            assert len((await on_b.poll(sub.subscription_id, 10, 5000)).messages) == 1
        clients = await probe.client_list()
    ours = [c for c in clients if c["cmd"] != "client|list"]
    assert len([c for c in ours if c["cmd"] == "xread"]) <= 2  # one reader per node at most
    assert len(ours) <= 8, ours  # a few pooled connections per node, whatever the 60 subscribers do


async def test_a_client_resumes_on_another_node_from_redis_history(nodes: Nodes) -> None:
    a, b = await nodes(2)
    async with ChatClient(LOOPBACK, a.port) as on_a, ChatClient(LOOPBACK, b.port) as on_b:
        for i in range(1, 11):
            await on_a.publish(Message(sender="s", content=str(i), room="r"))
        async with on_a.subscribe("r", from_seq=1) as stream:
            first, _ = await collect(stream, 5)
        resume_at = first[-1].seq + 1
        async with on_b.subscribe("r", from_seq=resume_at) as stream:
            await on_a.publish(Message(sender="s", content="11", room="r"))
            rest, missed = await collect(stream, 6)
    assert [m.content for m in first + rest] == [str(i) for i in range(1, 12)]
    assert missed == 0


async def test_a_retried_send_is_stored_once_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes(2)
    async with ChatClient(LOOPBACK, a.port) as on_a, ChatClient(LOOPBACK, b.port) as on_b:
        first = await on_a.publish(Message(sender="s", content="once", room="d", client_msg_id="id-1"))
        again = await on_b.publish(Message(sender="s", content="once", room="d", client_msg_id="id-1"))
        other = await on_b.publish(Message(sender="t", content="other sender", room="d", client_msg_id="id-1"))
        assert (again, other) == (first, first + 1)
        assert [m.content for m in await on_a.history("d", 1, 10)] == ["once", "other sender"]


async def test_redis_down_fails_publishes_fast_keeps_subscriptions_and_logs_once(
    redis: RedisProcess, nodes: Nodes
) -> None:
    a, b = await nodes(2)
    async with ChatClient(LOOPBACK, a.port, timeout=10) as on_a, ChatClient(LOOPBACK, b.port, timeout=10) as on_b:
        sub = await on_b.create_subscription("r", 0)
        before = await on_a.publish(Message(sender="s", content="before", room="r"))
        batch = await on_b.poll(sub.subscription_id, 10, 5000)
        assert [m.content for m in batch.messages] == ["before"]

        await redis.kill()
        for _ in range(20):
            with pytest.raises(Unavailable, match="broker"):
                await on_a.publish(Message(sender="s", content="lost?", room="r"))
        with pytest.raises(Unavailable, match="broker"):  # the classic call: a TApplicationException on the wire
            await on_a.sendMessage(Message(sender="s", content="lost?", room="r"))
        batch = await on_b.poll(sub.subscription_id, 10, 200)  # the subscription lives: an empty batch
        assert (batch.messages, batch.missed) == ([], 0)

        await redis.start()  # back, empty: no persistence
        seq = await publish_until_accepted(on_a, Message(sender="s", content="after", room="r"))
        assert seq > before  # a new epoch numbers above anything issued before: no seq is issued twice
        batch = await on_b.poll(sub.subscription_id, 10, 5000, batch.next_seq)
        assert [(m.seq, m.content) for m in batch.messages] == [(seq, "after")]
        assert (batch.renumbered, batch.missed) == (True, 0)  # told of the jump; a jump is not 10**13 lost
    for node in (a, b):
        await node.stop()
        assert sum("unreachable" in line for line in node.log) == 1, node.log  # once, not per call
        assert sum("reachable again" in line for line in node.log) == 1


async def test_a_frozen_redis_fails_publishes_within_the_timeout_not_a_hang(
    redis: RedisProcess, nodes: Nodes
) -> None:
    [a] = await nodes(1)
    async with ChatClient(LOOPBACK, a.port, timeout=10) as client:
        await client.publish(Message(sender="s", content="1"))
        redis.freeze()
        try:
            with pytest.raises(Unavailable, match="broker"):
                await client.publish(Message(sender="s", content="2"))  # --broker-timeout 1
        finally:
            redis.thaw()
        assert await publish_until_accepted(client, Message(sender="s", content="3")) >= 2


async def test_messages_lost_with_redis_reach_subscribers_as_missed_and_no_seq_is_reused(
    redis: RedisProcess, nodes: Nodes
) -> None:
    a, b = await nodes(2)
    async with (
        ChatClient(LOOPBACK, a.port, timeout=10) as on_a,
        ChatClient(LOOPBACK, b.port, timeout=30) as on_b,
        on_b.subscribe("x", wait_ms=1000) as stream,
    ):
        for i in range(5):
            await on_a.publish(Message(sender="s", content=f"kept {i}", room="x"))
        kept, missed = await collect(stream, 5)
        b.proc.send_signal(signal.SIGSTOP)  # b stops reading Redis (a paused machine)
        try:
            lost = [await on_a.publish(Message(sender="s", content=f"lost {i}", room="x")) for i in range(10)]
            await redis.restart()  # empty: the 10 are gone before b read them
        finally:
            b.proc.send_signal(signal.SIGCONT)
        after = await publish_until_accepted(on_a, Message(sender="s", content="after", room="x"))
        rest, missed_after, jumps = await collect_noting_jumps(stream, until_seq=after)
    first = kept[0].seq
    assert [m.seq for m in kept] == list(range(first, first + 5))
    assert missed == 0
    assert lost == list(range(first + 5, first + 15))
    assert after > lost[-1]  # a new epoch: seqs first+5.. are never reused for other messages
    # b may have received the first of the ten before it froze (Redis had already sent it); the rest are
    # gone with Redis, and the subscriber is told the room was renumbered: a loss it cannot count.
    early = [(m.seq, m.content) for m in rest[:-1]]
    assert early == [(seq, f"lost {seq - lost[0]}") for seq in lost[: len(early)]]
    assert (rest[-1].seq, rest[-1].content) == (after, "after")
    assert (jumps, missed_after) == (1, 0)
    await a.stop()
    assert any("lost its data" in line or "restarted" in line for line in a.log), a.log


@pytest.mark.parametrize("kind", ["password", "tls", "tls-and-password"])
async def test_a_password_and_tls_in_the_broker_url(tmp_path: Path, kind: str) -> None:
    certs = make_certificates(tmp_path) if "tls" in kind else None
    tls = (certs.server_cert, certs.server_key, certs.ca) if certs else None
    redis = RedisProcess(tmp_path, persistent=False, password="s3cret" if "password" in kind else None, tls=tls)
    await redis.start()
    try:
        node = await start_server("--broker", redis.url)
        try:
            async with ChatClient(LOOPBACK, node.port) as client, client.subscribe("t") as stream:
                seq = await client.publish(Message(sender="s", content="over " + kind, room="t"))
                got, _missed = await collect(stream, 1)
            assert (got[0].seq, got[0].content) == (seq, "over " + kind)
        finally:
            await node.stop()
        assert not any("s3cret" in line for line in node.log)  # the password never reaches the log
    finally:
        await redis.kill()


@pytest.mark.parametrize("problem", ["wrong-password", "nothing-listening"])
async def test_a_broker_that_cannot_be_reached_at_start_is_one_line_and_exit_1(tmp_path: Path, problem: str) -> None:
    redis = RedisProcess(tmp_path, persistent=False, password="right")
    if problem == "wrong-password":
        await redis.start()
    url = f"redis://:wrong@{LOOPBACK}:{redis.port}/0"
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "async_chat.server", "--port", "0", "--broker", url, "--broker-timeout", "2"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        if redis.proc is not None:
            await redis.kill()
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"async_chat: cannot reach the broker redis://***@{LOOPBACK}:{redis.port}/0: "), last
    assert "wrong" not in done.stderr
    assert "Traceback" not in done.stderr


async def test_redis_back_from_an_older_snapshot_reuses_no_seq(redis: RedisProcess, nodes: Nodes) -> None:
    """RDB, Redis's default persistence, comes back with the counters of the last snapshot: behind."""
    [a] = await nodes(1)
    async with (
        aioredis.Redis.from_url(redis.url) as probe,
        ChatClient(LOOPBACK, a.port, timeout=10) as client,
        client.subscribe("snap") as stream,
    ):
        for i in range(5):
            await client.publish(Message(sender="s", content=f"saved {i}", room="snap"))
        await probe.save()  # the snapshot holds seqs 1..5
        for i in range(5):
            await client.publish(Message(sender="s", content=f"after the snapshot {i}", room="snap"))
        before, _ = await collect(stream, 10)
        await redis.restart()  # SIGKILL, then back from the snapshot: its counter says 5, the node saw 10
        seq = await publish_until_accepted(client, Message(sender="s", content="next", room="snap"))
        after, missed, jumps = await collect_noting_jumps(stream, 1)
    first = before[0].seq
    assert [m.seq for m in before] == list(range(first, first + 10))
    assert seq > first + 9  # not first + 5: Redis restarted, so a new epoch numbers above everything
    assert [(m.seq, m.content) for m in after] == [(seq, "next")]
    assert (missed, jumps) == (0, 1)  # this subscriber had everything: told of the jump, nothing counted
    await a.stop()
    assert any("broker restarted" in line for line in a.log)


async def publish_until_accepted(client: ChatClient, message: Message, attempts: int = 200) -> int:
    """Publish, retrying while the server says UNAVAILABLE (a bounded number of times, 50 ms apart)."""
    for _ in range(attempts):
        try:
            return await client.publish(message)
        except Unavailable:
            await asyncio.sleep(0.05)  # a retry pace, as a client's would be; not a wait for an event
    raise AssertionError(f"still unavailable after {attempts} attempts")


@pytest.mark.parametrize("persistent", [True, False], ids=["aof-always", "no-persistence"])
async def test_redis_killed_mid_stream_every_acknowledged_message_is_delivered_or_missed(
    tmp_path: Path, persistent: bool
) -> None:
    redis = RedisProcess(tmp_path, persistent=persistent)
    await redis.start()
    servers: list[ServerProcess] = []
    try:
        servers = [await start_server("--broker", redis.url, "--broker-timeout", "1") for _ in range(2)]
        a, b = servers
        acked: dict[int, str] = {}
        total = 300
        async with (
            ChatClient(LOOPBACK, a.port, timeout=10) as on_a,
            ChatClient(LOOPBACK, b.port) as on_b,
            on_b.subscribe("k", wait_ms=500) as stream,
        ):
            counter = itertools.count()
            a_third_acked = asyncio.Event()

            async def publisher(via: ChatClient) -> None:
                while len(acked) < total:
                    content = f"m{next(counter)}"
                    message = Message(sender="s", content=content, room="k")
                    acked[await publish_until_accepted(via, message)] = content
                    if len(acked) >= total // 3:
                        a_third_acked.set()

            async def killer() -> None:
                await a_third_acked.wait()
                await redis.restart()  # SIGKILL mid-stream, then back (empty unless persistent)

            async with asyncio.timeout(60), asyncio.TaskGroup() as group:
                for via in (on_a, on_a, on_b, on_b):  # concurrent publishers on both nodes
                    group.create_task(publisher(via))
                group.create_task(killer())
            got, missed, jumps = await collect_noting_jumps(stream, until_seq=max(acked))
            delivered = {m.seq: m.content for m in got}
    finally:
        for node in servers:
            await node.kill()
        await redis.kill()

    assert_no_internal_errors(servers)
    assert all(delivered[seq] == content for seq, content in acked.items() if seq in delivered)  # no seq reused
    lost = [seq for seq in acked if seq not in delivered]
    # Every acknowledged message is delivered, or its loss is reported: counted in missed, or (lost before a
    # renumbering, so uncountable) announced by the jump. A restart always starts a new epoch.
    assert jumps == 1
    assert not lost or missed or jumps, f"{len(lost)} acknowledged message(s) lost without a word"
    if persistent:
        assert lost == []  # fsynced on every write: nothing acknowledged is lost
        assert missed == 0


async def test_a_node_that_never_saw_the_lost_seqs_reuses_none_after_an_older_snapshot(
    redis: RedisProcess, nodes: Nodes
) -> None:
    """Finding 3a: a acknowledged seqs after Redis's last snapshot; Redis came back from that snapshot and b,
    which never saw them, issued the first of them again within 50 ms (the epoch was unchanged)."""
    a, b = await nodes(2)
    async with (
        aioredis.Redis.from_url(redis.url) as probe,
        ChatClient(LOOPBACK, a.port) as on_a,
        ChatClient(LOOPBACK, b.port) as on_b,
    ):
        acked = [await on_a.publish(Message(sender="a", content=f"saved {i}", room="s")) for i in range(5)]
        await probe.save()
        acked += [await on_a.publish(Message(sender="a", content=f"unsaved {i}", room="s")) for i in range(5)]
        a.proc.send_signal(signal.SIGSTOP)  # a, which knows the lost seqs, cannot re-seed anything in time
        try:
            await redis.restart()  # back from the snapshot: the room's counter says acked[4]
            seq = await publish_until_accepted(on_b, Message(sender="b", content="b's first", room="s"))
        finally:
            a.proc.send_signal(signal.SIGCONT)
    assert seq > max(acked)


@pytest.mark.parametrize("flush", ["flushall", "flushdb"])
async def test_an_idle_node_that_issued_the_lost_seqs_sees_none_reused_after_a_flush(
    redis: RedisProcess, nodes: Nodes, flush: str
) -> None:
    """Finding 3b: b issued 6..10, Redis was flushed, b stayed idle; a issued 6 again after the grace,
    because an idle node never re-seeds what it knows."""
    a, b = await nodes(2)
    async with (
        aioredis.Redis.from_url(redis.url) as probe,
        ChatClient(LOOPBACK, a.port) as on_a,
        ChatClient(LOOPBACK, b.port) as on_b,
    ):
        acked = [await on_a.publish(Message(sender="a", content=str(i), room="f")) for i in range(5)]
        acked += [await on_b.publish(Message(sender="b", content=str(i), room="f")) for i in range(5)]
        await getattr(probe, flush)()
        seq = await publish_until_accepted(on_a, Message(sender="a", content="after", room="f"))
    assert seq > max(acked)
    await a.stop()
    assert any("lost its data" in line for line in a.log)


async def test_a_node_started_after_a_flush_reuses_no_seq(redis: RedisProcess, nodes: Nodes) -> None:
    """No node that knew the old numbering is left: only the bound from Redis's clock stands between the
    new node and the seqs already handed out."""
    [a] = await nodes(1)
    async with ChatClient(LOOPBACK, a.port) as on_a:
        acked = [await on_a.publish(Message(sender="a", content=str(i), room="n")) for i in range(10)]
    await a.stop()
    async with aioredis.Redis.from_url(redis.url) as probe:
        await probe.flushall()
    [c] = await nodes(1)
    async with ChatClient(LOOPBACK, c.port) as on_c:
        seq = await publish_until_accepted(on_c, Message(sender="c", content="first after", room="n"))
    assert seq > max(acked)


async def test_a_room_opened_by_a_subscriber_after_a_flush_is_a_renumbering_not_a_made_up_loss(
    redis: RedisProcess, nodes: Nodes
) -> None:
    """After a flush, a subscriber on another node opens the room at a floor above the new epoch's. The
    first message after must reach the old subscriber as a renumbering with nothing missed, not as the
    tens of thousands of seqs between the two floors (which the stress run once counted as missed)."""
    a, b = await nodes(2)
    async with (
        aioredis.Redis.from_url(redis.url) as probe,
        ChatClient(LOOPBACK, a.port) as on_a,
        ChatClient(LOOPBACK, b.port) as on_b,
        on_a.subscribe("x", wait_ms=500) as old,
    ):
        for i in range(3):
            await on_a.publish(Message(sender="s", content=f"before {i}", room="x"))
        await collect(old, 3)
        await probe.flushall()
        await publish_until_accepted(on_b, Message(sender="s", content="elsewhere", room="y"))  # a new epoch
        await on_b.create_subscription("x", 0)  # opens the room's counter above the new epoch's floor
        seq = await on_b.publish(Message(sender="s", content="after", room="x"))
        after, missed, jumps = await collect_noting_jumps(old, until_seq=seq)
    assert [(m.seq, m.content) for m in after] == [(seq, "after")]
    assert (missed, jumps) == (0, 1)


async def test_a_subscription_ended_at_once_never_takes_the_broker_down(nodes: Nodes) -> None:
    """Found by CI: a room watched and unwatched while the reader refreshed its keys' TTL left the reader
    an XREAD of no stream, which Redis refuses; the node marked the broker down and refused the next
    publish UNAVAILABLE. Subscriptions that end as soon as they start, over and over (a room's first watch
    is refreshed at once, and --room-ttl 1 s makes a refresh due every 250 ms), must leave every publish
    accepted."""
    (node,) = await nodes(1, "--room-ttl", "1")
    async with ChatClient(LOOPBACK, node.port, timeout=10) as client:
        for i in range(60):
            sub = await client.create_subscription(f"brief-{i}", 0)
            await client.unsubscribe(sub.subscription_id)
            assert await client.publish(Message(sender="s", content=str(i), room="other")) > 0
    assert not [line for line in node.log if "event=broker_down" in line]
