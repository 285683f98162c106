"""Scenario `fanout`: one room, N subscribers long-polling it, one publisher as fast as it is answered
or, open loop, at a fixed rate (latency then from the oldest message of each batch), with classic polls
or polls that linger (`linger_ms`, chat.thrift).

Our server (memory broker) is pinned to the server core; the load on the other core: the subscribers are
fanout.c (one process, epoll, framed binary; wireload.py's Python subscribers without a C compiler), the
open-loop publisher openloop.c, the closed-loop one wireload.py. Reported: deliveries per second (messages
returned by polls, all subscribers together), the publishes per second that fed them, messages reported
missed (queues that overflowed: never silent), messages lost (open loop: acknowledged, yet neither
delivered nor reported missed to some subscriber), delivery latency of every batch's oldest message (or
newest, closed loop), and both sides' CPU.
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
    open_loop: tuple[tuple[int, int, int], ...] = (
        (1000, 100, 0), (1000, 200, 0), (1000, 200, 20), (1000, 500, 0), (1000, 500, 20), (10_000, 20, 0),
    )
    """(subscribers, messages/s the publisher sends open loop, linger_ms of every poll): latency is the busy
    room's."""
    warmup: float = 1.0
    seconds: float = 3.0
    rounds: int = 3

    @classmethod
    def short(cls) -> Parameters:
        return cls(subscribers=(1, 100), open_loop=((100, 100, 0), (100, 100, 20)), warmup=0.2, seconds=0.5,
                   rounds=1)


def steps(p: Parameters) -> int:
    return p.rounds * (len(p.subscribers) + len(p.open_loop))


async def run(p: Parameters, bar: Progress) -> Report:
    report = Report("fanout", asdict(p))
    most = str(max(p.subscribers) + 100)
    server = await start_process(loadgen.pinned(loadgen.SERVER_CPU, [
        sys.executable, "-m", "async_chat.server", "--host", "127.0.0.1", "--port", "0", *UNLIMITED,
        "--max-connections", most, "--max-connections-per-address", most]))
    try:
        runs = [f"{n}:0:0" for n in p.subscribers] + [f"{n}:{rate}:{linger}" for n, rate, linger in p.open_loop]
        for index, order in enumerate(rotations(runs, p.rounds)):
            figures = {}
            for run in order:
                count, rate, linger = run.split(":")
                name = f"{count}-subscribers" + (f"-at-{rate}-per-s" if rate != "0" else "") \
                    + (f"-linger-{linger}-ms" if linger != "0" else "")
                bar.step(f"round {index + 1}/{p.rounds}: {name}")
                figures[name] = await asyncio.to_thread(loadgen.run_pinned, [
                    sys.executable, "-m", "benchmarks.wireload", "fanout", str(server.port), count,
                    str(p.warmup), str(p.seconds), rate, str(server.proc.pid), linger], p.warmup + p.seconds + 300)
            report.rounds.append(figures)
            bar.say(f"fanout round {index + 1}/{p.rounds}: " + ", ".join(
                f"{name} {f['deliveries_per_s']:,.0f} deliveries/s" for name, f in figures.items()))
    finally:
        await server.kill()
    report.summarize([], [])
    return report
