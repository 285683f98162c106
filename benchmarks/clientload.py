"""The same closed loop as loadgen.c, through `ChatClient`: what an async Python app sees, client included.

    python -m benchmarks.clientload PORT CONNECTIONS WARMUP SECONDS TRANSPORT PROTOCOL

CONNECTIONS tasks share one ChatClient with a pool of as many connections. Prints the same JSON object
as the C load generator. The gap between the two figures on one server is the client's own cost.
"""

from __future__ import annotations

import json
import sys
import time

import uvloop

from async_chat import ChatClient, Message

from .harness import closed_loop_timed, own_cpu_seconds, percentile
from .peers import CONTENT, SENDER


async def main(port: int, connections: int, warmup: float, seconds: float, transport: str, protocol: str) -> None:
    message = Message(sender=SENDER, content=CONTENT)
    async with ChatClient("127.0.0.1", port, transport=transport, protocol=protocol, pool_size=connections) as client:
        await closed_loop_timed(lambda _i: client.sendMessage(message), connections, warmup)
        done, failed, took, latencies = await closed_loop_timed(
            lambda _i: client.sendMessage(message), connections, seconds
        )
    micros = [s * 1e6 for s in latencies]
    print(json.dumps({
        "calls": done, "errors": failed, "reconnects": 0, "waiting": 0, "seconds": took,
        "p50_us": percentile(micros, 50), "p99_us": percentile(micros, 99), "p999_us": percentile(micros, 99.9),
        "load_cpu_s": own_cpu_seconds(),
    }))


if __name__ == "__main__":
    port, connections, warmup, seconds, transport, protocol = sys.argv[1:7]
    started = time.perf_counter()
    uvloop.run(main(int(port), int(connections), float(warmup), float(seconds), transport, protocol))
