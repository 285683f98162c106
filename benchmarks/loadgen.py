"""The closed-loop load generator: the C one (loadgen.c), built on first use, or its Python fallback.

A Python load generator saturates its own core near the limit of a Python server, and would then
measure itself; the C one uses a fraction of a core at the same rate (its CPU time is reported with
every figure, so a reader can check). Both run as their own process, pinned to the load core when
`taskset` exists, and both check every reply byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .harness import own_cpu_seconds, percentile

BUILD = Path(__file__).with_name(".build")
HEADER = Path(__file__).with_name("loadgen.h")  # what the C programs share
SERVER_CPU = "0"
LOAD_CPU = "1"


def pinned(cpu: str, argv: list[str]) -> list[str]:
    """`argv` run on `cpu` alone when taskset exists and the machine has that core, else as it is."""
    import os

    if shutil.which("taskset") and (os.cpu_count() or 1) > int(cpu):
        return ["taskset", "-c", cpu, *argv]
    return argv


def compiled(program: str = "loadgen") -> Path | None:
    """A C load program of benchmarks/ (loadgen, openloop), compiled if its source changed; None without
    a C compiler."""
    source, binary = Path(__file__).with_name(program + ".c"), BUILD / program
    changed = max(source.stat().st_mtime, HEADER.stat().st_mtime)
    if binary.exists() and binary.stat().st_mtime >= changed:
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    BUILD.mkdir(exist_ok=True)
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


@dataclass(frozen=True)
class Load:
    """What one closed-loop run sends and expects."""

    port: int
    connections: int
    request: bytes
    reply: bytes
    warmup: float
    seconds: float
    rate: float = 0.0
    """Calls a second in all, each connection sending when its next call is due (latency counts from then);
    0: closed loop. Only the C generator keeps a rate."""


def run(load: Load, *, use_c: bool = True, client: tuple[str, str] | None = None) -> dict[str, float]:
    """Run one closed-loop load (blocking) and return its figures: calls/s, latency, errors, its CPU.

    `client`: (transport, protocol) to load through `ChatClient` instead (benchmarks/clientload.py)."""
    binary = compiled() if use_c and client is None else None
    if client is not None:
        argv = [sys.executable, "-m", "benchmarks.clientload", "chatclient", str(load.port), str(load.connections),
                str(load.warmup), str(load.seconds), *client]
        generator = "chatclient"
    elif binary is not None:
        argv = [str(binary), "127.0.0.1", str(load.port), str(load.connections), str(load.warmup),
                str(load.seconds), load.request.hex(), load.reply.hex()]
        if load.rate:
            argv.append(str(load.rate))
        generator = "c"
    elif load.rate:
        raise RuntimeError("a load at a fixed rate needs the C load generator, and so a C compiler (cc or gcc)")
    else:
        argv = [sys.executable, "-m", "benchmarks.loadgen", "127.0.0.1", str(load.port), str(load.connections),
                str(load.warmup), str(load.seconds), load.request.hex(), load.reply.hex()]
        generator = "python"
    figures = run_pinned(argv, timeout=load.warmup + load.seconds + 60)
    figures["calls_per_s"] = figures["calls"] / figures["seconds"]
    # The C generators report their CPU from start to end; clientload over the measured seconds only.
    figures["load_cpu_share"] = figures.pop("load_cpu_s") / (load.seconds if client else load.warmup + load.seconds)
    figures["c_generator"] = 1.0 if generator == "c" else 0.0  # JSON figures are numbers: 0 = Python
    return figures


def run_pinned(argv: list[str], timeout: float) -> dict[str, float]:
    """Run a load process on the load core (blocking) and return the JSON object it prints."""
    done = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=timeout, check=False)
    return figures_of(done.returncode, done.stdout, done.stderr)


def figures_of(returncode: int | None, stdout: str | bytes, stderr: str | bytes) -> dict[str, float]:
    """The JSON object a load process printed, or why it failed."""
    if returncode != 0:
        err = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        raise RuntimeError(f"the load generator failed ({returncode}): {err.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(stdout)
    return figures


# -- the Python fallback: the same loop as loadgen.c ------------------------------------------------------


class _Caller(asyncio.Protocol):
    def __init__(self, owner: _Fallback) -> None:
        self.owner = owner
        self.got = bytearray()
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.got.clear()
        self.started = time.perf_counter()
        self.transport.write(self.owner.request)

    def data_received(self, data: bytes) -> None:
        self.got += data
        owner = self.owner
        if len(self.got) < len(owner.reply):
            return
        now = time.perf_counter()
        if self.got != owner.reply:
            owner.errors += 1
        elif owner.warm_until <= self.started and now <= owner.end:
            owner.samples.append(now - self.started)
        if now < owner.end:
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.owner.end:
            self.owner.errors += 1


class _Fallback:
    def __init__(self, request: bytes, reply: bytes, warmup: float, seconds: float) -> None:
        self.request, self.reply = request, reply
        self.samples: list[float] = []
        self.errors = 0
        now = time.perf_counter()
        self.warm_until = now + warmup
        self.end = self.warm_until + seconds


async def _fallback(port: int, connections: int, warmup: float, seconds: float, request: bytes, reply: bytes) -> None:
    owner = _Fallback(request, reply, warmup, seconds)
    loop = asyncio.get_running_loop()
    transports = [(await loop.create_connection(lambda: _Caller(owner), "127.0.0.1", port))[0]
                  for _ in range(connections)]
    await asyncio.sleep(owner.end - time.perf_counter())
    for transport in transports:
        transport.close()
    micros = [s * 1e6 for s in owner.samples]
    print(json.dumps({
        "calls": len(owner.samples), "errors": owner.errors, "reconnects": 0, "waiting": 0, "seconds": seconds,
        "p50_us": percentile(micros, 50), "p99_us": percentile(micros, 99), "p999_us": percentile(micros, 99.9),
        "load_cpu_s": own_cpu_seconds(),
    }))


if __name__ == "__main__":
    import uvloop

    _host, port, connections, warmup, seconds, request, reply = sys.argv[1:8]
    uvloop.run(_fallback(int(port), int(connections), float(warmup), float(seconds),
                         bytes.fromhex(request), bytes.fromhex(reply)))
