"""Bounded under any client: each way an adversarial run held a server's memory or slots, tried on a real
server process. None of these asserts a time: each waits for what the old server never did (a close, an
answer) within the test's own timeout, or checks a memory bound far from what the old server reached."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from async_chat import ChatClient, Message, TooLarge, Unauthorized, Unavailable
from async_chat.auth import mint
from benchmarks.processes import LOOPBACK, RedisProcess, ServerProcess, start_server

from .certs import make_certificates
from .conftest import read_to_close
from .test_malformed import call, string
from .test_operations import metrics_port, scrape

pytestmark = pytest.mark.one_loop  # the subject is a server process; the test's loop only drives it

MiB = 1024 * 1024
SHORT = ("--idle-timeout", "3", "--max-poll-wait-ms", "1000", "--subscription-ttl", "3")
"""Timeouts short enough that a test sees a connection cut at the idle timeout."""


async def logged(server: ServerProcess, text: str, count: int = 1) -> None:
    """Until the server's log has `count` lines with `text`, within 30 s."""
    async with asyncio.timeout(30):
        await server.logged(text, count)


async def closed_on(port: int, data: bytes, *, told: bool = False) -> None:
    """Send `data` on a new connection: the server must close it, with no reply or (`told`: a call whose
    header it read) with only a TOO_LARGE error for that call, so that its client knows why."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        rest = await read_to_close(reader)
    finally:
        writer.close()
    if told:
        assert b"TOO_LARGE" in rest, rest
        assert rest.count(b"publish") == 1
    else:
        assert rest == b""


async def served(port: int) -> None:
    """A normal client is served: a publish is answered."""
    async with ChatClient(LOOPBACK, port, timeout=10) as client:
        assert await client.publish(Message(sender="normal", content="still here", room="normal")) >= 1


async def served_once_slots_free(port: int) -> None:
    """A new client is served as soon as the server has a slot for it: refused at accept (the limit)
    meanwhile, retried at a client's pace, within the test's bound."""
    async with asyncio.timeout(30):
        while True:
            try:
                await served(port)
                return
            except Unavailable:
                await asyncio.sleep(0.1)  # a client's retry pace


async def never_reading(port: int, data: bytes, receive_window: int | None = None) -> asyncio.StreamWriter:
    """A connection that sends `data` at once and never reads a byte of what comes back."""
    sock = socket.socket()
    if receive_window is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_window)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.transport.set_write_buffer_limits(high=0)
    writer.write(data)
    return writer


async def kill_with(server: ServerProcess, stalled: list[asyncio.StreamWriter]) -> None:
    """End a test's server, and its stalled connections first."""
    for writer in stalled:
        writer.transport.abort()
    await server.kill()


async def test_clients_that_stop_reading_hold_bounded_memory_and_their_slots_only_until_the_idle_timeout() -> None:
    """Finding 1: ten connections with poll replies unread grew RSS by 63 MB each and were never closed,
    so three of them locked out everyone under --max-connections 3."""
    server = await start_server("--publish-rate", "0", "--max-connections", "3", *SHORT)
    stalled: list[asyncio.StreamWriter] = []
    try:
        async with ChatClient(LOOPBACK, server.port) as client:
            for i in range(200):  # 200 x 60 KB in history: one history() reply could be 12 MB
                await client.publish(Message(sender="p", content=f"{i:05}" + "x" * 60_000, room="big"))
        base = server.rss_bytes()
        asks = call(b"history", string(1, b"big") + b"\x0a\x00\x02" + struct.pack(">q", 1)
                    + b"\x08\x00\x03" + struct.pack(">i", 1000) + b"\x00")
        for _ in range(3):
            stalled.append(await never_reading(server.port, asks * 50))  # fifty asks, and never a byte read
        await logged(server, "event=connection_stalled")  # aborted at the idle timeout, not held forever
        growth = (server.rss_bytes() - base) / MiB
        await served_once_slots_free(server.port)
    finally:
        await kill_with(server, stalled)
    print(f"three stalled readers: server RSS grew {growth:.1f} MiB")
    assert growth < 32  # was 63 MB a connection; now a reply of at most --max-reply-bytes each


