"""The self-checking stress run: Centrifugo's method for its Redis engine, scaled to a CI machine.

Publishers and subscribers of every kind (ChatClient, thriftpy2's raw client in several dialects, Apache
Thrift's own Python library in a process of its own) talk to real server processes through a TCP proxy
of ours that cuts connections at random points, in the middle of requests and replies. Queues are small
so that they overflow, history short so that overflow sometimes outruns it, subscriptions expire under a
subscriber that naps; on Redis a node is killed and replaced, Redis is flushed and restarted; on SQLite
the server is SIGKILLed and started again on the same file.

Every subscriber checks what it receives as it goes: seqs strictly increasing, each message at exactly
the position it expects, every gap announced at the gap (`missed`, or a renumbering after Redis lost
data). At the end every subscriber must have reached the end of its room, and no (room, seq) may carry
two contents anywhere, acknowledged or delivered. `python -m tests.stress --seconds N` (`make stress
SECONDS=N`) runs it for longer and prints its counts; `tests/test_stress.py` runs it briefly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thriftpy2.contrib.aio.client import TAsyncClient
from thriftpy2.contrib.aio.socket import StreamHandler

from async_chat import ChatClient, ChatError, Message, Missed, NoSuchSubscription
from async_chat.contract import ChatService, WireChatError
from async_chat.wire import Dialect
from benchmarks.processes import LOOPBACK, RedisProcess, ServerProcess, start_server

from .proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("alpha", "beta", "gamma")
SERVER_FLAGS = (
    "--publish-rate", "0", "--queue-size", "16", "--history", "64", "--subscription-ttl", "3",
    "--max-poll-wait-ms", "1000", "--idle-timeout", "5", "--broker-timeout", "1", "--drain-timeout", "2",
)
"""Small queues and history, short expiry: the failure paths run often, not once in a blue moon."""
CUT_PROBABILITY = 0.01
"""Of each chunk through the proxy, either way."""
DRAIN_SECONDS = 30.0
"""After the chaos: how long subscribers get to reach the end of their rooms."""


@dataclass
class Report:
    """What a run did, and what it found wrong (nothing, if the promise holds)."""

    broker: str
    seconds: float
    acked: int = 0
    delivered: int = 0
    missed: int = 0
    renumbered: int = 0
    cuts: int = 0
    reconnects: int = 0
    resubscribes: int = 0
    dropped: int = 0
    expired: int = 0
    node_restarts: int = 0
    node_freezes: int = 0
    redis_flushes: int = 0
    redis_restarts: int = 0
    violations: list[str] = field(default_factory=list)


class Ledger:
    """Every (room, seq) anyone was told of, with its content: one content per seq, or a violation."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.acks: dict[tuple[str, int], str] = {}
        self.seen: dict[tuple[str, int], str] = {}
        self.attempts: dict[str, int] = dict.fromkeys(ROOMS, 0)
        """Publish attempts per room, retries included: no more seqs than this can have been issued, so
        no subscriber can truly have missed more (a made-up missed count is a violation too)."""

    def ack(self, room: str, seq: int, content: str) -> None:
        self.report.acked += 1
        self._record(self.acks, "acknowledged", room, seq, content)
        seen = self.seen.get((room, seq))
        if seen is not None and seen != content:
            self.violate(f"{room}#{seq} acknowledged as {content!r} but delivered as {seen!r}")

    def saw(self, room: str, seq: int, content: str) -> None:
        self._record(self.seen, "delivered", room, seq, content)
        acked = self.acks.get((room, seq))
        if acked is not None and acked != content:
            self.violate(f"{room}#{seq} delivered as {content!r} but acknowledged as {acked!r}")

    def end_of(self, room: str) -> int:
        return max((seq for (r, seq) in self.acks if r == room), default=0)

    def violate(self, what: str) -> None:
        if len(self.report.violations) < 50:
            self.report.violations.append(what)

    def _record(self, book: dict[tuple[str, int], str], how: str, room: str, seq: int, content: str) -> None:
        old = book.setdefault((room, seq), content)
        if old != content:
            self.violate(f"{room}#{seq} {how} twice, as {old!r} and as {content!r}: a seq issued twice")


