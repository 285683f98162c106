"""The Redis broker: every server process on one Redis shares rooms, seqs, history and dedup.

Layout in Redis, per room R (all keys under `async_chat:`):
    room:{R}:seq     the room's counter (a string holding the last seq issued)
    room:{R}:log     a Stream of the room's messages, entry id `<seq>-0`, capped at MAXLEN
    room:{R}:run     while a counter opened by a subscriber awaits its first message: the floor it opened at
    room:{R}:floor   the floor the room's current numbering run began above (readers learn it here too)
    dedup:...        one key per (room, sender, client_msg_id) holding its seq, expiring after dedup_ttl
    epoch            a hash {id, resume_at}: which incarnation of the data this is

Why it is built this way:
- Seq, stream entry and dedup key are written by one Lua script, so a seq is assigned atomically and
  gaplessly across nodes, and a publish is acknowledged only once Redis holds the message.
- Each node reads the streams of the rooms it has subscribers in with one blocking XREAD on one
  connection: one Redis subscription per node, never one per client. Reading the stream (not pub/sub)
  delivers in seq order and resumes exactly where it stopped after a reconnect.
- Redis may lose data: a restart without persistence, from an RDB snapshot or an AOF older than its last
  writes, FLUSHALL/FLUSHDB, a failover to a replica that lagged. Afterwards the only record of the seqs
  it forgot is in nodes that may be stopped, frozen or not yet started, so no waiting can make reusing
  the forgotten range safe. Instead the range is never reused: data is numbered in epochs, and every
  epoch begins above any seq that can have been issued before it. The bound comes from Redis's clock:
  the publish script never issues a seq above `cap(now) = (now_ms - BASE_MS) * 1000 + 999` (1,000 per
  millisecond per room, far above what Redis can run), and an epoch begun at T numbers each room from
  `floor = cap(T)` up. Every seq issued before T is at most cap(T), so none is issued twice, whichever
  node was idle, frozen or started later. This assumes Redis's clock does not step back across a loss.
  A new epoch begins whenever the epoch record is missing (flushed, or Redis came back empty) or Redis
  restarted since it began (its run_id changed: it may have come back with less than it acknowledged);
  the publish script checks both atomically, so no publish runs against data of unknown age. A room's
  counter is also never taken below its stream's last entry (a counter lost on its own), and a room
  without a counter (new, expired, deleted) starts above cap of the previous millisecond. The hub tells
  subscribers of a jump (`renumbered`) rather than counting a range that was never used as missed.
- Rooms are bounded in time: every key of a room expires `room_ttl` after its last publish, unless a node
  has subscribers in it (its reader refreshes the TTL). Streams keep --history entries (at least
  MIN_STREAM), dedup keys live --dedup-ttl.
- Redis unreachable: publishes fail at once with UNAVAILABLE (bounded by `timeout` when Redis hangs),
  polls of existing subscriptions return empty batches, the outage is logged once, and the reader
  reconnects with backoff. redis-py's own retries are off: a retried publish script could store twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..contract import Message
from ..errors import Unavailable
from ..tasks import cancel_and_wait
from . import Broker, Deliver, redact

logger = logging.getLogger(__name__)

PREFIX = "async_chat:"
EPOCH_KEY = PREFIX + "epoch"
MIN_STREAM = 100
"""Each stream keeps --history entries, and at least this many, so that a node reading a little behind
still reads every message (with --history 0 too); history() returns only the last --history of them."""
READ_BLOCK_MS = 1000
"""Longest blocking XREAD: the reader also notices a silent Redis within this (plus `timeout`)."""
RECONNECT_MAX = 1.0
BASE_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: where the clock-derived bound on seqs starts counting (module docstring)."""
PER_MS = 1000
"""Seqs a room may be issued per millisecond since BASE_MS, on average: the slope of the bound."""
MAX_WAIT_RETRIES = 3
KNOWN_FLOORS = 16
"""Floors a node remembers (of epochs, and per room), to tell a renumbering from a loss."""
ROOM_FLOOR_ROOMS = 10_000

_FAILURES = (RedisError, OSError, TimeoutError, RuntimeError)
"""What a Redis call raises when Redis is away. RuntimeError too: under uvloop, redis-py's write to a
connection that Redis closed mid-handshake raises "unable to perform operation on <TCPTransport
closed=True>" rather than a ConnectionError (seen with Redis killed during reconnects)."""

_NOW = f"""#!lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local per_ms = {PER_MS}
local cap = (now - {BASE_MS}) * per_ms + per_ms - 1
"""
"""What every script begins with: Redis's time in ms, which incarnation of Redis this is, and the highest
seq that may be issued now. The `#!lua` line makes Redis (7+) refuse a script that may write as a whole
when it is out of memory, before it runs, instead of refusing one write in the middle of it."""

