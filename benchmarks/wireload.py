"""Load that publishes and subscribes over raw framed binary connections, decoding with thriftpy2's Cython
codec: light enough that one process can receive what the server delivers at its peak.

    python -m benchmarks.wireload openloop PORT RATE WARMUP SECONDS
    python -m benchmarks.wireload fanout PORT SUBSCRIBERS WARMUP SECONDS [RATE [SERVER_PID [LINGER_MS]]]

Each prints one JSON object. A message's content is the monotonic clock, in nanoseconds, when it was due
(open loop: published by openloop.c) or sent (fan-out): the subscriber's latency is its arrival minus
that, on the one clock every process of the machine shares.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import uvloop
from thriftpy2.protocol.cybin import TCyBinaryProtocol  # type: ignore[attr-defined]
from thriftpy2.thrift import TMessageType
from thriftpy2.transport.memory.cymemory import TCyMemoryBuffer  # type: ignore[import-not-found]

from async_chat.contract import ChatService, Message

from . import loadgen, peers
from .harness import allow_open_files, own_cpu_seconds, percentile

_OUT = TCyMemoryBuffer()
_PROT = TCyBinaryProtocol(_OUT)


def framed_call(api: str, seqid: int, **kwargs: Any) -> bytes:
    """One framed, strict binary call of `api` with `kwargs` as its arguments."""
    _PROT.write_message_begin(api, TMessageType.CALL, seqid)
    _PROT.write_struct(getattr(ChatService, api + "_args")(**kwargs))
    body: bytes = _OUT.getvalue()
    _OUT.clean()
    return len(body).to_bytes(4, "big") + body


class Wire:
    """One framed, strict binary connection; calls may be pipelined, replies come back in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seqid = 0

    @classmethod
    async def open(cls, port: int) -> Wire:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    def request(self, api: str, **kwargs: Any) -> bytes:
        self.seqid += 1
        return framed_call(api, self.seqid, **kwargs)

    async def frame(self) -> bytes:
        size = int.from_bytes(await self.reader.readexactly(4), "big")
        return await self.reader.readexactly(size)

    @staticmethod
    def result(api: str, frame: bytes) -> Any:
        prot = TCyBinaryProtocol(TCyMemoryBuffer(frame))
        _name, kind, _seqid = prot.read_message_begin()
        if kind != TMessageType.REPLY:
            raise RuntimeError(f"{api} was answered with an exception")
        result = prot.read_struct(getattr(ChatService, api + "_result")())
        if getattr(result, "error", None) is not None:
            raise RuntimeError(f"{api} refused: {result.error.reason}")
        return getattr(result, "success", None)  # a void method has none

    async def call(self, api: str, **kwargs: Any) -> Any:
        self.writer.write(self.request(api, **kwargs))
        return self.result(api, await self.frame())


