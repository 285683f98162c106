"""Scenario `latency`: publish -> deliver at fixed rates, open loop, measured at a subscriber.

Our server (framed binary, memory broker) is pinned to the server core. Its peak is measured first: the
C load generator's closed-loop `sendMessage` at 64 connections, nobody subscribed: the most calls a
second it takes, so half of it is a stricter bar than half of a publish-and-deliver peak would be. Then,
for each fraction of that peak, on the other core, openloop.c publishes on schedule — message i is due
at t0 + i/rate and is sent then, however far behind the server is — and a subscriber long-polls
(wireload.py). Latency is arrival minus due time, so a server that falls behind cannot hide its queue
behind a publisher that waits for it (coordinated omission). Rounds rotate the rates.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict, dataclass

from . import loadgen, peers
from .harness import Progress, Report, rotations
from .processes import UNLIMITED, start_process


@dataclass(frozen=True)
class Parameters:
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
    warmup: float = 0.5
    seconds: float = 3.0
    rounds: int = 3

    @classmethod
    def short(cls) -> Parameters:
        return cls(fractions=(0.1, 0.5), warmup=0.1, seconds=0.3, rounds=1)


def steps(p: Parameters) -> int:
    return p.rounds * (1 + len(p.fractions))


async def run(p: Parameters, bar: Progress) -> Report:
    report = Report("latency", asdict(p))
    server = await start_process(loadgen.pinned(loadgen.SERVER_CPU, [
        sys.executable, "-m", "async_chat.server", "--host", "127.0.0.1", "--port", "0", *UNLIMITED]))
    request, reply = peers.call_bytes("framed", "binary")
    try:
        for index, order in enumerate(rotations([f"{f:g}" for f in p.fractions], p.rounds)):
            bar.step(f"round {index + 1}/{p.rounds}: peak")
            peak = await asyncio.to_thread(
                loadgen.run, loadgen.Load(server.port, 64, request, reply, p.warmup, p.seconds))
            figures = {"peak": peak}
            for fraction in order:
                rate = float(fraction) * peak["calls_per_s"]
                bar.step(f"round {index + 1}/{p.rounds}: {fraction} of peak, {rate:,.0f}/s")
                figures[f"{fraction}-of-peak"] = await asyncio.to_thread(loadgen.run_pinned, [
                    sys.executable, "-m", "benchmarks.wireload", "openloop", str(server.port), str(rate),
                    str(p.warmup), str(p.seconds)], p.warmup + p.seconds + 60)
            report.rounds.append(figures)
            bar.say(f"latency round {index + 1}/{p.rounds}: peak {peak['calls_per_s']:,.0f}/s; " + ", ".join(
                f"{name} p99 {f['p99_ms']:.2f} ms" for name, f in figures.items() if name != "peak"))
    finally:
        await server.kill()
    report.summarize([], [])
    return report
