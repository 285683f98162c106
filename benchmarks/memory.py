"""Scenario `memory`: what an idle connection and an idle subscription cost the server, in RSS.

Our server (memory broker) runs as its own process. This process opens `subscriptions` subscriptions
over a few connections and never polls them, waits until the server counts them all (its stats()), and
reads the server's RSS before and after; then the same for `connections` TCP connections that say
nothing. Per item: the RSS growth divided by the count. Connections are held open together, so
the figure also shows that many can be held.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict, dataclass

from async_chat import ChatClient

from .harness import Progress, Report, allow_open_files
from .processes import LOOPBACK, UNLIMITED, start_process

POOL = 16


@dataclass(frozen=True)
class Parameters:
    connections: int = 10_000
    subscriptions: int = 10_000
    rounds: int = 3

    @classmethod
    def short(cls) -> Parameters:
        return cls(connections=200, subscriptions=500, rounds=1)


def steps(p: Parameters) -> int:
    return p.rounds * 2


async def _settled(client: ChatClient, connections: int, subscriptions: int) -> None:
    """Until the server counts what was opened (the stats call's own connection included)."""
    async with asyncio.timeout(120):
        while True:
            stats = await client.stats()
            if stats.connections >= connections and stats.subscriptions >= subscriptions:
                return
            await asyncio.sleep(0.05)


async def run(p: Parameters, bar: Progress) -> Report:
    allow_open_files(p.connections)
    report = Report("memory", asdict(p))
    limit = str(max(p.connections, p.subscriptions) + 1024)
    for index in range(p.rounds):
        server = await start_process([
            sys.executable, "-m", "async_chat.server", "--host", LOOPBACK, "--port", "0", *UNLIMITED,
            "--max-connections", limit, "--max-connections-per-address", limit,
            "--max-subscriptions-per-connection", limit, "--max-subscriptions", limit])
        try:
            async with ChatClient(LOOPBACK, server.port, pool_size=POOL) as client:
                await client.stats()
                # Subscriptions first: closing thousands of connections frees memory that a later
                # measurement would reuse (or see returned), and could make its growth negative.
                bar.step(f"round {index + 1}/{p.rounds}: {p.subscriptions:,} idle subscriptions")
                base = before = server.rss_bytes()
                for start in range(0, p.subscriptions, 500):
                    await asyncio.gather(*(client.create_subscription(f"room-{i % 100}")
                                           for i in range(start, min(start + 500, p.subscriptions))))
                await _settled(client, 1, p.subscriptions)
                per_subscription = (server.rss_bytes() - before) / p.subscriptions
                bar.step(f"round {index + 1}/{p.rounds}: {p.connections:,} idle connections")
                before = server.rss_bytes()
                idle = [await asyncio.open_connection(LOOPBACK, server.port) for _ in range(p.connections)]
                await _settled(client, p.connections + 1, p.subscriptions)
                per_connection = (server.rss_bytes() - before) / p.connections
                for _reader, writer in idle:
                    writer.close()
            report.rounds.append({"idle": {
                "connections_held": p.connections, "bytes_per_idle_connection": per_connection,
                "subscriptions_held": p.subscriptions, "bytes_per_idle_subscription": per_subscription,
                "base_rss_mib": base / 2**20,
            }})
            bar.say(f"memory round {index + 1}/{p.rounds}: {per_connection:,.0f} B per idle connection,"
                    f" {per_subscription:,.0f} B per idle subscription")
        finally:
            await server.kill()
    report.summarize([], [])
    return report
