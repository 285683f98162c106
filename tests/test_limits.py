"""Limits a server puts on its clients: call sizes, publish rates (token buckets per connection), connections."""

from __future__ import annotations

import asyncio
import re
import resource
import struct

import pytest

from async_chat import ChatClient, ErrorCode, Message, RateLimited
from async_chat.contract import WireChatError
from async_chat.session import TokenBucket

from .conftest import LOOPBACK, ServerFactory, raw_connection, read_to_close, wait_until


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
        with pytest.raises(RateLimited, match=r"faster than 1/s \(bursts of 5\); retry in [01]\.\d+s"):
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
            return await read_to_close(reader) == b""
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


def _publish_call(content_field: bytes, seqid: int = 1) -> bytes:
    """A strict-binary `publish` call whose Message carries sender "s" and then `content_field` bytes."""
    name = b"publish"
    head = struct.pack(">iI", -2147418111, len(name)) + name + struct.pack(">i", seqid)  # 0x80010001: a call
    sender = b"\x0b\x00\x01" + struct.pack(">i", 1) + b"s"
    return head + b"\x0c\x00\x01" + sender + content_field


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
async def test_a_2_gib_length_claim_closes_the_connection_without_allocating_it(
    make_server: ServerFactory, client: ChatClient, caplog: pytest.LogCaptureFixture, framed: bool
) -> None:
    server = await make_server()
    peak_before = _peak_rss_bytes()
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        if framed:  # one sound framed call first, then a frame claiming 2 GiB
            call = _publish_call(b"\x0b\x00\x02" + struct.pack(">i", 2) + b"ok\x00\x00")
            writer.write(struct.pack(">i", len(call)) + call + struct.pack(">i", 2**31 - 1) + b"\x80\x01")
        else:  # a string claiming 2 GiB, of which 3 bytes come
            writer.write(_publish_call(b"\x0b\x00\x02" + struct.pack(">i", 2**31 - 1) + b"abc"))
        await writer.drain()
        async with asyncio.timeout(10):
            rest = await read_to_close(reader)  # the framed call's answer (if any), then the server closes
    finally:
        writer.close()
    # Framed: the sound call's answer; the 2 GiB frame's two bytes hold no header to answer. Buffered: the
    # call's header came whole, so its client is told why before the connection closes.
    assert rest.count(b"publish") == 1
    assert (b"TOO_LARGE" in rest) == (not framed)
    # (the buffered string's 3 bytes already came: 2**31 - 4 more)
    assert re.search(r"(claimed 214748364[47] bytes more|a call of 2147483647 bytes); the limit is 262144"
                     r" \(--max-call-bytes\)", caplog.text)
    assert server.oversized_total == 1
    assert _peak_rss_bytes() - peak_before < 64 * 1024 * 1024  # not the 2 GiB it claimed
    async with ChatClient(LOOPBACK, server.port) as other:
        assert await other.publish(Message(sender="s", content="others are served")) == (2 if framed else 1)


async def test_a_call_made_of_many_small_pieces_is_cut_at_the_limit(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(max_call_bytes=20_000, max_content_bytes=1000)
    # 700 pieces of 47 bytes (33 KB): the byte limit cuts it at about 425, before the 1,000-value skip budget.
    unknown_fields = b"".join(b"\x0b" + struct.pack(">hi", 100 + i, 40) + b"x" * 40 for i in range(700))
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        writer.write(_publish_call(unknown_fields))
        await writer.drain()
        async with asyncio.timeout(10):
            rest = await read_to_close(reader)
    finally:
        writer.close()
    assert b"TOO_LARGE: a call ran past the limit of 20000 bytes" in rest  # its client is told why, then closed
    assert "a call ran past the limit of 20000 bytes" in caplog.text


async def test_subscriptions_per_connection_are_bounded(make_server: ServerFactory) -> None:
    server = await make_server(max_subscriptions_per_connection=3)
    async with raw_connection(server.port) as raw, raw_connection(server.port) as other:
        subs = [await raw.client.subscribe("r", 0) for _ in range(3)]
        with pytest.raises(WireChatError) as refused:
            await raw.client.subscribe("r", 0)
        assert (refused.value.code, refused.value.reason) == (
            ErrorCode.TOO_LARGE, "this connection holds 3 subscriptions, its limit; unsubscribe some first"
        )
        assert (await other.client.subscribe("r", 0)).subscription_id  # another connection has its own
        await raw.client.unsubscribe(subs[0].subscription_id)
        assert (await raw.client.subscribe("r", 0)).subscription_id


async def test_a_call_trickling_in_a_byte_at_a_time_is_cut_at_the_idle_timeout(make_server: ServerFactory) -> None:
    server = await make_server(idle_timeout=0.5, max_poll_wait_ms=100)
    whole = _publish_call(b"\x0b\x00\x02" + struct.pack(">i", 100) + b"x" * 100 + b"\x00\x00")
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    closed = asyncio.create_task(read_to_close(reader))  # done once the server closes it
    sent = 0
    try:
        async with asyncio.timeout(10):
            while not closed.done() and sent < len(whole):
                writer.write(whole[sent:sent + 1])
                sent += 1
                await asyncio.wait({closed}, timeout=0.05)  # the attacker's pace: a byte every 50 ms
        assert closed.done()
        assert await closed == b""
        assert sent < len(whole)  # cut off before the call was complete
    finally:
        closed.cancel()
        writer.close()
    await wait_until(lambda: server.connection_count == 0)
