"""Limits a server puts on each client: publish rates (token buckets per connection)."""

from __future__ import annotations

import pytest

from async_chat import ChatClient, Message, RateLimited
from async_chat.session import TokenBucket

from .conftest import LOOPBACK, ServerFactory


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