class Tally:
    """One subscriber's check, fed as it receives: every seq once, in order, or announced at its gap."""

    def __init__(self, name: str, room: str, ledger: Ledger, position: int) -> None:
        self.name, self.room, self.ledger, self.position = name, room, ledger, position
        self.missed = 0

    def gap(self, count: int, resume: int, renumbered: bool) -> None:
        report = self.ledger.report
        if renumbered:
            report.renumbered += 1
            if resume < self.position:
                self.ledger.violate(f"{self.name}: renumbered backwards, {self.position} -> {resume}")
        elif resume != self.position + count:
            self.ledger.violate(
                f"{self.name}: told of {count} missed at {self.position}, but resumes at {resume}"
            )
        report.missed += count
        self.missed += count
        self.position = max(self.position, resume)

    def message(self, message: Any) -> None:
        if message.seq != self.position:
            self.ledger.violate(
                f"{self.name}: got #{message.seq} where #{self.position} was due, with no word of a gap"
            )
        self.ledger.report.delivered += 1
        self.ledger.saw(self.room, message.seq, message.content)
        self.position = max(self.position, message.seq + 1)

    def batch(self, batch: Any) -> None:
        first = batch.messages[0].seq if batch.messages else batch.next_seq
        if first != self.position or batch.renumbered:
            self.gap(batch.missed, first, bool(batch.renumbered))
        elif batch.missed:
            self.ledger.violate(f"{self.name}: missed {batch.missed} reported away from any gap")
        for message in batch.messages:
            self.message(message)
        if batch.next_seq != self.position:
            self.ledger.violate(f"{self.name}: next_seq {batch.next_seq} after reaching {self.position}")
            self.position = max(self.position, batch.next_seq)