def _cpu_of(pid: int) -> float:
    """CPU seconds process `pid` has used (0 without one): the server's, over the measured seconds."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _latency(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "p999_ms": percentile(ms, 99.9),
            "max_ms": max(ms, default=float("nan"))}


async def _unsubscribed(wire: Wire) -> None:
    Wire.result("unsubscribe", await wire.frame())


async def openloop(port: int, rate: float, warmup: float, seconds: float) -> dict[str, Any]:
    """Publish `rate` messages a second on schedule, whatever the server does; measure at a subscriber.

    The publisher is openloop.c in a process of its own (this one's Python publisher when there is no C
    compiler); this process only subscribes, so that receiving is all it does."""
    room = f"openloop-{os.getpid()}"
    subscriber = await Wire.open(port)
    sub = await subscriber.call("subscribe", room=room, from_seq=0)
    total = int(rate * (warmup + seconds))
    counts = {"delivered": 0, "missed": 0}
    # Due and arrival times (ns) in arrays, not a list of tuples: a few hundred thousand tuples that the
    # garbage collector walks made this subscriber stall for tens of milliseconds, overflow its queue and be
    # told of missed messages that no slowness of the server's caused.
    dues, arrived = array("q"), array("q")
    cpu = own_cpu_seconds()
    binary = loadgen.compiled("openloop")
    publisher = asyncio.create_task(
        _publish_c(binary, port, room, rate, total) if binary else _publish_python(port, room, rate, total))

    async def receive() -> None:
        while counts["delivered"] + counts["missed"] < total:
            batch = await subscriber.call("poll", subscription_id=sub.subscription_id, max_messages=1000,
                                          wait_ms=200)
            now = time.monotonic_ns()
            counts["missed"] += batch.missed
            counts["delivered"] += len(batch.messages)
            dues.extend(int(message.content) for message in batch.messages)
            arrived.extend(now for _ in batch.messages)
            if publisher.done() and not batch.messages and not batch.missed:
                return  # a message is queued before its publish is answered: nothing more will come

    receiving = asyncio.create_task(receive())
    try:
        await asyncio.wait_for(asyncio.gather(publisher, receiving), timeout=warmup + seconds + 60)
    finally:
        for task in (publisher, receiving):
            task.cancel()
        await asyncio.gather(publisher, receiving, return_exceptions=True)
        subscriber.writer.close()
    sent = publisher.result()
    measured_from = sent.pop("start_ns") + int(warmup * 1e9)
    latencies = [(at - due) / 1e6 for due, at in zip(dues, arrived, strict=True) if due >= measured_from]
    # Published (answered) but neither delivered nor reported missed: a silent loss, counted as errors.
    lost = max(0, sent["replies"] - counts["delivered"] - counts["missed"])
    load_cpu = own_cpu_seconds() - cpu + sent.pop("load_cpu_s")
    return {"rate": rate, **sent, **counts, "lost": lost, "errors": sent["errors"] + lost, **_latency(latencies),
            "load_cpu_share": load_cpu / (warmup + seconds), "c_publisher": 1.0 if binary else 0.0}


STAMP = "0" * 19  # where openloop.c writes each call's due time


async def _publish_c(binary: Path, port: int, room: str, rate: float, total: int) -> dict[str, float]:
    request, reply = peers.call_bytes("framed", "binary", message=Message(sender="openloop", room=room,
                                                                          content=STAMP))
    proc = await asyncio.create_subprocess_exec(
        str(binary), "127.0.0.1", str(port), repr(rate), str(total), request.hex(), reply.hex(),
        str(request.index(STAMP.encode())), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return loadgen.figures_of(proc.returncode, out, err)


async def _publish_python(port: int, room: str, rate: float, total: int) -> dict[str, Any]:
    """The fallback publisher: the same schedule as openloop.c, kept as well as Python can."""
    publisher = await Wire.open(port)
    start = time.monotonic_ns() + 10_000_000
    interval = 1e9 / rate
    counts = {"sent": 0, "replies": 0, "errors": 0}

    async def publish() -> None:
        sent = 0
        while sent < total:
            due_count = min(total, int((time.monotonic_ns() - start) / interval) + 1)
            if due_count > sent:
                publisher.writer.write(b"".join(publisher.request("sendMessage", message=Message(
                    sender="openloop", room=room, content=str(start + int(i * interval))))
                    for i in range(sent, due_count)))
                counts["sent"] = sent = due_count
            await asyncio.sleep(max(0.0, (start + sent * interval - time.monotonic_ns()) / 1e9))

    async def acknowledge() -> None:
        while counts["replies"] + counts["errors"] < total:
            frame = await publisher.frame()
            try:
                Wire.result("sendMessage", frame)
                counts["replies"] += 1
            except RuntimeError:
                counts["errors"] += 1

    try:
        await asyncio.gather(publish(), acknowledge())
    finally:
        publisher.writer.close()
    return {**counts, "start_ns": start, "load_cpu_s": 0.0}  # its CPU is this process's


async def fanout(
    port: int, subscribers: int, warmup: float, seconds: float, rate: float = 0.0, server_pid: int = 0,
    linger_ms: int = 0,
) -> dict[str, Any]:
    """`subscribers` long-poll one room while one publisher sends as fast as the server answers it, or
    (`rate`) open loop: message i when it is due, stamped with that time, and latency taken from the
    oldest message of each batch (the newest would hide how long the batch waited).

    The room is this run's own and every subscription is ended before the run returns: a subscription
    outlives its connection (until --subscription-ttl), and ten thousand left behind in a shared room
    would slow the next run's publishes. The subscribers are fanout.c's (this process's own without a C
    compiler: about as costly per delivery as the server, so that its latency is partly its own)."""
    binary = loadgen.compiled("fanout")
    if binary is not None:
        return await _fanout_c(binary, port, subscribers, warmup, seconds, rate, server_pid, linger_ms)
    room = f"fanout-{os.getpid()}"
    allow_open_files(subscribers)
    wires = []
    for _ in range(subscribers):
        wires.append(await Wire.open(port))
    subs = await asyncio.gather(*(w.call("subscribe", room=room, from_seq=0) for w in wires))
    publisher = await Wire.open(port)
    running = True
    measuring = False
    counts = {"published": 0, "delivered": 0, "missed": 0, "errors": 0}
    latencies: list[float] = []

    async def publish_at_rate() -> None:
        """Open loop: each message when due; replies are counted by `replies`, not waited for."""
        start, interval, i = time.monotonic_ns(), 1e9 / rate, 0
        while running:
            due = start + int(i * interval)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            publisher.writer.write(publisher.request("sendMessage", message=Message(
                sender="fanout", content=str(due), room=room)))
            i += 1

    async def count_reply() -> None:
        """Read the publisher's next reply: a publish acknowledged (counted while measuring) or refused."""
        try:
            Wire.result("sendMessage", await publisher.frame())
            if measuring:
                counts["published"] += 1
        except RuntimeError:
            counts["errors"] += 1

    async def replies() -> None:
        while running:
            await count_reply()

    async def publish() -> None:
        while running:
            acknowledged, refused = await _publish_burst(publisher, room)
            counts["published"] += acknowledged if measuring else 0
            counts["errors"] += refused

    async def receive(wire: Wire, sub_id: str, sample: bool) -> None:
        while running:
            batch = await wire.call("poll", subscription_id=sub_id, max_messages=1000, wait_ms=1000,
                                    linger_ms=linger_ms or None)
            if measuring:
                counts["delivered"] += len(batch.messages)
                counts["missed"] += batch.missed
                if sample and batch.messages:
                    stamped = batch.messages[0 if rate else -1]  # open loop: the oldest, which waited longest
                    latencies.append((time.monotonic_ns() - int(stamped.content)) / 1e6)

    every = max(1, subscribers // 100)  # latency from a hundred subscribers is enough, and cheap
    tasks = [asyncio.create_task(receive(w, s.subscription_id, i % every == 0)) for i, (w, s) in
             enumerate(zip(wires, subs, strict=True))]
    feeders = [publish_at_rate(), replies()] if rate else [publish()]
    tasks += [asyncio.create_task(feeder) for feeder in feeders]
    await asyncio.sleep(warmup)
    measuring, cpu, started = True, own_cpu_seconds(), time.perf_counter()
    server_cpu = _cpu_of(server_pid)
    await asyncio.sleep(seconds)
    measuring = False
    took = time.perf_counter() - started
    load_cpu = own_cpu_seconds() - cpu
    server_cpu = _cpu_of(server_pid) - server_cpu
    running = False
    for feeder in tasks[-len(feeders):]:
        feeder.cancel()  # the publisher; each subscriber ends with its poll, woken by the unsubscribe
    for wire, sub in zip(wires, subs, strict=True):
        wire.writer.write(wire.request("unsubscribe", subscription_id=sub.subscription_id))
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(_unsubscribed(wire) for wire in wires))
    for wire in [*wires, publisher]:
        wire.writer.close()
    return {"subscribers": subscribers, "rate": rate, "linger_ms": linger_ms,
            "deliveries_per_s": counts["delivered"] / took,
            "publishes_per_s": counts["published"] / took, **counts, **_latency(latencies),
            "load_cpu_share": load_cpu / took, "server_cpu_share": server_cpu / took, "c_subscribers": 0.0}