async def test_subscribers_that_stop_reading_in_a_busy_room_hold_bounded_memory_and_are_cut() -> None:
    """The same attack on parked polls, which the hub's pass answers by callback rather than a task: three
    subscribers pipeline fifty polls each and never read, while 36 MB is published to their room. Each
    holds at most its queue, a reply and the unsent bytes' bound, until the idle timeout aborts it."""
    server = await start_server(
        "--publish-rate", "0", "--max-connections", "4", "--history", "10", "--metrics-port", "0", *SHORT
    )
    stalled: list[asyncio.StreamWriter] = []
    try:
        async with ChatClient(LOOPBACK, server.port) as client:
            subs = [await client.create_subscription("busy") for _ in range(3)]
            base = server.rss_bytes()
            for sub in subs:
                polls = call(b"poll", string(1, sub.subscription_id.encode()) + b"\x08\x00\x02"
                             + struct.pack(">i", 1000) + b"\x08\x00\x03" + struct.pack(">i", 1000) + b"\x00")
                # fifty polls, parked one at a time, and never a byte read; a small window, so that the
                # replies stay in the server rather than in the kernel's buffers
                stalled.append(await never_reading(server.port, polls * 50, receive_window=4096))
            await gauge_reaches(server, "async_chat_polls_waiting", 3)
            for i in range(600):  # 600 x 60 KB: every parked poll is answered, and answered again
                await client.publish(Message(sender="p", content=f"{i:05}" + "x" * 60_000, room="busy"))
        growth = (server.rss_bytes() - base) / MiB
        await logged(server, "event=connection_stalled")  # aborted at the idle timeout (one line an episode)
        await gauge_reaches(server, "async_chat_connections", 0)  # every one of them: none held forever
        await served(server.port)
    finally:
        await kill_with(server, stalled)
    print(f"three stalled subscribers: server RSS grew {growth:.1f} MiB")
    assert growth < 16  # a queue's bound and a reply each (history keeps 10): unbounded, 150 replies of 256 KiB


async def gauge_reaches(server: ServerProcess, name: str, value: float) -> None:
    """Until the server's metrics show `value` for the gauge `name` (another process: no event to wait on)."""
    port = metrics_port(server)
    async with asyncio.timeout(30):
        while (await scrape(port))[(name, ())] != value:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_flood_of_bad_connections_is_a_few_log_lines_not_one_each() -> None:
    """Refusals are logged once per episode: a client opening 200 connections of garbage, or of calls too
    large, fills no disk."""
    server = await start_server()
    try:
        claim = b"\x0c\x00\x01\x0b\x00\x02" + struct.pack(">i", 2**31 - 1)  # a 2 GiB content
        for payload, told in ((b"GET / HTTP/1.1\r\n\r\n", False), (call(b"publish", claim), True)):
            for _ in range(100):
                await closed_on(server.port, payload, told=told)
        await served(server.port)
    finally:
        await server.kill()
    assert sum("event=connection_refused" in line for line in server.log) == 1
    assert sum("event=call_too_large" in line for line in server.log) == 1


async def test_an_endless_compact_varint_is_refused_at_once() -> None:
    """Finding 2: `82 21` then 200 KB of ff bytes froze the server for seconds (quadratic); a 1 MiB one for
    minutes. A varint longer than 10 bytes is malformed: the connection is closed with a reason."""
    server = await start_server()
    try:
        await closed_on(server.port, b"\x82\x21" + b"\xff" * 200_000)
        await logged(server, "varint longer than 10 bytes")
        await served(server.port)
    finally:
        await server.kill()


@pytest.mark.parametrize("framing", ["buffered", "framed"])
async def test_a_million_unknown_values_are_refused_at_their_header(framing: str) -> None:
    """Finding 2 too: a 1 MB list<bool> in a field the contract does not have cost a second of the loop."""
    big = str(2 * MiB)  # the call within --max-call-bytes: the skip budget, not the size limit, refuses it
    server = await start_server("--max-call-bytes", big, "--max-reply-bytes", big)
    try:
        elements = 1_000_000
        body = b"\x82\x21\x01\x07publish" + b"\x19\xf1" + bytes([0x80 | (elements & 0x7F)]) + bytes(
            [0x80 | ((elements >> 7) & 0x7F), elements >> 14]
        ) + b"\x01" * elements + b"\x00\x00"
        data = struct.pack(">i", len(body)) + body if framing == "framed" else body
        await closed_on(server.port, data, told=True)
        await logged(server, "values in fields this server does not know")
    finally:
        await server.kill()


