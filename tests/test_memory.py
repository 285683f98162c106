"""Server memory under attack, measured on a real server process (its RSS from /proc), while a normal
client keeps being served: a 2 GiB length claim, 10,000 messages to a subscriber that never polls, and
1,000 idle connections. Bounds are generous: they tell bounded from unbounded, not fast from slow."""

from __future__ import annotations

import asyncio
import struct

import pytest

from async_chat import ChatClient, Message
from benchmarks.processes import LOOPBACK, start_server

from .conftest import read_to_close

pytestmark = pytest.mark.one_loop  # the server is a process of its own

MiB = 1024 * 1024


async def normal_service(client: ChatClient, sub_id: str, n: int) -> None:
    """What a normal client does, checked: a publish, then the poll that receives it."""
    seq = await client.publish(Message(sender="normal", content=f"hello {n}", room="normal"))
    batch = await client.poll(sub_id, 10, 5000)
    assert [m.seq for m in batch.messages] == [seq]


async def test_memory_stays_bounded_under_three_attacks_and_normal_service_goes_on() -> None:
    server = await start_server("--publish-rate", "0")
    figures: dict[str, float] = {}
    try:
        async with ChatClient(LOOPBACK, server.port, pool_size=8) as client:
            normal = await client.create_subscription("normal", 0)
            for n in range(20):
                await normal_service(client, normal.subscription_id, n)
            base = server.rss_bytes()

            # 1. A string claiming 2 GiB.
            reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
            head = struct.pack(">iI", -2147418111, 7) + b"publish" + struct.pack(">i", 1)
            writer.write(head + b"\x0c\x00\x01\x0b\x00\x02" + struct.pack(">i", 2**31 - 1) + b"x" * 1000)
            async with asyncio.timeout(10):
                told = await read_to_close(reader)  # closed before it read the rest, saying why
            assert b"TOO_LARGE" in told
            writer.close()
            await normal_service(client, normal.subscription_id, 100)
            figures["2 GiB claim"] = (server.rss_bytes() - base) / MiB

            # 2. 10,000 messages of 10 KB to a subscriber that never polls (100 MB if it were all kept).
            await client.create_subscription("flood", 0)
            content = "x" * 10_000
            for chunk in range(50):
                await asyncio.gather(*(
                    client.publish(Message(sender="flooder", content=content, room="flood")) for _ in range(200)
                ))
                if chunk % 10 == 0:
                    await normal_service(client, normal.subscription_id, 200 + chunk)
            stats = await client.stats(5)
            flood = next(r for r in stats.top_rooms if r.room == "flood")
            assert flood.queued + flood.dropped == 10_000  # every message queued or counted as dropped
            assert flood.queued * 10_000 <= 256 * 1024  # the queue's byte bound (--queue-bytes)
            figures["10,000 x 10 KB to a stalled subscriber"] = (server.rss_bytes() - base) / MiB

            # 3. 1,000 idle connections.
            idle = [await asyncio.open_connection(LOOPBACK, server.port) for _ in range(1000)]
            try:
                async with asyncio.timeout(30):
                    # Another process: no event to wait on; ask its own count until it has accepted them all.
                    while (await client.stats(0)).connections < 1000:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                await normal_service(client, normal.subscription_id, 300)
                figures["+ 1,000 idle connections"] = (server.rss_bytes() - base) / MiB
            finally:
                for _reader, idle_writer in idle:
                    idle_writer.close()
    finally:
        await server.kill()
    print("server RSS growth, MiB:", {k: round(v, 1) for k, v in figures.items()}, f"(base {base / MiB:.0f} MiB)")
    assert figures["2 GiB claim"] < 16
    assert figures["10,000 x 10 KB to a stalled subscriber"] < 64  # ~20 MB: the queue and history of 1,000
    assert figures["+ 1,000 idle connections"] < 128
