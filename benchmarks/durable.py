"""Scenario `durable`: what keeping messages costs a publish. One server per broker, the same load:

- `memory`: nothing kept past the process (the reference);
- `sqlite`: `sqlite:///…` at synchronous=normal, the default (survives a crash of the process);
- `sqlite-full`: `?synchronous=full` (survives power loss: an fsync per commit);
- `redis-everysec`: a Redis with `appendonly yes, appendfsync everysec`, the nearest peer.

Per round, in rotated order, each broker gets:
- throughput: the C load generator (pinned to the load core; the server to the server core) keeps
  `publishers` connections each with one void `sendMessage` in flight: the publishes/s a server
  acknowledges (each answered only once its broker stored it), with closed-loop latency;
- latency at half that rate: the same connections send at a fixed rate of half the throughput this
  broker reached in this round, each call when it is due, latency counted from then (a server that falls
  behind cannot hide its queue): p50/p99/p99.9 of publish -> acknowledgement.
Redis runs unpinned beside them: its CPU is counted in neither figure.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import loadgen, peers
from .harness import Progress, Report, rotations
from .processes import LOOPBACK, UNLIMITED, RedisProcess, ServerProcess, start_process

REFERENCE = "memory"
BROKERS = ("memory", "sqlite", "sqlite-full", "redis-everysec")


@dataclass(frozen=True)
class Parameters:
    publishers: int = 16
    warmup: float = 0.5
    seconds: float = 3.0
    rounds: int = 3
    brokers: tuple[str, ...] = BROKERS

    @classmethod
    def short(cls) -> Parameters:
        return cls(warmup=0.1, seconds=0.5, rounds=1)


def steps(p: Parameters) -> int:
    return p.rounds * len(p.brokers)


async def start(url: str) -> ServerProcess:
    argv = [sys.executable, "-m", "async_chat.server", "--host", LOOPBACK, "--port", "0", *UNLIMITED,
            "--broker", url, "--transport", "framed", "--protocol", "binary"]
    return await start_process(loadgen.pinned(loadgen.SERVER_CPU, argv))


async def measure(server: ServerProcess, p: Parameters) -> dict[str, float]:
    request, reply = peers.call_bytes("framed", "binary")
    cpu = server.cpu_seconds()
    load = loadgen.Load(server.port, p.publishers, request, reply, p.warmup, p.seconds)
    closed = await asyncio.to_thread(loadgen.run, load)
    server_cpu = (server.cpu_seconds() - cpu) / (p.warmup + p.seconds)
    rate = closed["calls_per_s"] / 2
    timed = await asyncio.to_thread(loadgen.run, loadgen.Load(**{**load.__dict__, "rate": rate}))
    return {
        "publishes_per_s": closed["calls_per_s"],
        "p50_ms": closed["p50_us"] / 1000,
        "p99_ms": closed["p99_us"] / 1000,
        "server_cpu_share": server_cpu,
        "half_rate_per_s": rate,
        "half_rate_answered_per_s": timed["calls_per_s"],
        "half_rate_p50_ms": timed["p50_us"] / 1000,
        "half_rate_p99_ms": timed["p99_us"] / 1000,
        "half_rate_p999_ms": timed["p999_us"] / 1000,
        "errors": closed["errors"] + timed["errors"],
    }


async def run(p: Parameters, bar: Progress) -> Report:
    report = Report("durable", {**asdict(p), "transport": "framed", "protocol": "binary"})
    servers: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        redis = RedisProcess(folder, persistent=True, appendfsync="everysec")
        try:
            urls = {
                "memory": "memory://",
                "sqlite": f"sqlite:///{folder / 'normal.db'}",
                "sqlite-full": f"sqlite:///{folder / 'full.db'}?synchronous=full",
                "redis-everysec": redis.url,
            }
            if "redis-everysec" in p.brokers:
                await redis.start()
            for name in p.brokers:
                servers[name] = await start(urls[name])
            for index, order in enumerate(rotations(list(p.brokers), p.rounds)):
                figures = {}
                for name in order:
                    figures[name] = await measure(servers[name], p)
                    f = figures[name]
                    bar.say(
                        f"round {index + 1}/{p.rounds} {name}: {f['publishes_per_s']:,.0f} publishes/s;"
                        f" at {f['half_rate_per_s']:,.0f}/s p99 {f['half_rate_p99_ms']:.2f} ms;"
                        f" errors {f['errors']:.0f}"
                    )
                    bar.step(f"durable {name}")
                report.rounds.append(figures)
        finally:
            for server in servers.values():
                await server.kill()
            if redis.proc is not None:
                await redis.kill()
    report.summarize(REFERENCE, ("publishes_per_s",))
    report.notes.append(
        "server pinned to core 0, load generator to core 1; Redis unpinned. Every figure of a row comes from"
        " one round; the summary's ratios are per round, then the median"
    )
    return report