_PUBLISH = _NOW + """
local e = redis.call('HMGET', KEYS[1], 'id', 'run', 'floor')
if not e[1] or e[1] ~= ARGV[1] or e[2] ~= run then return {'EPOCH'} end
if KEYS[4] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then return {'DUP', tonumber(prev)} end
end
local low = tonumber(e[3])
local run = nil
if redis.call('EXISTS', KEYS[2]) == 0 then
  -- a room new, expired or deleted: above every seq issued before this millisecond, in any room's past
  local fresh = cap - per_ms
  if fresh > low then low = fresh end
  run = low
end
local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if top[1] then
  local last = tonumber(string.match(top[1][1], '^(%d+)'))
  if last > low then low = last end
end
local seq = redis.call('INCR', KEYS[2])
if seq <= low then
  seq = low + 1
  run = low  -- the first of a numbering run: readers learn the floor it jumped to
end
local opened = redis.call('GET', KEYS[5])
if opened then
  -- the counter was opened at a floor by a subscriber (the open script): this is that run's first entry
  if not run then run = tonumber(opened) end
  redis.call('DEL', KEYS[5])
end
if run then redis.call('SET', KEYS[6], run, 'PX', ARGV[7]) else redis.call('PEXPIRE', KEYS[6], ARGV[7]) end
if seq > cap then return {'WAIT', 1} end
if seq ~= tonumber(redis.call('GET', KEYS[2])) then redis.call('SET', KEYS[2], seq) end
local fields = {'s', ARGV[2], 'c', ARGV[3], 't', now}
if run then
  table.insert(fields, 'f')
  table.insert(fields, run)
end
if ARGV[4] ~= '' then
  table.insert(fields, 'k')
  table.insert(fields, ARGV[4])
end
-- string.format, not seq .. '-0': Lua 5.1 writes a number of 15 digits or more as 1.2e+14
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[5], string.format('%d-0', seq), unpack(fields))
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], seq, 'PX', ARGV[6]) end
return {'OK', seq, now}
"""
"""KEYS: epoch, seq, log, dedup key or '', run marker, floor. ARGV: epoch id, sender, content, client_msg_id,
maxlen, dedup ttl ms, room ttl ms. Replies OK seq now | DUP seq | WAIT ms (the bound: only in an epoch's
first millisecond) | EPOCH (this node's epoch is not Redis's: it must resync)."""

_OPEN = _NOW + """
local last = redis.call('GET', KEYS[2])
if not last then
  -- where a new room starts: above every seq issued before this millisecond (the publish script's rule)
  local low = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
  last = cap - per_ms
  if low > last then last = low end
  redis.call('SET', KEYS[2], last, 'PX', ARGV[1])
  redis.call('SET', KEYS[3], last, 'PX', ARGV[1])
  redis.call('SET', KEYS[4], last, 'PX', ARGV[1])
end
return {tonumber(last), tonumber(redis.call('GET', KEYS[4]) or '0')}
"""
"""KEYS: epoch, seq, run marker, floor. ARGV: room ttl ms. The room's last seq and the floor its current
numbering run began above, opening its counter if it has none, so that a subscriber waiting for a new
room's first message sees it follow on, not jump. The run marker makes that first message carry the floor
(`f`), and the floor key keeps it for any server that reads the room later, so that subscribers further
back are told of a renumbering, not of millions of messages missed."""

_EPOCH = _NOW + """
local e = redis.call('HMGET', KEYS[1], 'id', 'run', 'floor')
if e[1] and e[2] == run then return {e[1], tonumber(e[3]), 0} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'run', run, 'floor', cap)
if e[1] then return {ARGV[1], cap, 2} end
return {ARGV[1], cap, 1}
"""
"""KEYS: epoch. ARGV: a fresh id. Returns the current epoch's id and floor, and 0 if it stood, 1 if there
was none (a new Redis, or one emptied), 2 if Redis had restarted since it began. A new epoch's floor is
the highest seq that could have been issued until now."""


def _seq_key(room: str) -> str:
    return f"{PREFIX}room:{{{room}}}:seq"


def _floor_key(room: str) -> str:
    return f"{PREFIX}room:{{{room}}}:floor"


def _run_key(room: str) -> str:
    return f"{PREFIX}room:{{{room}}}:run"


def _log_key(room: str) -> str:
    return f"{PREFIX}room:{{{room}}}:log"


