"""Scenario `redis`: two servers sharing rooms through one Redis, beside one server on the memory broker.

Per configuration and round:
- throughput: `publishers` concurrent tasks publish through one server for `seconds`; a subscriber on
  the other server (the same server for memory) must receive every acknowledged message. Reported:
  publishes acknowledged per second and deliveries per second; anything not delivered and not reported
  missed, and every failed call, is counted in `errors`.
- latency: publish -> deliver at a fixed, open-loop rate. Message i is due at t0 + i/rate and its latency
  is its arrival at the subscriber minus that due time, so a server that falls behind cannot hide its
  queue behind a publisher that waits for it (coordinated omission).

The load runs in this process on uvloop, through `ChatClient`; every server and redis-server are
processes of their own. On a 2-core machine they share the cores: compare configurations by the
ratios of the same round, not by the absolute figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from async_chat import ChatClient, ChatError, Message, Missed

from .harness import Report, closed_loop, percentile, rotations
from .processes import LOOPBACK, UNLIMITED, RedisProcess, ServerProcess, start_server

REFERENCE = "memory"


@dataclass(frozen=True)
class Parameters:
    publishers: int = 16
    seconds: float = 5.0
    rate: int = 1000
    latency_seconds: float = 5.0
    rounds: int = 5

    @classmethod
    def short(cls) -> Parameters:
        return cls(publishers=4, seconds=0.5, rate=200, latency_seconds=0.5, rounds=2)


async def measure(publish_port: int, subscribe_port: int, room: str, p: Parameters) -> dict[str, float]:
    async with (
        ChatClient(LOOPBACK, publish_port, pool_size=p.publishers, timeout=10) as publisher,
        ChatClient(LOOPBACK, subscribe_port, timeout=10) as subscriber,
        subscriber.subscribe(room, max_messages=1000, wait_ms=1000) as stream,
    ):
        errors = 0
        arrivals: dict[int, float] = {}
        missed = 0
        enough = asyncio.Event()
        wanted = [sys.maxsize]

        async def follow() -> None:
            nonlocal missed
            async for item in stream:
                if isinstance(item, Missed):
                    missed += item.count
                else:
                    arrivals[int(item.content)] = time.perf_counter()
                if len(arrivals) + missed >= wanted[0]:
                    enough.set()

        async def until_arrived(count: int) -> None:
            """Wait (at most 30 s) until `count` messages arrived or were reported missed."""
            wanted[0] = count
            if len(arrivals) + missed >= count:
                return
            enough.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await enough.wait()

        follower = asyncio.create_task(follow())
        try:
            # Throughput: closed loop, as fast as the server acknowledges.
            t0 = time.perf_counter()

            async def publish(i: int) -> None:
                await publisher.publish(Message(sender="bench", content=str(i), room=room))

            acked, errors, elapsed = await closed_loop(publish, p.publishers, p.seconds)
            await until_arrived(acked)
            delivered = len(arrivals)
            last_arrival = max(arrivals.values(), default=t0)
            errors += acked - delivered - missed  # neither delivered nor reported: lost silently
            throughput = {
                "publishes_per_s": acked / elapsed,
                "deliveries_per_s": delivered / max(last_arrival - t0, 1e-9),
                "missed": float(missed),
            }

            # Latency: open loop at a fixed rate.
            arrivals.clear()
            missed = 0
            first = 10_000_000  # numbers no message of the throughput phase has
            count = int(p.rate * p.latency_seconds)
            wanted[0] = sys.maxsize
            t0 = time.perf_counter()
            due = {first + i: t0 + i / p.rate for i in range(count)}
            sends: set[asyncio.Task[Any]] = set()

            async def send(i: int) -> None:
                nonlocal errors
                try:
                    await publisher.publish(Message(sender="bench", content=str(i), room=room))
                except ChatError:
                    errors += 1

            for i in range(first, first + count):
                delay = due[i] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(send(i))
                sends.add(task)
                task.add_done_callback(sends.discard)
            await until_arrived(count)
            await asyncio.gather(*sends)
            latencies = [(arrivals[i] - due[i]) * 1000 for i in due if i in arrivals]
            errors += count - len(latencies) - missed
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    return {
        **throughput,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_max_ms": max(latencies, default=float("nan")),
        "errors": float(errors),
    }


async def run(p: Parameters, progress: Any = print) -> Report:
    report = Report(
        "redis",
        {**p.__dict__, "configurations": {"memory": "1 server, memory://", "redis-2-nodes": "2 servers, one Redis"}},
    )
    servers: list[ServerProcess] = []
    with tempfile.TemporaryDirectory() as scratch:
        redis = RedisProcess(Path(scratch), persistent=False)
        await redis.start()
        try:
            memory = await start_server(*UNLIMITED)
            a = await start_server("--broker", redis.url, *UNLIMITED)
            b = await start_server("--broker", redis.url, *UNLIMITED)
            servers = [memory, a, b]
            ports = {"memory": (memory.port, memory.port), "redis-2-nodes": (a.port, b.port)}
            for index, order in enumerate(rotations(list(ports), p.rounds)):
                figures = {}
                for name in order:
                    figures[name] = await measure(*ports[name], room=f"bench-{index}-{name}", p=p)
                    progress(
                        f"round {index + 1}/{p.rounds} {name}: {figures[name]['publishes_per_s']:,.0f} publishes/s,"
                        f" p99 {figures[name]['latency_p99_ms']:.1f} ms, errors {figures[name]['errors']:.0f}"
                    )
                report.rounds.append(figures)
        finally:
            for server in servers:
                await server.kill()
            await redis.kill()
    report.summarize(REFERENCE, ("publishes_per_s", "deliveries_per_s", "latency_p99_ms"))
    report.notes.append("load and all servers share this machine's cores; ratios are per round, then the median")
    return report