async def test_a_framed_call_of_half_a_megabyte_is_answered() -> None:
    """Finding 3: framed calls of about 500 KB or more, within --max-call-bytes, hung until the idle
    timeout (reading paused at 256 KiB while the connection waited for the whole frame)."""
    big = str(2 * MiB)  # frames of half a megabyte and more, within the limit
    server = await start_server("--max-call-bytes", big, "--max-reply-bytes", big)
    try:
        async with ChatClient(LOOPBACK, server.port, transport="framed", timeout=20) as client:
            with pytest.raises(TooLarge, match="content is 600000 bytes"):
                await client.publish(Message(sender="s", content="x" * 600_000, room="r"))
            async with ChatClient(LOOPBACK, server.port, transport="framed", protocol="compact") as compact:
                with pytest.raises(TooLarge):
                    await compact.publish(Message(sender="s", content="y" * 900_000, room="r"))
    finally:
        await server.kill()


async def test_tls_handshakes_that_never_finish_count_against_the_limits_and_are_cut(tmp_path: Path) -> None:
    """Finding 4: 60 handshakes that never finished were held about 60 s each, uncounted by
    --max-connections-per-address 20."""
    certs = make_certificates(tmp_path)
    server = await start_server("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
                                "--max-connections-per-address", "20", *SHORT)
    try:
        silent = [await asyncio.open_connection(LOOPBACK, server.port) for _ in range(60)]
        async with asyncio.timeout(30):
            ends = await asyncio.gather(*(read_to_close(reader) for reader, _ in silent))
        assert ends == [b""] * 60  # 40 refused at accept, 20 aborted at the idle timeout
        await logged(server, "its TLS handshake did not finish")  # once for the episode, not 20 times
        assert sum("connection limit reached" in line for line in server.log) == 1
        for _, writer in silent:
            writer.close()
        context = ssl.create_default_context(cafile=str(certs.ca))
        async with ChatClient(LOOPBACK, server.port, ssl=context, server_hostname="localhost") as client:
            assert await client.publish(Message(sender="s", content="over TLS", room="r")) >= 1
    finally:
        await server.kill()


async def test_one_client_filling_the_room_table_locks_nobody_out() -> None:
    """Finding 5: 10,000 publishes to new rooms, and every new room was refused until a restart."""
    server = await start_server("--publish-rate", "0", "--max-rooms", "100")
    try:
        async with ChatClient(LOOPBACK, server.port) as flooder, ChatClient(LOOPBACK, server.port) as other:
            watched = await other.create_subscription("mine", 0)
            await other.publish(Message(sender="other", content="kept", room="mine"))
            for i in range(500):
                await flooder.publish(Message(sender="flooder", content="x", room=f"flood-{i}"))
            assert await other.publish(Message(sender="other", content="new room", room="fresh")) >= 1
            batch = await other.poll(watched.subscription_id, 10, 0, watched.next_seq)
            assert [m.content for m in batch.messages] == ["kept"]  # a room with a subscriber is never forgotten
            assert [m.content for m in await other.history("mine", 1, 10)] == ["kept"]
    finally:
        await server.kill()


async def test_on_redis_history_applies_and_every_room_key_expires(tmp_path: Path) -> None:
    """Finding 5 on Redis: no room bound at all, and every stream kept at least 10,000 entries whatever
    --history said. Now a stream keeps --history (at least 100), and every key of a room has a TTL."""
    redis = RedisProcess(tmp_path, persistent=False)
    await redis.start()
    server = await start_server("--broker", redis.url, "--publish-rate", "0", "--history", "50", "--room-ttl", "600")
    try:
        async with ChatClient(LOOPBACK, server.port) as client, aioredis.Redis.from_url(redis.url) as probe:
            for i in range(300):
                await client.publish(Message(sender="s", content=str(i), room="capped", client_msg_id=f"id{i}"))
            assert await probe.xlen("async_chat:room:{capped}:log") == 100
            assert len(await client.history("capped", 1, 1000)) == 50
            keys = [k async for k in probe.scan_iter("async_chat:*") if k != b"async_chat:epoch"]
            ttls = [await probe.pttl(k) for k in keys]
            assert keys
            assert all(0 < ttl <= 600_000 for ttl in ttls), dict(zip(keys, ttls, strict=True))
    finally:
        await server.kill()
        await redis.kill()


