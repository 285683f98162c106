"""Scenario `metrics`: what `--metrics-port` costs: the same server with metrics off and on, same run.

Each round publishes through both servers in turn (rotated), closed loop, `publishers` concurrent tasks
for `seconds`, while a scraper reads /metrics of the metrics-on server every `scrape_every` seconds (more
often than Prometheus usually does). Reported per server: publishes/s, and the server's own CPU time per
publish (from /proc): the load generator may be the bottleneck on a small machine, but the server's CPU
per call shows the cost either way. The ratio on/off of each, per round, then the median.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from async_chat import ChatClient, Message

from .harness import Report, closed_loop, rotations
from .processes import LOOPBACK, UNLIMITED, ServerProcess, start_server

REFERENCE = "metrics-off"


@dataclass(frozen=True)
class Parameters:
    publishers: int = 32
    seconds: float = 5.0
    scrape_every: float = 1.0
    rounds: int = 5

    @classmethod
    def short(cls) -> Parameters:
        return cls(publishers=4, seconds=0.5, scrape_every=0.1, rounds=2)


async def _scrape_forever(port: int, every: float) -> None:
    while True:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        await reader.read()
        writer.close()
        await asyncio.sleep(every)


async def measure(server: ServerProcess, room: str, p: Parameters) -> dict[str, float]:
    async with ChatClient(LOOPBACK, server.port, pool_size=p.publishers, timeout=10) as client:

        async def publish(i: int) -> None:
            await client.publish(Message(sender="bench", content=str(i), room=room))

        cpu_before = server.cpu_seconds()
        done, failed, elapsed = await closed_loop(publish, p.publishers, p.seconds)
        cpu = server.cpu_seconds() - cpu_before
    return {
        "publishes_per_s": done / elapsed,
        "server_cpu_us_per_publish": cpu / max(done, 1) * 1e6,
        "errors": float(failed),
    }


async def run(p: Parameters, progress: Any = print) -> Report:
    report = Report("metrics", {**p.__dict__, "configurations": {
        "metrics-off": "1 server, memory://, no --metrics-port",
        "metrics-on": "1 server, memory://, --metrics-port, scraped every scrape_every seconds",
    }})
    off = await start_server(*UNLIMITED)
    on = await start_server("--metrics-port", "0", *UNLIMITED)
    servers = {"metrics-off": off, "metrics-on": on}
    port = int(next(line for line in on.log if "metrics on http://" in line).split(":")[-1].split("/")[0])
    scraper = asyncio.create_task(_scrape_forever(port, p.scrape_every))
    try:
        for index, order in enumerate(rotations(list(servers), p.rounds)):
            figures = {}
            for name in order:
                figures[name] = await measure(servers[name], f"bench-{index}", p)
                progress(
                    f"round {index + 1}/{p.rounds} {name}: {figures[name]['publishes_per_s']:,.0f} publishes/s,"
                    f" {figures[name]['server_cpu_us_per_publish']:.1f} us server CPU per publish"
                )
            report.rounds.append(figures)
    finally:
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
        for server in servers.values():
            await server.kill()
    report.summarize(REFERENCE, ("publishes_per_s", "server_cpu_us_per_publish"))
    return report
