"""Scenario `fanout`: one room, N subscribers long-polling it, one publisher as fast as it is answered.

Our server (memory broker) is pinned to the server core; the subscribers and the publisher are one load
process on the other core (wireload.py), on framed binary connections decoded with thriftpy2's Cython
codec. Reported: deliveries per second (messages returned by polls, all subscribers together), the
publishes per second that fed them, messages reported missed (queues that overflowed: never silent),
and delivery latency (send to arrival), sampled from up to a hundred subscribers.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict, dataclass

from . import loadgen
from .harness import Progress, Report, rotations
from .processes import UNLIMITED, start_process


@dataclass(frozen=True)
class Parameters:
    subscribers: tuple[int, ...] = (1, 100, 1000, 10_000)
    warmup: float = 1.0
    seconds: float = 3.0
    rounds: int = 3

    @classmethod
    def short(cls) -> Parameters:
        return cls(subscribers=(1, 100), warmup=0.2, seconds=0.5, rounds=1)


def steps(p: Parameters) -> int:
    return p.rounds * len(p.subscribers)


async def run(p: Parameters, bar: Progress) -> Report:
    report = Report("fanout", asdict(p))
    most = str(max(p.subscribers) + 100)
    server = await start_process(loadgen.pinned(loadgen.SERVER_CPU, [
        sys.executable, "-m", "async_chat.server", "--host", "127.0.0.1", "--port", "0", *UNLIMITED,
        "--max-connections", most, "--max-connections-per-address", most]))
    try:
        for index, order in enumerate(rotations([str(n) for n in p.subscribers], p.rounds)):
            figures = {}
            for count in order:
                bar.step(f"round {index + 1}/{p.rounds}: {count} subscribers")
                figures[f"{count}-subscribers"] = await asyncio.to_thread(loadgen.run_pinned, [
                    sys.executable, "-m", "benchmarks.wireload", "fanout", str(server.port), count,
                    str(p.warmup), str(p.seconds)], p.warmup + p.seconds + 300)
            report.rounds.append(figures)
            bar.say(f"fanout round {index + 1}/{p.rounds}: " + ", ".join(
                f"{name} {f['deliveries_per_s']:,.0f} deliveries/s" for name, f in figures.items()))
    finally:
        await server.kill()
    report.summarize([], [])
    return report