async def test_a_redis_out_of_memory_refuses_publishes_without_an_outage(tmp_path: Path) -> None:
    """A full Redis (maxmemory, noeviction) answers every write with an error: that is a refusal the client
    can act on (UNAVAILABLE, retry later), not an outage to log and reconnect from."""
    redis = RedisProcess(tmp_path, persistent=False)
    await redis.start()
    server = await start_server("--broker", redis.url, "--publish-rate", "0")
    try:
        async with ChatClient(LOOPBACK, server.port) as client, aioredis.Redis.from_url(redis.url) as probe:
            await probe.config_set("maxmemory", str(4 * MiB))
            refused: Unavailable | None = None
            for i in range(10_000):  # 400 MB if it all fitted: bounded by the refusal
                try:
                    await client.publish(Message(sender="s", content="x" * 40_000, room=f"full-{i % 50}"))
                except Unavailable as exc:
                    refused = exc
                    break
            assert refused is not None
            assert "refused the call (command not allowed when used memory > 'maxmemory'" in str(refused)
            assert "script" not in str(refused)  # refused whole, before the script ran: never half a publish
            await probe.config_set("maxmemory", "0")
            assert await client.publish(Message(sender="s", content="room again", room="after")) >= 1
    finally:
        await server.kill()
        await redis.kill()
    assert not [line for line in server.log if "event=broker_down" in line]


async def test_the_memory_budget_holds_whatever_one_client_publishes() -> None:
    """Finding 6: a full room held about 70 MB and the defaults multiplied out to 690 GB, filled by one
    client at 190 MB/s. The store keeps to --max-memory: here 32 MiB against 160 MB published."""
    server = await start_server("--publish-rate", "0", "--max-memory", str(32 * MiB))
    try:
        async with ChatClient(LOOPBACK, server.port, pool_size=8) as client:
            await client.publish(Message(sender="s", content="warm", room="warm"))
            base = server.rss_bytes()
            content = "x" * 64_000
            for room in range(50):
                await asyncio.gather(*(
                    client.publish(Message(sender="s", content=content, room=f"r{room}", client_msg_id=f"{room}-{i}"))
                    for i in range(50)
                ))
            growth = (server.rss_bytes() - base) / MiB
            assert len(await client.history("r49", 1, 1000)) > len(await client.history("r0", 1, 1000))
        await served(server.port)
    finally:
        await server.kill()
    print(f"160 MB published under --max-memory 32 MiB: server RSS grew {growth:.1f} MiB")
    assert growth < 96  # 160 MB published; the store keeps 32 MiB (the rest is allocator slack)


async def test_a_non_ascii_token_is_unauthorized_not_an_internal_error(tmp_path: Path) -> None:
    """Finding 7: a non-ASCII token got INTERNAL_ERROR and a traceback at error level, every try."""
    secret = tmp_path / "secret"
    secret.write_text("s" * 48)
    server = await start_server("--auth-secret-file", str(secret))
    try:
        async with ChatClient(LOOPBACK, server.port, token="v1.é.1.x") as client:
            for _ in range(3):
                with pytest.raises(Unauthorized, match="ASCII"):
                    await client.publish(Message(sender="s", content="x"))
        good = mint(b"s" * 48, "alice", 60)
        async with ChatClient(LOOPBACK, server.port, token=good) as client:
            assert await client.publish(Message(sender="s", content="x")) >= 1
    finally:
        await server.kill()
    assert not [line for line in server.log if "level=error" in line or "Traceback" in line]


async def test_a_buffered_claim_of_two_billion_values_is_closed_at_once_not_at_the_idle_timeout() -> None:
    """Finding 8: a buffered call claiming a 2**31-element container in a field of another type waited for
    its bytes until the idle timeout (120 s); framed, it was closed at once."""
    server = await start_server()  # the default idle timeout: 120 s, longer than this test may take
    try:
        claim = b"\x0f\x00\x01\x08" + struct.pack(">i", 2**31 - 1) + b"\x00\x00\x00\x01"
        await closed_on(server.port, call(b"publish", claim), told=True)
        await logged(server, "values in fields this server does not know")
        await served(server.port)
    finally:
        await server.kill()

