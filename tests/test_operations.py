"""What operators see of a real server process: Prometheus metrics, health and readiness, logs, stats."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from async_chat import ChatClient, InvalidRequest, Message
from benchmarks.processes import LOOPBACK, RedisProcess, ServerProcess, start_server

from .conftest import read_to_close

pytestmark = pytest.mark.one_loop  # the servers are processes of their own


def metrics_port(server: ServerProcess) -> int:
    found = [re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line) for line in server.log]
    [port] = [int(m.group(1)) for m in found if m]
    return port


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(f"{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        async with asyncio.timeout(10):
            answer = await reader.read()  # the endpoint closes after answering
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await http_get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def server() -> AsyncIterator[ServerProcess]:
    node = await start_server("--metrics-port", "0")
    yield node
    await node.kill()


async def test_metrics_after_traffic_show_the_counts_it_implies(server: ServerProcess) -> None:
    async with ChatClient(LOOPBACK, server.port) as client:
        sub = await client.create_subscription("ops", 0)
        for i in range(5):
            await client.publish(Message(sender="s", content=str(i), room="ops"))
        with pytest.raises(InvalidRequest):
            await client.publish(Message(sender="", content="x", room="ops"))
        assert len((await client.poll(sub.subscription_id, 3, 0)).messages) == 3
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")  # not Thrift: refused
    async with asyncio.timeout(5):
        await read_to_close(reader)
    writer.close()

    m = await scrape(metrics_port(server))

    def calls(method: str, outcome: str) -> float:
        return m[("async_chat_calls_total", (("method", method), ("outcome", outcome)))]

    assert (calls("publish", "ok"), calls("publish", "invalid"), calls("subscribe", "ok"), calls("poll", "ok")) == (
        5, 1, 1, 1,
    )
    assert m[("async_chat_call_duration_seconds_count", (("method", "publish"),))] == 6
    assert m[("async_chat_messages_published_total", ())] == 5
    assert m[("async_chat_messages_delivered_total", ())] == 3
    assert m[("async_chat_queued_messages", ())] == 2
    assert m[("async_chat_subscriptions", ())] == 1
    assert m[("async_chat_rooms", ())] == 1
    assert m[("async_chat_connections_refused_total", ())] == 1
    assert m[("async_chat_connections_opened_total", ())] >= 2
    assert m[("async_chat_broker_up", ())] == 1
    assert not [name for name, labels in m if any(k == "room" for k, _v in labels)]  # no per-room label


async def test_a_poll_is_counted_once_whichever_way_it_is_answered(server: ServerProcess) -> None:
    """A poll is answered at once, or parked until a message comes (both with no coroutine), or, when it must
    replay history, declined by the synchronous form and answered by its coroutine: one call each."""
    port = metrics_port(server)
    async with ChatClient(LOOPBACK, server.port) as client, ChatClient(LOOPBACK, server.port) as publisher:
        await publisher.publish(Message(sender="s", content="old", room="counted"))
        replaying = await client.create_subscription("counted", 1)
        assert [m.content for m in (await client.poll(replaying.subscription_id, 10, 0)).messages] == ["old"]
        live = await client.create_subscription("counted", 0)
        async with asyncio.TaskGroup() as group:  # owns the parked poll, cancelled if anything here fails
            parked = group.create_task(client.poll(live.subscription_id, 10, 10_000))
            async with asyncio.timeout(10):
                # The gauge is the only sign, outside the server's process, that the poll has parked.
                while (await scrape(port))[("async_chat_polls_waiting", ())] != 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await publisher.publish(Message(sender="s", content="new", room="counted"))
        assert [m.content for m in parked.result().messages] == ["new"]
        assert [m.content for m in (await client.poll(replaying.subscription_id, 10, 0)).messages] == ["new"]
    m = await scrape(port)
    assert m[("async_chat_calls_total", (("method", "poll"), ("outcome", "ok")))] == 3
    assert m[("async_chat_call_duration_seconds_count", (("method", "poll"),))] == 3
    assert m[("async_chat_polls_waiting", ())] == 0


async def test_the_endpoint_answers_health_and_refuses_what_it_does_not_serve(server: ServerProcess) -> None:
    port = metrics_port(server)
    assert await http_get(port, "/healthz") == (200, "ok\n")
    assert await http_get(port, "/readyz") == (200, "ready\n")
    assert (await http_get(port, "/nothing"))[0] == 404
    assert (await http_get(port, "/metrics", method="POST"))[0] == 405
    assert await http_get(port, "/healthz", method="HEAD") == (200, "")


async def test_readiness_follows_the_broker_and_liveness_does_not(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path, persistent=False)
    await redis.start()
    node = await start_server("--metrics-port", "0", "--broker", redis.url, "--broker-timeout", "1")
    try:
        port = metrics_port(node)
        assert await http_get(port, "/readyz") == (200, "ready\n")
        await redis.kill()
        status = await wait_for_status(port, "/readyz", 503)
        assert status == (503, "the broker is unreachable\n")
        assert await http_get(port, "/healthz") == (200, "ok\n")  # alive: no reason to restart it
        m = await scrape(port)
        assert (m[("async_chat_broker_up", ())], m[("async_chat_broker_outages_total", ())]) == (0, 1)
        await redis.start()
        assert await wait_for_status(port, "/readyz", 200) == (200, "ready\n")
    finally:
        await node.kill()
        await redis.kill()


async def wait_for_status(port: int, path: str, status: int) -> tuple[int, str]:
    """Ask until the answer has `status` (the server's reader notices a broker change within ~1 s)."""
    async with asyncio.timeout(15):
        while True:
            answer = await http_get(port, path)
            if answer[0] == status:
                return answer
            await asyncio.sleep(0.1)  # the pace of a probe, as an orchestrator's would be


async def test_json_logs_parse_and_name_their_events() -> None:
    node = await start_server("--log-format", "json", "--metrics-port", "0")
    reader, writer = await asyncio.open_connection(LOOPBACK, node.port)
    writer.write(b"\x16\x03\x01\x02\x00\x01")  # a TLS hello: refused, and logged once
    async with asyncio.timeout(5):
        await read_to_close(reader)
    writer.close()
    assert await node.stop() == 0
    records = [json.loads(line) for line in node.log]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    events = [r["event"] for r in records if "event" in r]
    assert events == ["metrics_listening", "started", "connection_refused", "signal", "draining", "stopped"]
    refused = next(r for r in records if r.get("event") == "connection_refused")
    assert refused["level"] == "warning"
    assert refused["peer"].startswith("127.0.0.1:")


async def test_text_logs_are_key_value_lines(server: ServerProcess) -> None:
    assert await server.stop() == 0
    for line in server.log:
        assert re.match(r'^ts=\S+Z level=(info|warning) logger=\S+ (event=\S+ )?msg=("[^"]*"|\S+)', line), line


async def test_metrics_are_off_unless_asked_for() -> None:
    node = await start_server()
    assert await node.stop() == 0
    assert not any("metrics on" in line for line in node.log)


async def test_admin_stats_shows_the_busiest_rooms(server: ServerProcess) -> None:
    async with ChatClient(LOOPBACK, server.port) as client:
        for _ in range(3):
            await client.create_subscription("busy", 0)
        await client.create_subscription("quiet", 0)
        for i in range(2):
            await client.publish(Message(sender="s", content=str(i), room="busy"))
        argv = [sys.executable, "-m", "async_chat.admin", "stats", "--port", str(server.port)]
        table = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60, check=True)
        raw = await asyncio.to_thread(
            subprocess.run, [*argv, "--json", "--rooms", "1"], capture_output=True, text=True, timeout=60, check=True
        )
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[-2:]}
    assert rows == {"busy": ["3", "6", "2", "0"], "quiet": ["1", "0", "0", "0"]}
    assert "subscriptions 4 in 2 room(s)" in table.stdout
    doc = json.loads(raw.stdout)
    assert (doc["subscriptions"], doc["published"], doc["broker_up"]) == (4, 2, True)
    assert doc["top_rooms"] == [{"room": "busy", "subscribers": 3, "queued": 6, "max_queue_depth": 2, "dropped": 0}]


async def test_admin_stats_against_nothing_is_one_line_and_exit_1() -> None:
    with_nothing = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "async_chat.admin", "stats", "--port", "1", "--timeout", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert with_nothing.returncode == 1
    assert with_nothing.stderr.startswith("async_chat.admin: UNAVAILABLE: cannot connect to 127.0.0.1:1")
    assert with_nothing.stderr.count("\n") == 1
