"""Scenario `throughput`: void `sendMessage`, closed loop, async_chat against the other Python servers.

For each transport and protocol, every server of peers.py runs as its own process pinned to the server
core; the C load generator (loadgen.c), pinned to the other core, keeps N connections each with one call
in flight and checks every reply byte for byte. Per connection count, the servers take turns in rotated
rounds, so each figure has a same-round partner: reported are each server's median calls/s and
latency percentiles, its CPU share and the load generator's, and the median of per-round ratios to the
stock thriftpy2 aio server on uvloop (`aio-uvloop`) and to the raw uvloop limit (`raw`).

`ours-chatclient` is our server again, loaded through `ChatClient` from Python (clientload.py) instead of
the C generator: its ratio to `ours` is what the client costs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import loadgen, peers
from .harness import Progress, Report, rotations
from .processes import ServerProcess

VIA_CLIENT = "ours-chatclient"


@dataclass(frozen=True)
class Parameters:
    connections: tuple[int, ...] = (1, 16, 64, 256)
    transports: tuple[str, ...] = ("buffered", "framed")
    protocols: tuple[str, ...] = ("binary", "compact")
    servers: tuple[str, ...] = (*peers.KINDS, VIA_CLIENT)
    warmup: float = 0.5
    seconds: float = 1.5
    rounds: int = 3

    @classmethod
    def short(cls) -> Parameters:
        return cls(connections=(16,), transports=("framed",), protocols=("binary",), warmup=0.1, seconds=0.3,
                   rounds=1)


def steps(p: Parameters) -> int:
    return len(p.transports) * len(p.protocols) * len(p.connections) * p.rounds * len(p.servers)


async def run(p: Parameters, bar: Progress) -> Report:
    report = Report("throughput", asdict(p))
    for transport in p.transports:
        for protocol in p.protocols:
            request, reply = peers.call_bytes(transport, protocol)
            kinds = [k for k in p.servers if k != VIA_CLIENT]
            servers: dict[str, ServerProcess] = {}
            try:
                for kind in kinds:
                    servers[kind] = await peers.start(kind, transport, protocol)
                for connections in p.connections:
                    group = f"{transport}/{protocol}/{connections}"
                    for index, order in enumerate(rotations(list(p.servers), p.rounds)):
                        figures: dict[str, dict[str, float]] = {}
                        for kind in order:
                            bar.step(f"{group} round {index + 1}/{p.rounds}: {kind}")
                            server = servers["ours" if kind == VIA_CLIENT else kind]
                            load = loadgen.Load(server.port, connections, request, reply, p.warmup, p.seconds)
                            client = (transport, protocol) if kind == VIA_CLIENT else None
                            figures[f"{group}/{kind}"] = await _measure(server, load, client)
                        report.rounds.append(figures)
                        bar.say(f"{group} round {index + 1}/{p.rounds}: " + ", ".join(
                            f"{name.rpartition('/')[2]} {f['calls_per_s']:,.0f}/s" for name, f in figures.items()
                        ))
            finally:
                for server in servers.values():
                    await server.kill()
    report.summarize([peers.REFERENCE, peers.LIMIT], ["calls_per_s"])
    report.notes.append(
        "apache-simple serves one connection at a time: past one connection, the others wait (counted in"
        " 'waiting'), and its calls/s is one connection's."
    )
    return report


async def _measure(server: ServerProcess, load: loadgen.Load, client: tuple[str, str] | None) -> dict[str, float]:
    cpu, started = server.cpu_seconds(), time.perf_counter()
    figures: dict[str, Any] = await asyncio.to_thread(loadgen.run, load, client=client)
    figures["server_cpu_share"] = (server.cpu_seconds() - cpu) / (time.perf_counter() - started)
    return figures
