"""Limits a server puts on its clients: publish rates (token buckets per connection), connections."""

from __future__ import annotations

import asyncio

import pytest

from async_chat import ChatClient, Message, RateLimited
from async_chat.session import TokenBucket

from .conftest import LOOPBACK, ServerFactory, wait_until


def test_a_token_bucket_allows_bursts_then_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.1)  # the next token is 0.1 s away; nothing was spent
    now[0] += 0.05
    assert bucket.take() == pytest.approx(0.05)
    now[0] += 0.05
    assert bucket.take() == 0.0
    now[0] += 60  # a long pause saves up no more than the burst
    assert [bucket.take() for _ in range(4)].count(0.0) == 3


async def test_a_flooding_connection_is_rate_limited_and_others_are_not(make_server: ServerFactory) -> None:
    server = await make_server(publish_rate=1, publish_burst=5)  # 1/s: no refill during the test
    async with ChatClient(LOOPBACK, server.port, pool_size=1) as flood, ChatClient(LOOPBACK, server.port) as calm:
        for i in range(5):
            await flood.publish(Message(sender="f", content=str(i)))
        with pytest.raises(RateLimited, match=r"faster than 1/s \(bursts of 5\); retry in 0\.\d+s"):
            await flood.publish(Message(sender="f", content="one too many"))
        with pytest.raises(RateLimited):  # the classic call too (a TApplicationException on the wire)
            await flood.sendMessage(Message(sender="f", content="one too many"))
        assert await calm.publish(Message(sender="c", content="unaffected")) == 6
    assert server.hub is not None
    assert server.hub.published_total == 6  # the excess was refused, not queued


async def test_rate_limits_can_be_turned_off(make_server: ServerFactory) -> None:
    server = await make_server(publish_rate=0, publish_burst=1)
    async with ChatClient(LOOPBACK, server.port, pool_size=1) as client:
        for i in range(50):
            await client.publish(Message(sender="s", content=str(i)))


async def _refused(port: int) -> bool:
    """Open a connection and see whether the server closes it before any call (a refusal)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        async with asyncio.timeout(5):
            return await reader.read() == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"max_connections": 2}, "connection limit reached (2 in total)"),
        ({"max_connections_per_address": 2}, "connection limit reached (2 from 127.0.0.1)"),
    ],
    ids=["total", "per-address"],
)
async def test_connections_past_a_limit_are_closed_and_logged_once(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, limits: dict[str, int], says: str
) -> None:
    server = await make_server(**limits)
    async with ChatClient(LOOPBACK, server.port, pool_size=2) as holder:
        # Two calls in flight at once hold both pooled connections open.
        async with asyncio.TaskGroup() as group:
            polls = [group.create_task(holder.poll((await holder.create_subscription()).subscription_id, 1, 300))
                     for _ in range(2)]
            await wait_until(lambda: server.connection_count == 2)
            assert [await _refused(server.port) for _ in range(3)] == [True, True, True]
        assert all(p.done() for p in polls)
    assert caplog.text.count(says) == 1  # once per episode, not once per connection
    assert server.refused_total == 3
    await wait_until(lambda: server.connection_count == 0)
    async with ChatClient(LOOPBACK, server.port) as later:  # below the limit again: served
        assert await later.publish(Message(sender="s", content="back")) == 1