def _dedup_key(room: str, sender: str, client_msg_id: str) -> str:
    # Length-prefixed, so no choice of names can make two different triples share a key.
    return f"{PREFIX}dedup:{len(room)}:{room}{len(sender)}:{sender}{client_msg_id}"


class RedisBroker(Broker):
    """Rooms in Redis, shared by every server process configured with the same URL."""

    def __init__(self, url: str, *, history: int, dedup_ttl: float, timeout: float, room_ttl: float) -> None:
        self.url = url
        self._shown_url = redact(url)
        """The URL for logs and errors: no credentials."""
        self._history = history
        self._maxlen = max(history, MIN_STREAM)
        self._room_ttl_ms = max(int(room_ttl * 1000), 1)
        self._dedup_ttl_ms = max(int(dedup_ttl * 1000), 1)
        self._timeout = timeout
        self._redis = self._connect()
        self._publish = self._redis.register_script(_PUBLISH)
        self._epoch_script = self._redis.register_script(_EPOCH)
        self._open = self._redis.register_script(_OPEN)
        self._deliver: Deliver | None = None
        self._epoch: str | None = None
        self._floor = 0
        """The current epoch's floor: every seq of this epoch is above it."""
        self._floors: list[int] = []
        """Epoch floors this node has seen (the newest KNOWN_FLOORS), for `renumbered`."""
        self._room_floors: OrderedDict[str, list[int]] = OrderedDict()
        """Floors rooms were renumbered to (a room expired or deleted, then written again), as entries
        marked `f` showed them; the most recently seen ROOM_FLOOR_ROOMS rooms."""
        self._refreshed = 0.0
        """When the reader last refreshed the TTL of the rooms it follows."""
        self._resync_lock = asyncio.Lock()
        self._watched: dict[str, int] = {}
        """Rooms the reader follows, each with the last seq delivered."""
        self._watch_changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._queued: list[tuple[list[Any], asyncio.Future[Any]]] = []
        """Publish scripts waiting for the writer, which sends all that are waiting as one pipeline."""
        self._queued_event = asyncio.Event()
        self._reader_id: int | None = None
        self._reader_blocked = False
        self.up = True
        self._down_since = 0.0
        self._outage = ""

    def __repr__(self) -> str:
        state = "up" if self.up else f"DOWN ({self._outage})"
        return (
            f"<RedisBroker {self._shown_url} {state} watched={len(self._watched)} epoch={self._epoch}"
            f" floor={self._floor}>"
        )

    def _connect(self, **options: Any) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=options.pop("socket_timeout", self._timeout),
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            **options,
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Reach Redis once (a wrong URL fails here, loudly), then follow watched rooms in the background."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._resync()
        except _FAILURES as exc:
            await self._redis.aclose()
            raise Unavailable(f"cannot reach the broker {self._shown_url}: {_describe(exc)}") from None
        self._deliver = deliver
        self._reader = asyncio.create_task(self._read_forever(), name="async_chat.redis.reader")
        self._writer = asyncio.create_task(self._write_forever(), name="async_chat.redis.writer")

    async def aclose(self) -> None:
        self._deliver = None
        reader, self._reader = self._reader, None
        writer, self._writer = self._writer, None
        try:
            await cancel_and_wait(writer)
            await cancel_and_wait(reader)
        finally:
            for _args, waiter in self._queued:
                waiter.cancel()
            await self._redis.aclose()

    # -- publishing ------------------------------------------------------------------------------------

    async def publish(self, message: Any) -> tuple[int, bool]:
        if not self.up:
            raise Unavailable(f"the broker is unreachable ({self._outage}); retry later")
        room = message.room
        dedup = _dedup_key(room, message.sender, message.client_msg_id) if message.client_msg_id else ""
        for _attempt in range(MAX_WAIT_RETRIES):
            args = [
                self._epoch or "", message.sender, message.content, message.client_msg_id or "",
                self._maxlen, self._dedup_ttl_ms, self._room_ttl_ms,
            ]
            keys = [EPOCH_KEY, _seq_key(room), _log_key(room), dedup, _run_key(room), _floor_key(room)]
            reply = await self._call(self._queue_publish([*keys, *args]))
            status = reply[0]
            if status == "OK":
                message.seq, message.sent_at_ms = int(reply[1]), int(reply[2])
                return message.seq, True
            if status == "DUP":
                return int(reply[1]), False
            if status == "WAIT":  # an epoch's first millisecond: no seq may be issued yet
                await asyncio.sleep(int(reply[1]) / 1000)
                continue
            await self._call(self._resync())  # EPOCH: Redis's data is not the incarnation this node knew
        raise Unavailable("the broker's data changed during the publish; retry with the same client_msg_id")

    async def _queue_publish(self, keys_and_args: list[Any]) -> Any:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((keys_and_args, waiter))
        self._queued_event.set()
        return await waiter

    async def _write_forever(self) -> None:
        """Send every publish waiting as one pipeline, one pipeline at a time.

        Under load, publishes arriving while a pipeline is out go together in the next one: one round trip
        (and one pass through redis-py) for many publishes, and no waiting at all when there is no load.
        """
        while True:
            await self._queued_event.wait()
            self._queued_event.clear()
            batch, self._queued = self._queued, []
            batch = [(args, waiter) for args, waiter in batch if not waiter.done()]  # drop calls given up on
            if not batch:
                continue
            try:
                replies = await self._run_scripts([args for args, _waiter in batch])
            except Exception as exc:  # every waiter gets the failure; the writer lives on
                for _args, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for (_args, waiter), reply in zip(batch, replies, strict=True):
                if not waiter.done():
                    if isinstance(reply, Exception):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)

    async def _run_scripts(self, calls: list[list[Any]]) -> list[Any]:
        """EVALSHA each call in one pipeline. A Redis restarted since forgets the script: load it and resend
        just the calls it refused (the others ran; sending them again would store them twice)."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    pipe.evalsha(self._publish.sha, 6, *calls[i])
                for i, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], NoScriptError)]
            if not todo:
                break
            await self._redis.script_load(_PUBLISH)
        return replies

    async def _call(self, awaitable: Any) -> Any:
        """One Redis round trip, bounded by the timeout; failures become UNAVAILABLE (and an outage)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await awaitable
        except ResponseError as exc:  # Redis answered, and said no (out of memory, read-only): not an outage
            self.errors += 1
            raise Unavailable(f"the broker refused the call ({exc}); retry later with the same client_msg_id") from None
        except _FAILURES as exc:
            self.errors += 1
            self._mark_down(exc)
            raise Unavailable(f"the broker is unreachable ({_describe(exc)}); the call may not have been stored,"
                              " retry with the same client_msg_id") from None

    # -- reading ---------------------------------------------------------------------------------------

    async def history(self, room: str, from_seq: int, limit: int) -> list[Any]:
        if self._history == 0 or limit <= 0:
            return []
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(_seq_key(room))
            pipe.xrange(_log_key(room), min=f"{max(from_seq, 1)}-0", max="+", count=limit)
            pipe.get(_floor_key(room))
            last, entries, floor = await self._call(pipe.execute())
        if floor:
            self._learn_room_floor(room, int(floor))
        oldest_kept = int(last or 0) - self._history + 1
        messages = [self._message(room, entry_id, fields) for entry_id, fields in entries]
        return [m for m in messages if m.seq >= oldest_kept]

    async def next_seq(self, room: str) -> int:
        keys = [EPOCH_KEY, _seq_key(room), _run_key(room), _floor_key(room)]
        last, floor = await self._call(self._open(keys=keys, args=[self._room_ttl_ms]))
        if floor:
            self._learn_room_floor(room, int(floor))  # whether or not this node saw the run's first entry
        last = int(last)
        return max(last, self._floor) + 1  # a room not yet written in this epoch starts above its floor

    def renumbered(self, room: str, start: int, end: int) -> int | None:
        floors = [f for f in (*self._floors, *self._room_floors.get(room, ())) if start <= f < end]
        return max(floors) if floors else None

    async def watch(self, room: str) -> None:
        if room in self._watched:
            return
        last = await self.next_seq(room) - 1
        self._watched[room] = max(last, self._watched.get(room, 0))
        self._watch_changed.set()
        if self._reader_blocked and self._reader_id is not None:
            # Wake the reader's blocking XREAD so it reads this room too; if this misses, it wakes anyway
            # within READ_BLOCK_MS and nothing is lost (it reads from `last`).
            with contextlib.suppress(*_FAILURES):
                await self._call(self._redis.client_unblock(self._reader_id))

    def unwatch(self, room: str) -> None:
        self._watched.pop(room, None)

    async def _read_forever(self) -> None:
        """Follow the watched rooms' streams; on any failure, mark the outage and reconnect with backoff."""
        delay = 0.05
        while True:
            conn = self._connect(single_connection_client=True, socket_timeout=READ_BLOCK_MS / 1000 + self._timeout)
            try:
                async with conn:
                    self._reader_id = await conn.client_id()
                    async with asyncio.timeout(self._timeout):
                        await self._resync()
                    self._mark_up()
                    delay = 0.05
                    await self._follow(conn)
            except _FAILURES as exc:
                self._mark_down(exc)
            finally:
                self._reader_id = None
                self._reader_blocked = False
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX)
            self.reconnects += 1

    async def _follow(self, conn: aioredis.Redis) -> None:
        while True:
            if not self._watched:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(READ_BLOCK_MS / 1000):
                        await self._watch_changed.wait()
                if not self._watched:
                    await conn.ping()  # notice an outage (and a recovery) even with nothing to read
                    self._mark_up()
                    continue
            self._watch_changed.clear()
            if time.monotonic() - self._refreshed > self._room_ttl_ms / 4000:
                await self._refresh(conn)
            streams: dict[Any, Any] = {_log_key(room): f"{last}-0" for room, last in self._watched.items()}
            if not streams:
                continue  # the last room was unwatched while its keys' TTL was refreshed: an XREAD of none fails
            self._reader_blocked = True
            try:
                reply: Any = await conn.xread(streams, count=1000, block=READ_BLOCK_MS)
            finally:
                self._reader_blocked = False
            self._mark_up()
            for key, entries in reply.items() if isinstance(reply, dict) else reply or []:
                room = key[len(PREFIX) + 6 : -5]  # "async_chat:room:{R}:log" -> R
                for entry_id, fields in entries:
                    self._deliver_entry(room, entry_id, fields)

    async def _refresh(self, conn: aioredis.Redis) -> None:
        """A room with subscribers here does not expire, however quiet: its keys' TTL starts again."""
        self._refreshed = time.monotonic()
        async with conn.pipeline(transaction=False) as pipe:
            for room in self._watched:
                for key in (_seq_key(room), _log_key(room), _floor_key(room)):
                    pipe.pexpire(key, self._room_ttl_ms)
            await pipe.execute()

    def _deliver_entry(self, room: str, entry_id: str, fields: dict[str, str]) -> None:
        last = self._watched.get(room)
        message = self._message(room, entry_id, fields)
        if last is None or message.seq <= last:
            return  # unwatched meanwhile, or already delivered
        self._watched[room] = message.seq
        if self._deliver is not None:
            self._deliver(message)

    # -- outages and data loss -------------------------------------------------------------------------

    async def _resync(self) -> None:
        """Agree on the epoch with Redis: start a new one if its data may have been lost since."""
        async with self._resync_lock:
            knew = self._epoch
            epoch, floor, how = await self._epoch_script(keys=[EPOCH_KEY], args=[secrets.token_hex(8)])
            self._epoch, self._floor = epoch, int(floor)
            self._learn_floor(self._floor)
            if knew is not None and epoch != knew:  # this node's epoch ended, whoever noticed first
                cause = {1: "lost its data (flushed, or restarted empty)", 2: "restarted"}.get(
                    how, "restarted or lost its data (another node began the new epoch)"
                )
                logger.warning(
                    "the broker %s: new numbering epoch %s; every room's next seq is above %d, and subscribers"
                    " are told of the jump (what was lost before it cannot be counted)", cause, epoch, self._floor,
                    extra={"event": "broker_data_lost", "epoch": epoch, "floor": self._floor},
                )

    def _learn_floor(self, floor: int) -> None:
        if floor and floor not in self._floors:
            self._floors = sorted([*self._floors, floor])[-KNOWN_FLOORS:]

    def _learn_room_floor(self, room: str, floor: int) -> None:
        floors = self._room_floors.setdefault(room, [])
        if floor not in floors:
            floors[:] = sorted([*floors, floor])[-KNOWN_FLOORS:]
        self._room_floors.move_to_end(room)
        if len(self._room_floors) > ROOM_FLOOR_ROOMS:
            self._room_floors.popitem(last=False)

    def _message(self, room: str, entry_id: str, fields: dict[str, str]) -> Any:
        floor = fields.get("f")
        if floor is not None:
            self._learn_room_floor(room, int(floor))
        return Message(
            sender=fields["s"],
            content=fields["c"],
            room=room,
            seq=int(entry_id.partition("-")[0]),
            sent_at_ms=int(fields["t"]),
            client_msg_id=fields.get("k"),
        )

    def _mark_down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self.outages += 1
            self._down_since = time.monotonic()
            self._outage = _describe(exc)
            logger.warning(
                "broker %s unreachable (%s): publishes answer UNAVAILABLE until it is back; reconnecting",
                self._shown_url, self._outage, extra={"event": "broker_down", "reason": self._outage},
            )

    def _mark_up(self) -> None:
        if not self.up:
            self.up = True
            down_for = time.monotonic() - self._down_since
            logger.warning(
                "broker %s reachable again after %.1fs", self._shown_url, down_for,
                extra={"event": "broker_up", "down_s": round(down_for, 3)},
            )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
