"""ChatClient: shared by many tasks, per-call timeouts, reconnecting subscriptions."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from async_chat import (
    CallTimeout,
    ChatClient,
    ChatServer,
    ConnectionLost,
    Message,
    Missed,
    Settings,
    TooLarge,
    Unavailable,
)
from async_chat.contract import ServerStats
from benchmarks.processes import start_server

from .conftest import LOOPBACK, ServerFactory, wait_until


async def test_one_client_shared_by_many_tasks(server: ChatServer) -> None:
    async with ChatClient(LOOPBACK, server.port, pool_size=4) as client:
        sends = [client.publish(Message(sender=f"t{i}", content=str(i), room="shared")) for i in range(200)]
        reads = [client.history("shared", 1, 10) for _ in range(50)]
        seqs = await asyncio.gather(*sends)
        await asyncio.gather(*reads)
        history = await client.history("shared", 1, 1000)
    assert sorted(seqs) == list(range(1, 201))
    # Every reply went to the task that asked: message i got the seq the server stored it under.
    assert {m.content: m.seq for m in history} == {str(i): seqs[i] for i in range(200)}
    assert server.connections_total <= 4


async def test_a_timed_out_call_leaves_its_connection_in_step(server: ChatServer) -> None:
    async with ChatClient(LOOPBACK, server.port, pool_size=1) as client:
        sub = await client.create_subscription("r", 0)
        with pytest.raises(CallTimeout):
            await client.call("poll", sub.subscription_id, 10, 1_000, timeout=0.1)
        # The late reply of that poll must not be read as the answer to these calls (pipelined behind it).
        seq = await client.publish(Message(sender="s", content="after", room="r"))
        assert [m.content for m in await client.history("r", 0, 10)] == ["after"]
    assert seq == 1
    assert server.connections_total == 1  # the same connection, still in step


async def test_unreachable_server_is_unavailable() -> None:
    probe = ChatServer(Settings(host=LOOPBACK, port=0))
    await probe.start()
    port = probe.port
    await probe.aclose()
    async with ChatClient(LOOPBACK, port, connect_timeout=2) as client:
        with pytest.raises(Unavailable, match="cannot connect"):
            await client.publish(Message(sender="s", content="x"))


async def test_closed_client_refuses_calls(server: ChatServer) -> None:
    client = ChatClient(LOOPBACK, server.port)
    await client.aclose()
    with pytest.raises(Unavailable, match="closed"):
        await client.publish(Message(sender="s", content="x"))


async def test_stream_survives_a_dropped_connection_without_loss(server: ChatServer) -> None:
    async with ChatClient(LOOPBACK, server.port) as client, client.subscribe("r", wait_ms=5_000) as stream:
        await client.publish(Message(sender="s", content="1", room="r"))
        [first] = [m async for m in _first(stream, 1)]
        # Cut the stream's connection from the server side, mid long-poll.
        first_sub = stream.subscription_id
        for conn in list(server._connections):
            conn.abort()
        await client.publish(Message(sender="s", content="2", room="r"))
        await client.publish(Message(sender="s", content="3", room="r"))
        rest = [m async for m in _first(stream, 2)]
    assert [m.content for m in [first, *rest]] == ["1", "2", "3"]
    assert stream.subscription_id == first_sub  # resumed the same subscription: nothing replayed twice
    assert stream.reconnects >= 1


async def test_stream_reconnects_and_resumes_after_the_server_restarts(make_server: ServerFactory) -> None:
    first = await make_server()
    port = first.port
    async with ChatClient(LOOPBACK, port) as client, client.subscribe("r", wait_ms=5_000) as stream:
        for i in range(3):
            await client.publish(Message(sender="s", content=f"before {i}", room="r"))
        before = [m async for m in _first(stream, 3)]
        assert [m.seq for m in before] == [1, 2, 3]
        await first.aclose()
        await make_server(port=port)  # a new process would look the same: rooms forgotten
        for i in range(2):
            await client.publish(Message(sender="s", content=f"after {i}", room="r"))
        after = [m async for m in _first(stream, 3)]
    assert after[0] == Missed(count=0, next_seq=1, reset=True)
    assert [m.content for m in after[1:]] == ["after 0", "after 1"]


async def _first(stream: object, n: int) -> object:
    async with asyncio.timeout(15):
        count = 0
        async for item in stream:  # type: ignore[attr-defined]
            yield item
            count += 1
            if count == n:
                return


# -- pipelining (issue 17) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "protocol"), [("buffered", "binary"), ("framed", "binary"), ("buffered", "compact"),
                                ("framed", "compact")],
)
async def test_many_tasks_pipeline_on_one_connection_and_each_gets_its_own_reply(
    server: ChatServer, transport: str, protocol: str
) -> None:
    async with ChatClient(LOOPBACK, server.port, transport=transport, protocol=protocol, pool_size=1) as client:
        sends = asyncio.gather(*(
            client.publish(Message(sender=f"t{i}", content=str(i), room="piped")) for i in range(300)
        ))
        for _turn in range(10_000):  # every turn of the loop, until several calls are in flight at once
            await asyncio.sleep(0)
            if any(w.in_flight > 1 for w in client._wires):
                break
        else:
            raise AssertionError("never more than one call in flight")
        seqs = await sends
        history = await client.history("piped", 1, 1000)
        many = await client.publish_many([Message(sender="m", content=f"b{i}", room="piped") for i in range(50)])
    assert {m.content: m.seq for m in history} == {str(i): seqs[i] for i in range(300)}
    assert many == list(range(301, 351))  # in order: one connection, answered in order
    assert server.connections_total == 1


async def test_cancelled_and_timed_out_calls_mid_pipeline_leave_the_rest_correct(server: ChatServer) -> None:
    async with ChatClient(LOOPBACK, server.port, pool_size=1, timeout=5) as client:
        sub = await client.create_subscription("quiet", 0)
        tasks = [asyncio.create_task(client.publish(Message(sender="s", content=str(i), room="mid")))
                 for i in range(60)]
        # A poll that outlives its timeout, in the middle of the line of calls.
        slow = asyncio.create_task(client.call("poll", sub.subscription_id, 1, 300, timeout=0.05))
        more = [asyncio.create_task(client.publish(Message(sender="s", content=str(i), room="mid")))
                for i in range(60, 120)]
        await asyncio.sleep(0)  # every call written
        for task in tasks[::3]:
            task.cancel()
        with pytest.raises(CallTimeout):
            await slow
        done = await asyncio.gather(*tasks, *more, return_exceptions=True)
        after = await client.publish(Message(sender="s", content="after", room="mid"))
        stored = {m.content: m.seq for m in await client.history("mid", 1, 1000)}
    answered = {str(i): seq for i, seq in enumerate(done) if isinstance(seq, int)}
    assert all(isinstance(d, int | asyncio.CancelledError) for d in done)
    assert len(answered) >= 80
    assert all(stored[content] == seq for content, seq in answered.items())  # no reply went to another call
    assert stored["after"] == after
    assert server.connections_total == 1  # nothing desynchronised: the one connection served throughout


async def test_a_server_killed_with_calls_in_flight_fails_each_none_hangs() -> None:
    server = await start_server()
    outcomes: list[str] = []
    try:
        async with ChatClient(LOOPBACK, server.port, pool_size=2, timeout=5, connect_timeout=2) as client:

            async def publisher(i: int) -> None:
                for n in range(10_000):
                    try:
                        await client.publish(Message(sender=f"p{i}", content=str(n), room="doomed"))
                    except Unavailable as exc:  # ConnectionLost after one retry, or cannot connect
                        outcomes.append(type(exc).__name__)
                        return
                outcomes.append("finished")

            async with asyncio.timeout(30):  # none may hang: each ends with an answer or an error
                tasks = [asyncio.create_task(publisher(i)) for i in range(64)]
                await wait_until(lambda: sum(w.in_flight for w in client._wires) > 10)
                await server.kill()
                await asyncio.gather(*tasks)
    finally:
        await server.kill()
    assert len(outcomes) == 64
    assert set(outcomes) <= {"ConnectionLost", "Unavailable"}


async def test_a_reply_out_of_step_breaks_only_its_connection() -> None:
    """A server that answers with the wrong seqid: the calls in flight fail ConnectionLost at once, and the
    client opens a new connection for what follows."""
    from async_chat.codec import Codec
    from async_chat.contract import ChatService

    codec = Codec(ChatService, "binary")
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        lying = len(writers) == 1
        while data := await reader.read(65536):
            call, _size = codec.decode(data)  # type: ignore[misc]
            seqid = call.seqid + 1000 if lying else call.seqid
            writer.write(codec.reply("stats", seqid, ChatService.stats_result(success=ServerStats(connections=7))))

    listener = await asyncio.start_server(serve, LOOPBACK, 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with ChatClient(LOOPBACK, port, pool_size=1, timeout=5) as client:
            with pytest.raises(ConnectionLost, match="where stats"):
                await client.stats(0)
            assert (await client.stats(0)).connections == 7
    finally:
        listener.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await listener.wait_closed()
    assert len(writers) == 2


@pytest.mark.parametrize(
    ("transport", "protocol"), [("buffered", "binary"), ("framed", "binary"), ("buffered", "compact"),
                                ("framed", "compact")],
)
async def test_a_call_over_the_servers_limit_is_too_large_not_a_lost_connection(
    server: ChatServer, transport: str, protocol: str
) -> None:
    async with ChatClient(LOOPBACK, server.port, transport=transport, protocol=protocol) as client:
        with pytest.raises(TooLarge, match=r"the limit is 262144 \(--max-call-bytes\)"):
            await client.publish(Message(sender="big", content="x" * (1 << 20), room="r"))
        assert await client.publish(Message(sender="small", content="fits", room="r")) == 1