PLACEHOLDER = "X" * 24  # a subscription id's length (the server's are 24 hex digits); fanout.c writes it here


async def _fanout_c(
    binary: Path, port: int, subscribers: int, warmup: float, seconds: float, rate: float, server_pid: int,
    linger_ms: int,
) -> dict[str, Any]:
    """fanout.c subscribes and polls; the publisher is openloop.c at `rate`, or this process's closed loop.

    Open loop, every subscriber polls on until it has seen every message sent (delivered or reported
    missed), so that a message neither is counted as lost."""
    room = f"fanout-{os.getpid()}"
    allow_open_files(subscribers)
    subscribe = framed_call("subscribe", 1, room=room, from_seq=0)
    poll = framed_call("poll", 2, subscription_id=PLACEHOLDER, max_messages=1000, wait_ms=1000,
                       linger_ms=linger_ms or None)
    unsubscribe = framed_call("unsubscribe", 3, subscription_id=PLACEHOLDER)
    total = int(rate * (warmup + seconds + 0.3)) if rate else 0  # on past the window's end
    stamp_place = PLACEHOLDER.encode()
    proc = await asyncio.create_subprocess_exec(
        str(binary), "127.0.0.1", str(port), str(subscribers), repr(warmup), repr(seconds), str(total),
        subscribe.hex(), poll.hex(), str(poll.index(stamp_place)), unsubscribe.hex(),
        str(unsubscribe.index(stamp_place)), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    publishing: asyncio.Task[dict[str, Any]] | None = None
    try:
        ready = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
        if ready.strip() != b"ready":
            raise RuntimeError(f"fanout.c did not subscribe: {(await proc.stderr.read()).decode()[-2000:]}")
        publishing = asyncio.create_task(
            _publish_c(loadgen.compiled("openloop") or binary, port, room, rate, total) if rate
            else _publish_closed(port, room, proc))
        await asyncio.sleep(0.1 + warmup)
        server_cpu, own_cpu = _cpu_of(server_pid), own_cpu_seconds()
        await asyncio.sleep(seconds)
        server_cpu, own_cpu = _cpu_of(server_pid) - server_cpu, own_cpu_seconds() - own_cpu
        out, err = await asyncio.wait_for(proc.communicate(), timeout=warmup + seconds + 60)
        sent = await publishing
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if publishing is not None and not publishing.done():
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
    got = loadgen.figures_of(proc.returncode, out, err)
    took = got.pop("seconds")
    # Open loop, each subscriber saw every message acknowledged, or reported it missed; what neither is lost.
    lost = max(0, int(sent["replies"]) * subscribers - int(got.pop("delivered_all")) - int(got.pop("missed_all"))) \
        if rate else 0
    errors = int(sent["errors"]) + lost
    return {"subscribers": subscribers, "rate": rate, "linger_ms": linger_ms,
            "deliveries_per_s": got["delivered"] / took,
            "publishes_per_s": got["delivered"] / subscribers / took, "published": sent["replies"],
            "delivered": got["delivered"], "missed": got["missed"], "lost": lost, "errors": errors,
            "batches": got["batches"], **{k: got[k] for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")},
            "load_cpu_share": (got["load_cpu_s"] + own_cpu + (sent["load_cpu_s"] * seconds / (total / rate) if rate
                                                              else 0.0)) / took,
            "server_cpu_share": server_cpu / took, "c_subscribers": 1.0}


async def _publish_closed(port: int, room: str, subscribers: asyncio.subprocess.Process) -> dict[str, Any]:
    """Publish as fast as the server answers, 8 calls in flight, until the subscribers' process ends."""
    publisher = await Wire.open(port)
    counts = {"replies": 0, "errors": 0}
    try:
        while subscribers.returncode is None:
            acknowledged, refused = await _publish_burst(publisher, room)
            counts["replies"] += acknowledged
            counts["errors"] += refused
    finally:
        publisher.writer.close()
    return {**counts, "load_cpu_s": 0.0}  # its CPU is this process's, measured by the caller


async def _publish_burst(publisher: Wire, room: str, window: int = 8) -> tuple[int, int]:
    """`window` publishes in flight at once, each stamped with its send time; (acknowledged, refused)."""
    publisher.writer.write(b"".join(publisher.request("sendMessage", message=Message(
        sender="fanout", content=str(time.monotonic_ns()), room=room)) for _ in range(window)))
    acknowledged = 0
    for _ in range(window):
        try:
            Wire.result("sendMessage", await publisher.frame())
            acknowledged += 1
        except RuntimeError:
            pass
    return acknowledged, window - acknowledged


if __name__ == "__main__":
    mode, port, amount, warmup, seconds = sys.argv[1:6]
    if mode == "openloop":
        result = uvloop.run(openloop(int(port), float(amount), float(warmup), float(seconds)))
    else:
        rate = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
        server_pid = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        linger_ms = int(sys.argv[8]) if len(sys.argv) > 8 else 0
        result = uvloop.run(fanout(int(port), int(amount), float(warmup), float(seconds), rate, server_pid, linger_ms))
    print(json.dumps(result))