class Run:
    """One stress run against one broker kind."""

    def __init__(self, broker: str, seconds: float, seed: int, workdir: Path) -> None:
        self.report = Report(broker, seconds)
        self.ledger = Ledger(self.report)
        self.rng = random.Random(seed)
        self.seconds = seconds
        self.workdir = workdir
        self.redis: RedisProcess | None = None
        self.nodes: list[ServerProcess] = []
        self.proxies: list[Proxy] = []
        self.chaos_over = asyncio.Event()
        self.publishing_over = asyncio.Event()
        self.drained: list[asyncio.Event] = []

    # -- the run ---------------------------------------------------------------------------------

    async def __call__(self) -> Report:
        async with contextlib.AsyncExitStack() as stack:
            if self.report.broker == "redis":
                self.redis = RedisProcess(self.workdir, persistent=False)
                await self.redis.start()
                stack.push_async_callback(self.redis.kill)
            stack.push_async_callback(self._stop_nodes)
            for _ in range(2 if self.redis else 1):
                node = await self._start_node()
                self.nodes.append(node)
                proxy = await stack.enter_async_context(Proxy(node.port))
                proxy.cut_at_random(self.rng, CUT_PROBABILITY)
                self.proxies.append(proxy)
            gen_py = await asyncio.to_thread(_generate_python, self.workdir)
            async with asyncio.TaskGroup() as group:
                subscribers = self._subscribers()
                for make in subscribers:
                    self.drained.append(asyncio.Event())
                    group.create_task(make(self.drained[-1]))
                publishers = [
                    group.create_task(self._chat_client_publisher(i, dialect))
                    for i, dialect in enumerate((Dialect(), Dialect("framed", "compact")))
                ]
                publishers.append(group.create_task(self._apache_publisher(gen_py)))
                group.create_task(self._chaos())
                await asyncio.gather(*publishers)
                self.publishing_over.set()
            self.report.cuts = sum(p.cuts for p in self.proxies)
            await self._collect_stats()
        return self.report

    def _subscribers(self) -> list[Callable[[asyncio.Event], Awaitable[None]]]:
        made: list[Callable[[asyncio.Event], Awaitable[None]]] = []
        for index, room in enumerate(ROOMS):
            proxy = self.proxies[index % len(self.proxies)]
            made.append(lambda done, r=room, p=proxy: self._stream_subscriber(r, p, done, nap=False))
            dialect = (Dialect(), Dialect("framed", "binary"), Dialect("buffered", "compact"))[index]
            made.append(lambda done, r=room, p=proxy, d=dialect: self._raw_subscriber(r, p, d, done))
        made.append(lambda done: self._stream_subscriber(ROOMS[0], self.proxies[-1], done, nap=True))
        return made

    # -- publishers ------------------------------------------------------------------------------

    async def _chat_client_publisher(self, index: int, dialect: Dialect) -> None:
        proxy = self.proxies[index % len(self.proxies)]
        deadline = time.monotonic() + self.seconds
        async with ChatClient(LOOPBACK, proxy.port, transport=dialect.transport, protocol=dialect.protocol,
                              timeout=3, retries=0) as client:
            i = 0
            while time.monotonic() < deadline:
                room = self.rng.choice(ROOMS)
                content = f"cc{index}-{i}"
                message = Message(sender=f"cc{index}", content=content, room=room, client_msg_id=content)
                for _ in range(200):
                    self.ledger.attempts[room] += 1
                    try:
                        seq = await client.publish(message)
                    except ChatError:  # cut, timed out, broker away, node restarting: the same id again
                        self.report.reconnects += 1
                        await asyncio.sleep(0.02)  # a retry pace, as a real client's
                    else:
                        self.ledger.ack(room, seq, content)
                        break
                i += 1
                await asyncio.sleep(self.rng.uniform(0, 0.01))  # a publisher's own pace, not a wait

    async def _apache_publisher(self, gen_py: Path) -> None:
        room = ROOMS[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests" / "stress_apache_publisher.py"), str(gen_py),
            str(self.proxies[-1].port), room, str(self.seconds), "apache",
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self.seconds + 60):
                while line := await proc.stdout.readline():
                    self.ledger.attempts[room] += 1
                    seq, content = line.decode().rstrip("\n").split("\t")
                    if seq != "retry":
                        self.ledger.ack(room, int(seq), content)
                if await proc.wait() != 0:
                    self.ledger.violate(f"the Apache publisher exited with {proc.returncode}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # -- subscribers -----------------------------------------------------------------------------

    def _check_missed(self, tally: Tally) -> None:
        """At the end: a subscriber told of more missed than its room had publish attempts was told wrong."""
        attempts = self.ledger.attempts[tally.room]
        if tally.missed > attempts:
            self.ledger.violate(f"{tally.name}: told of {tally.missed} missed; its room had {attempts} publishes")

    def _done(self, tally: Tally) -> bool:
        return self.publishing_over.is_set() and tally.position > self.ledger.end_of(tally.room)

    async def _stream_subscriber(self, room: str, proxy: Proxy, drained: asyncio.Event, nap: bool) -> None:
        name = f"stream:{room}" + (":napper" if nap else "")
        async with ChatClient(LOOPBACK, proxy.port, timeout=3) as client:
            for _ in range(100):  # entering subscribes, and raises if that is cut: an app retries it
                stream = client.subscribe(room, max_messages=self.rng.choice((5, 50)), wait_ms=500)
                try:
                    await stream.__aenter__()
                    break
                except ChatError:
                    self.report.reconnects += 1
                    await asyncio.sleep(0.05)  # a retry pace
            else:
                self.ledger.violate(f"{name}: could not subscribe in 100 tries")
                drained.set()
                return
            async with stream:
                tally = Tally(name, room, self.ledger, stream.next_seq)
                napped = time.monotonic()
                async for item in self._until_drained(stream, tally, drained):
                    if isinstance(item, Missed):
                        tally.gap(item.count, item.next_seq, item.reset)
                    else:
                        tally.message(item)
                    if not self.publishing_over.is_set():
                        napped = await self._dawdle(nap, napped)
                self.report.reconnects += stream.reconnects
                self._check_missed(tally)

    async def _until_drained(self, stream: Any, tally: Tally, drained: asyncio.Event) -> AsyncIterator[Any]:
        deadline: float | None = None
        while not self._done(tally):
            if self.publishing_over.is_set() and deadline is None:
                deadline = time.monotonic() + DRAIN_SECONDS
            try:
                async with asyncio.timeout(1.0):
                    item = await anext(stream)
            except TimeoutError:
                if deadline is not None and time.monotonic() > deadline:
                    self.ledger.violate(
                        f"{tally.name}: stuck at {tally.position}; its room ends at {self.ledger.end_of(tally.room)}"
                    )
                    break
                continue
            yield item
        drained.set()

    async def _dawdle(self, nap: bool, napped: float) -> float:
        """A slow consumer, now and then; the napper also outsleeps the subscription TTL (3 s) at times."""
        if nap and time.monotonic() - napped > 6:
            await asyncio.sleep(4)  # past --subscription-ttl: the subscription expires under it
            return time.monotonic()
        if self.rng.random() < 0.02:
            await asyncio.sleep(self.rng.uniform(0.2, 0.6))  # long enough for a queue of 16 to overflow
        return napped

    async def _raw_subscriber(self, room: str, proxy: Proxy, dialect: Dialect, drained: asyncio.Event) -> None:
        name = f"raw:{room}:{dialect}"
        conn: tuple[asyncio.StreamWriter, Any] | None = None
        sub_id: str | None = None
        tally: Tally | None = None
        deadline: float | None = None
        try:
            while tally is None or not self._done(tally):
                if self.publishing_over.is_set() and deadline is None:
                    deadline = time.monotonic() + DRAIN_SECONDS
                if deadline is not None and time.monotonic() > deadline:
                    assert tally is not None
                    self.ledger.violate(f"{name}: stuck at {tally.position}; room ends at {self.ledger.end_of(room)}")
                    break
                try:
                    async with asyncio.timeout(3):
                        if conn is None:
                            reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
                            client = TAsyncClient(ChatService, dialect.protocol_on(StreamHandler(reader, writer)))
                            conn = (writer, client)
                        client = conn[1]
                        if sub_id is None:
                            sub = await client.subscribe(room, tally.position if tally else 0)
                            if tally is None:
                                tally = Tally(name, room, self.ledger, sub.next_seq)
                            elif sub.next_seq != tally.position:
                                self.ledger.violate(f"{name}: resubscribed at {tally.position}, got {sub.next_seq}")
                            sub_id = sub.subscription_id
                        assert tally is not None
                        batch = await client.poll(sub_id, self.rng.choice((3, 30)), 500, tally.position)
                    tally.batch(batch)
                except WireChatError as exc:
                    if exc.code == NoSuchSubscription.code:  # expired, or its node was replaced
                        self.report.resubscribes += 1
                        sub_id = None
                    else:
                        await asyncio.sleep(0.05)  # UNAVAILABLE while Redis is away: a retry pace
                except Exception:  # cut, or timed out: a new connection, the same position
                    self.report.reconnects += 1
                    if conn is not None:
                        conn[0].transport.abort()
                    conn = None
        finally:
            if conn is not None:
                conn[0].transport.abort()
            if tally is not None:
                self._check_missed(tally)
            drained.set()

    # -- chaos -----------------------------------------------------------------------------------

    async def _chaos(self) -> None:
        """On Redis: every few seconds replace a node (SIGKILL), freeze one, flush Redis or restart it. On
        SQLite: SIGKILL the node and start it again on the same file, or freeze it."""
        deadline = time.monotonic() + self.seconds
        actions = [self._replace_node, self._freeze_node]
        if self.redis is not None:
            actions += [self._flush, self._restart_redis]
        turn = 0
        while self.report.broker != "memory" and time.monotonic() + 3 < deadline:
            await asyncio.sleep(self.rng.uniform(1.5, 3.0))  # the chaos's own pace
            await actions[turn % len(actions)]()
            turn += 1
        self.chaos_over.set()

    async def _replace_node(self) -> None:
        index = self.rng.randrange(len(self.nodes))
        old = self.nodes[index]
        await self._stats_of(old)
        await old.kill()  # SIGKILL: its subscriptions die with it
        self.nodes[index] = node = await self._start_node()
        self.proxies[index].target_port = node.port
        self.report.node_restarts += 1

    async def _freeze_node(self) -> None:
        node = self.rng.choice(self.nodes)
        node.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)  # a paused machine, for a second
        finally:
            node.proc.send_signal(signal.SIGCONT)
        self.report.node_freezes += 1

    async def _flush(self) -> None:
        import redis.asyncio as aioredis

        assert self.redis is not None
        async with aioredis.Redis.from_url(self.redis.url) as probe:
            await probe.flushall()
        self.report.redis_flushes += 1

    async def _restart_redis(self) -> None:
        assert self.redis is not None
        await self.redis.restart()  # SIGKILL, then back empty
        self.report.redis_restarts += 1

    # -- nodes -----------------------------------------------------------------------------------

    async def _start_node(self) -> ServerProcess:
        broker = {"memory": "memory://", "sqlite": f"sqlite:///{self.workdir / 'stress.db'}"}.get(
            self.report.broker, self.redis.url if self.redis is not None else ""
        )
        return await start_server("--broker", broker, *SERVER_FLAGS)

    async def _stats_of(self, node: ServerProcess) -> None:
        with contextlib.suppress(ChatError):
            async with ChatClient(LOOPBACK, node.port, timeout=2) as client:
                stats = await client.stats(0)
                self.report.dropped += stats.dropped
                self.report.expired += stats.expired

    async def _collect_stats(self) -> None:
        for node in self.nodes:
            await self._stats_of(node)

    async def _stop_nodes(self) -> None:
        for node in self.nodes:
            await node.kill()
            bugs = [line for line in node.log if "event=internal_error" in line or "Traceback" in line]
            if bugs:
                self.ledger.violate("a server logged an internal error: " + bugs[0])


BROKERS = ("memory", "sqlite", "redis")


def _generate_python(where: Path) -> Path:
    from .test_interop import generate

    return generate((ROOT / "chat.thrift").read_text(), where / "apache", "py")


async def stress(broker: str, seconds: float, seed: int | None = None) -> Report:
    seed = random.randrange(2**32) if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="async_chat_stress_") as workdir:
        report = await Run(broker, seconds, seed, Path(workdir))()
    if report.violations:
        report.violations.insert(0, f"seed {seed}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each broker's run lasts")
    parser.add_argument("--broker", choices=(*BROKERS, "all"), default="all")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run's random choices")
    args = parser.parse_args()
    brokers = BROKERS if args.broker == "all" else (args.broker,)
    failed = False
    for broker in brokers:
        report = asyncio.run(stress(broker, args.seconds, args.seed))
        print(json.dumps(asdict(report)), flush=True)
        failed |= bool(report.violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
