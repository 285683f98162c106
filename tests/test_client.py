"""ChatClient: shared by many tasks, per-call timeouts, reconnecting subscriptions."""

from __future__ import annotations

import asyncio

import pytest

from async_chat import CallTimeout, ChatClient, ChatServer, Message, Missed, Settings, Unavailable

from .conftest import LOOPBACK, ServerFactory


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
