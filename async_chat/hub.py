"""The hub: subscriptions, their bounded queues, long-polls, replay and missed counts.

Data flows one way: handler -> hub.publish -> broker (assigns seq, stores) -> hub._deliver -> each
subscriber's queue -> poll. The broker delivers the rooms the hub watches (those with subscribers here).
A publisher never waits on a subscriber: `_deliver` only appends to bounded deques.

A subscription is a cursor (`cursor`, the next seq it owes the client) over two sources: the room's
history for seqs before `live_start`, then its live queue, which holds what arrived from `live_start` on.
A full queue drops its oldest message and moves `live_start` past it: the dropped message is read back
from history when the cursor gets there, and only what history no longer holds is lost.

`missed` is never a counter kept aside: a batch's missed is the distance from where the batch starts to
its first message (or to next_seq when it is empty). A batch never carries a gap after its first
message, so a loss is reported exactly where it is, in the batch whose first message follows it.

A poll may say where the client is (`from_seq`): one lower than the cursor means the previous reply was
lost with its connection, and it is served again (from the last batch kept for that, else from history).
Polls that do not say are at-most-once per batch, as before. A subscription nobody polls for
`subscription_ttl` seconds is reaped and its queue freed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .brokers import Broker
from .contract import RoomStats, Subscription
from .delivery import Delivery, Entry, Parked
from .errors import InvalidRequest, NoSuchSubscription, Unavailable
from .sizes import memory_size, wire_size
from .tasks import cancel_and_wait, every, housekeeping_interval

logger = logging.getLogger(__name__)

TICK = 0.005
"""Parked polls' waits end on ticks of this many seconds, one timer per tick, not per poll: a wait for a
message at the first tick at or after its end (never early), a linger at the last at or before it (so that
a message waits at most `linger_ms`, as chat.thrift says)."""

CHUNK = 48
"""Parked polls answered in one callback before the loop reads its sockets again. A busy room's subscribers
fall into step, and one tick's answers took up to 18 ms of the loop (1,000 subscribers, 200 messages/s,
linger 20 ms): every publish that came meanwhile waited for all of them (7 ms at the median), and so did
every subscriber's next batch. In chunks, a publish waits for at most one (about 1 ms)."""


class HubState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


_RUNNING = HubState.RUNNING
"""For the per-publish check: a global's lookup is a quarter of an enum member's."""


@dataclass(frozen=True)
class HubLimits:
    """What the hub bounds. The server fills it from its settings."""

    queue_size: int = 1000
    queue_bytes: int = 256 * 1024
    """A queue also drops its oldest before its messages take more than this in memory (sizes.memory_size),
    and a last batch larger than this is not kept for a re-send: what a subscription keeps alive beyond
    the broker's store is at most twice this."""
    subscription_ttl: float = 60.0
    max_subscriptions: int = 100_000
    max_reply_bytes: int = 256 * 1024
    """A poll's batch stops before its messages would take more than this (it always carries one)."""
    overflow: str = "drop-oldest"
    """A full queue's next message: "drop-oldest" drops the queue's oldest (counted in missed);
    "drop-subscription" ends the subscription (its next poll gets NO_SUCH_SUBSCRIPTION, and subscribing
    again from next_seq replays what history still holds)."""


OVERFLOW_POLICIES = ("drop-oldest", "drop-subscription")


class _Subscriber:
    """One subscription's state. Small on purpose: an idle one must stay cheap."""

    __slots__ = (
        "busy",
        "cursor",
        "dropped",
        "id",
        "last",
        "last_active",
        "last_start",
        "live_start",
        "parked",
        "queue",
        "queued_bytes",
        "room",
        "turns",
        "waiter",
    )

    def __init__(self, sub_id: str, room: str, queue_size: int, now: float) -> None:
        self.id = sub_id
        self.room = room
        self.queue: deque[Entry] = deque()
        """Queued messages: the entries every subscriber of the room shares (delivery.py)."""
        self.queued_bytes = 0
        """What the queue's messages take in memory (sizes.memory_size): bounded by HubLimits.queue_bytes."""
        self.cursor = 0
        self.live_start = 0
        self.dropped = 0
        self.last: list[Entry] | None = None
        """The last batch served to a poll that said where it was, if at most HubLimits.queue_bytes:
        served again if its reply was lost. None: nothing kept."""
        self.last_start = 0
        """Where that batch started."""
        self.last_active = now
        self.busy = False
        """A poll is being served: polls on one subscription are served one at a time."""
        self.turns: deque[asyncio.Future[None]] | None = None
        """Polls waiting for their turn (`Hub._acquire`); None while there are none."""
        self.parked: _ParkedPoll | None = None
        """The poll waiting with no task (delivery.Parked), if that is how the current one waits."""
        self.waiter: asyncio.Future[None] | None = None
        """What the current poll awaits, if it waits in a task (`Hub.poll`)."""


class Hub:
    """Fans messages out to per-subscription bounded queues and serves long-polls from them."""

    _loop: asyncio.AbstractEventLoop
    """The loop it was started on: parked polls are timed and answered there."""

    def __init__(
        self,
        broker: Broker,
        limits: HubLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.limits = limits or HubLimits()
        self._clock = clock
        self._subs: dict[str, _Subscriber] = {}
        self._rooms: dict[str, set[_Subscriber]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.state = HubState.NEW
        self.published_total = 0
        self.delivered_total = 0
        self.missed_total = 0
        self.dropped_total = 0
        self.evicted_total = 0
        self.expired_total = 0
        self.polls_waiting = 0
        """Long-polls currently waiting for a message."""
        self._answering: deque[_ParkedPoll] = deque()
        """Parked polls to answer (woken, or their wait is over), in the order they were due."""
        self._expiries: dict[int, set[_ParkedPoll]] = {}
        """Parked polls by the tick their wait ends on."""
        self._slow: set[asyncio.Task[None]] = set()
        """Parked polls being answered from history (their queue overflowed while they waited)."""

    def __repr__(self) -> str:
        return (
            f"<Hub [{self.state.name}] rooms={len(self._rooms)} subscriptions={len(self._subs)}"
            f" dropped={self.dropped_total} expired={self.expired_total}>"
        )

    @property
    def subscription_count(self) -> int:
        return len(self._subs)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.broker.start(self._deliver)
        interval = housekeeping_interval(self.limits.subscription_ttl, cap=5.0)
        self._reaper = asyncio.create_task(every(interval, self.reap), name="async_chat.hub.reaper")
        self.state = HubState.RUNNING

    def begin_shutdown(self) -> None:
        """Refuse new publishes and subscriptions, and wake every long-poll: they return what they have."""
        if self.state in (HubState.RUNNING, HubState.NEW):
            self.state = HubState.CLOSING
            for sub in self._subs.values():
                self._wake(sub)

    async def aclose(self) -> None:
        """Shut down (if not begun), stop the reaper and close the broker."""
        if self.state is HubState.CLOSED:
            return
        self.begin_shutdown()
        self.state = HubState.CLOSED
        reaper, self._reaper = self._reaper, None
        await cancel_and_wait(reaper)
        for task in list(self._slow):
            await cancel_and_wait(task)
        await self.broker.aclose()

    # -- publishing -------------------------------------------------------------------------------

    async def publish(self, message: Any) -> int:
        """Store and fan out `message` (room already normalised); return its seq."""
        self._check_running()
        seq, stored = await self.broker.publish(message)
        self.published_total += stored
        return seq

    def publish_now(self, message: Any) -> int:
        """`publish`, done before returning: only when the broker `stores_at_once`."""
        if self.state is not _RUNNING:  # `_check_running`, without its call while running
            self._check_running()
        seq, stored = self.broker.publish_now(message)
        self.published_total += stored
        return seq

    def _deliver(self, message: Any) -> None:
        subs = self._rooms.get(message.room)
        if not subs:
            return
        limit, byte_limit = self.limits.queue_size, self.limits.queue_bytes
        seq = message.seq
        size = memory_size(message)
        entry = Entry(message, size, self._loop.time())  # one for every queue, encoded once per protocol
        evict: list[_Subscriber] = []
        for sub in subs:
            if seq < sub.live_start:
                continue  # part of this subscriber's replay: it reads that from history
            queue = sub.queue
            if len(queue) >= limit or sub.queued_bytes + size > byte_limit:
                if self.limits.overflow == "drop-subscription":
                    evict.append(sub)
                    continue
                while queue and (len(queue) >= limit or sub.queued_bytes + size > byte_limit):
                    dropped = queue.popleft()
                    sub.queued_bytes -= dropped.size
                    sub.dropped += 1
                    sub.live_start = max(sub.live_start, dropped.message.seq + 1)  # history serves it, if it can
                    self.dropped_total += 1
            queue.append(entry)
            sub.queued_bytes += size
            self._wake(sub, message=True)
        for sub in evict:
            self._remove(sub)
            self.evicted_total += 1
            logger.info(
                "ended subscription %s to %r: its queue (%d messages, %d bytes) was full (--overflow"
                " drop-subscription)", sub.id[:8], sub.room, limit, byte_limit,
                extra={"event": "subscription_evicted", "room": sub.room},
            )

    # -- subscriptions ----------------------------------------------------------------------------

    async def subscribe(self, room: str, from_seq: int) -> Any:
        """Open a subscription; from_seq 0 = live only, N >= 1 = replay from seq N then live."""
        self._check_running()
        if len(self._subs) >= self.limits.max_subscriptions:
            raise Unavailable(f"the server holds its maximum of {self.limits.max_subscriptions} subscriptions")
        sub = _Subscriber(secrets.token_hex(12), room, self.limits.queue_size, self._clock())
        # Register before asking where the room ends, so that nothing published in between is lost:
        # it lands in the queue, and whatever is older than live_start is read from history instead.
        self._subs[sub.id] = sub
        self._rooms.setdefault(room, set()).add(sub)
        try:
            await self.broker.watch(room)
            next_seq = await self.broker.next_seq(room)
        except BaseException:
            self._remove(sub)
            raise
        sub.live_start = next_seq
        while sub.queue and sub.queue[0].message.seq < next_seq:
            sub.queued_bytes -= sub.queue.popleft().size
        if from_seq == 0:
            sub.cursor = next_seq
        elif from_seq > next_seq:
            # The client's position is past this room's end: the room was forgotten (the server
            # restarted without persistence). Replay the room as it is now, from its start.
            sub.cursor = 1
        else:
            sub.cursor = from_seq
        return Subscription(subscription_id=sub.id, room=room, next_seq=sub.cursor)

    def live_ids(self, ids: set[str]) -> set[str]:
        """Which of `ids` are subscriptions still held (not unsubscribed, expired or evicted)."""
        return {i for i in ids if i in self._subs}

    def owes(self, ids: set[str]) -> bool:
        """Whether any of the subscriptions `ids` has messages its client has not collected yet."""
        subs = self._subs
        return any(
            (sub := subs.get(i)) is not None and bool(sub.queue or sub.cursor < sub.live_start) for i in ids
        )

    def unsubscribe(self, sub_id: str) -> None:
        sub = self._subs.get(sub_id)
        if sub is not None:
            self._remove(sub)

    def _remove(self, sub: _Subscriber) -> None:
        self._subs.pop(sub.id, None)
        members = self._rooms.get(sub.room)
        if members is not None:
            members.discard(sub)
            if not members:
                del self._rooms[sub.room]
                self.broker.unwatch(sub.room)
        sub.queue.clear()
        sub.queued_bytes = 0
        self._wake(sub)

    def poll_now(
        self, sub_id: str, max_messages: int, wait: float, from_seq: int = 0, linger: float = 0.0
    ) -> Delivery | Parked | None:
        """Serve a poll without a task: its answer now, or `Parked` when it must wait for a message (the hub
        answers it later, by callback). None when serving it may wait for something else (the broker's
        history, or another poll on the subscription): the caller awaits `poll_later` then.

        `linger` > 0: once a message is waiting, wait up to that much longer for more (chat.thrift, poll)."""
        sub = self._subscription(sub_id)
        if sub.busy or sub.cursor < sub.live_start or (
            0 < from_seq < sub.cursor and (sub.last is None or sub.last_start > from_seq)
        ):
            return None
        again = self._begin(sub, from_seq)
        if again is not None:
            return again
        start = sub.cursor
        waits = wait > 0 and self.state is HubState.RUNNING
        if linger > 0 and waits and sub.queue and not self._full(sub, max_messages):
            tick = self._linger_end(sub.queue[0].at + linger)  # the oldest message waits at most `linger`
            if tick is not None:
                parked = _ParkedPoll(self, sub, max_messages, from_seq, start, linger, self._loop.time(), True)
                return self._park(parked, tick)
        entries = self._take(sub, max_messages, [], self.limits.max_reply_bytes)
        if entries or sub.cursor != start or not waits:
            return self._served(sub, entries, start, from_seq)
        now = self._loop.time()
        parked = _ParkedPoll(self, sub, max_messages, from_seq, start, linger, now, False)
        return self._park(parked, math.ceil((now + wait) / TICK))

    def _park(self, parked: _ParkedPoll, tick: int) -> _ParkedPoll:
        """Hold the subscription's turn for `parked` until a message, `tick`, or an end answers it."""
        sub = parked.sub
        sub.parked = parked
        sub.busy = True
        self.polls_waiting += 1
        self._time(parked, tick)
        return parked

    def _time(self, parked: _ParkedPoll, tick: int) -> None:
        """End `parked`'s wait at `tick` (and no longer at the one it had): see TICK."""
        if parked.tick:
            self._untime(parked)
        parked.tick = tick
        waiting = self._expiries.get(tick)
        if waiting is None:
            waiting = self._expiries[tick] = set()
            self._loop.call_at(tick * TICK, self._expire, tick)
        waiting.add(parked)

    def _linger_end(self, due: float) -> int | None:
        """The tick a linger due at `due` ends on (the last at or before it: see TICK); None if that has
        passed, and the poll is answered now."""
        # A due time on a tick is that tick, though the division may land a hair under it (uvloop's clock
        # counts whole milliseconds, so one due time in five is on a tick): a nanosecond's leeway.
        tick = math.floor(due / TICK + 1e-6)
        return tick if tick * TICK > self._loop.time() else None

    def _untime(self, parked: _ParkedPoll) -> None:
        waiting = self._expiries.get(parked.tick)
        if waiting is not None:
            waiting.discard(parked)

    def _full(self, sub: _Subscriber, max_messages: int) -> bool:
        """Whether the queue holds a whole batch: a lingering poll is answered at once then."""
        return len(sub.queue) >= max_messages or sub.queued_bytes >= self.limits.max_reply_bytes

    async def poll(self, sub_id: str, max_messages: int, wait: float, from_seq: int = 0) -> Any:
        """Return waiting messages at once (the IDL's `Batch`), else wait up to `wait` seconds for the first.

        `from_seq` >= 1 says where the client is: lower than the cursor means the previous reply never
        arrived, and it is served again; 0 trusts the cursor (at-most-once per batch)."""
        return (await self.poll_later(sub_id, max_messages, wait, from_seq)).batch()

    async def poll_later(self, sub_id: str, max_messages: int, wait: float, from_seq: int = 0) -> Delivery:
        """`poll`, answered as a `Delivery`: the path that may await the broker and its turn."""
        sub = self._subscription(sub_id)
        await self._acquire(sub)
        try:
            again = self._begin(sub, from_seq)
            if again is not None:
                return again
            start = sub.cursor
            entries = await self._collect(sub, max_messages)
            if not entries and sub.cursor == start and wait > 0 and self.state is HubState.RUNNING \
                    and sub.id in self._subs:
                loop = asyncio.get_running_loop()
                sub.waiter = loop.create_future()
                self.polls_waiting += 1
                # A timer, not asyncio.timeout: a poll may start outside any task (connection.py).
                expiry = loop.call_later(wait, self._wake, sub)
                try:
                    await sub.waiter
                finally:
                    expiry.cancel()
                    sub.waiter = None
                    self.polls_waiting -= 1
                entries = await self._collect(sub, max_messages)
            return self._served(sub, entries, start, from_seq)
        finally:
            self._release(sub)

    def _subscription(self, sub_id: str) -> _Subscriber:
        sub = self._subs.get(sub_id)
        if sub is None:
            raise NoSuchSubscription(f"no subscription {sub_id!r} (never issued, unsubscribed or expired)")
        return sub

    def _begin(self, sub: _Subscriber, from_seq: int) -> Delivery | None:
        """A poll starts: the last batch again if the client says its reply was lost (`_rewind`)."""
        sub.last_active = self._clock()
        return self._rewind(sub, from_seq) if from_seq else None

    def _served(self, sub: _Subscriber, entries: list[Entry], start: int, from_seq: int) -> Delivery:
        """The answer to a poll that started at `start`; kept for a re-send if the poll said where it was
        (and the batch is small enough: else history serves a lost one)."""
        if from_seq:
            small = sum(e.size for e in entries) <= self.limits.queue_bytes
            sub.last, sub.last_start = (entries if small else None), start
        return self._delivery(sub, entries, start, sub.cursor)

    def _delivery(self, sub: _Subscriber, entries: list[Entry], start: int, next_seq: int) -> Delivery:
        end = entries[0].message.seq if entries else next_seq
        floor = self.broker.renumbered(sub.room, start, end) if end > start else None
        missed = end - start if floor is None else end - floor - 1  # a jump is not a loss of that many
        self.delivered_total += len(entries)
        self.missed_total += missed
        return Delivery(entries, next_seq, missed, floor is not None)

    def _rewind(self, sub: _Subscriber, from_seq: int) -> Delivery | None:
        """Move the cursor back to where the client says it is; a Delivery when the last batch is served again."""
        cursor = sub.cursor
        if from_seq > cursor:
            raise InvalidRequest(f"from_seq {from_seq} is past this subscription's position {cursor}")
        last = sub.last
        sub.last = None  # the client has the last batch, or is given it again now: it need not be kept
        if from_seq == cursor:
            return None
        if last is not None and sub.last_start <= from_seq:
            # The last reply was lost: the same messages again (a re-sent batch also reports its gap).
            again = [e for e in last if e.message.seq >= from_seq]
            sub.last = last
            return self._delivery(sub, again, from_seq, cursor)
        # Further back than the last batch kept (or it was too large to keep): history serves it, and the
        # queue still holds what follows.
        sub.live_start = max(sub.live_start, cursor)
        sub.cursor = from_seq
        return None

    async def _collect(self, sub: _Subscriber, max_messages: int) -> list[Entry]:
        """Up to `max_messages` from the cursor on, in seq order. A gap is skipped (and so counted, by
        `_delivery`) only before the first message: a batch stops at a gap, and the next one starts with it."""
        out: list[Entry] = []
        room_left = self.limits.max_reply_bytes
        if sub.cursor < sub.live_start:
            want = min(max_messages, sub.live_start - sub.cursor)
            try:
                page = await self.broker.history(sub.room, sub.cursor, want)
            except Unavailable:
                return out  # the broker is away: an empty batch now, the replay resumes when it is back
            if not page or page[0].seq >= sub.live_start:
                sub.cursor = sub.live_start  # history no longer reaches back: skipped, so counted as missed
            else:
                sub.cursor = max(sub.cursor, page[0].seq)  # history begins later: the start is missed
                for message in page:
                    if message.seq != sub.cursor or message.seq >= sub.live_start:
                        break  # a gap after the first message, or past the replay: the next batch goes on
                    size = memory_size(message)
                    room_left -= wire_size(size, sub.room)
                    if room_left < 0 and out:
                        return out  # the reply is full: the next batch goes on from here
                    out.append(Entry(message, size))
                    sub.cursor = message.seq + 1
            if sub.cursor < sub.live_start:
                return out
        return self._take(sub, max_messages, out, room_left)

    def _take(self, sub: _Subscriber, max_messages: int, out: list[Entry], room_left: int) -> list[Entry]:
        """`_collect` from the queue: what follows the cursor there, onto `out`, within `room_left` bytes."""
        queue = sub.queue
        if not queue:
            return out  # what most polls find: they park
        to_wire = wire_size(0, sub.room)  # what a message's wire size is beside its memory size
        while queue and len(out) < max_messages:
            entry = queue[0]
            seq = entry.message.seq
            if seq < sub.cursor:
                queue.popleft()  # already served from history
                sub.queued_bytes -= entry.size
                continue
            if seq > sub.cursor and out:
                break  # a seq the broker never delivered: a gap, reported by the next batch
            room_left -= entry.size + to_wire
            if room_left < 0 and out:
                break  # the reply is full
            queue.popleft()
            out.append(entry)
            sub.queued_bytes -= entry.size
            sub.cursor = seq + 1
        return out

    # -- waiting: one poll at a time per subscription, parked polls answered in chunks -----------------

    async def _acquire(self, sub: _Subscriber) -> None:
        """Take the subscription's turn, waiting while another poll is served."""
        if not sub.busy:
            sub.busy = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if sub.turns is None:
            sub.turns = deque()
        sub.turns.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._release(sub)  # the turn came as this poll was cancelled: pass it on
            elif sub.turns is not None and turn in sub.turns:
                sub.turns.remove(turn)
            raise

    def _release(self, sub: _Subscriber) -> None:
        """End a poll's turn (the subscription was used now: its TTL starts again): the next waiting poll's,
        if any."""
        sub.last_active = self._clock()
        turns = sub.turns
        while turns:
            turn = turns.popleft()
            if not turn.done():
                turn.set_result(None)  # busy stays set: it is that poll's turn now
                return
        sub.turns = None
        sub.busy = False

    def _wake(self, sub: _Subscriber, message: bool = False) -> None:
        """The subscription has something for its poll (a `message`, or an end): answer it, or, for a poll
        that lingers, once its linger has passed or its batch is full."""
        parked = sub.parked
        if parked is not None:
            if parked.woken:
                return
            if message and parked.linger and not self._full(sub, parked.max_messages):
                if parked.lingering:
                    return
                # The first message: answered `linger` after the poll came (polls that came at different
                # times are answered at different times, not in one burst), or now if that has passed.
                parked.lingering = True
                tick = self._linger_end(parked.since + parked.linger)
                if tick is not None:
                    self._time(parked, tick)
                    return
            parked.woken = True
            self._answer_soon(parked)
            return
        waiter = sub.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self, tick: int) -> None:
        for parked in self._expiries.pop(tick, ()):
            self._answer_soon(parked)

    def _answer_soon(self, parked: _ParkedPoll) -> None:
        """Queue `parked` to be answered, CHUNK a callback (see CHUNK): a thousand subscribers of one message
        cost a thousand replies (mostly the same bytes) and a callback per CHUNK of them."""
        if not self._answering:
            self._loop.call_soon(self._answer_some)
        self._answering.append(parked)

    def _answer_some(self) -> None:
        answering = self._answering
        for _ in range(min(CHUNK, len(answering))):
            parked = answering.popleft()
            if parked.sub.parked is parked:  # not answered, ended or cancelled since
                self._answer(parked.sub, parked)
        if answering:
            self._loop.call_soon(self._answer_some)

    def _unpark(self, parked: _ParkedPoll) -> bool:
        """Take `parked` off its subscription (which stays busy); False if it was no longer there."""
        sub = parked.sub
        if sub.parked is not parked:
            return False
        sub.parked = None
        self.polls_waiting -= 1
        self._untime(parked)
        return True

    def _answer(self, sub: _Subscriber, parked: _ParkedPoll) -> None:
        self._unpark(parked)
        if sub.cursor < sub.live_start:
            # Its queue overflowed while it waited: history serves what was dropped, which takes a wait.
            task = self._loop.create_task(self._answer_from_history(sub, parked))
            self._slow.add(task)
            task.add_done_callback(self._slow.discard)
            return
        self._finish(sub, parked, self._take(sub, parked.max_messages, [], self.limits.max_reply_bytes))

    async def _answer_from_history(self, sub: _Subscriber, parked: _ParkedPoll) -> None:
        try:
            entries = await self._collect(sub, parked.max_messages)
        except Exception:  # _collect answers a broker that is away itself: this is a bug, not an outage
            logger.exception("reading history for a poll failed; answering it with what its queue holds")
            entries = self._take(sub, parked.max_messages, [], self.limits.max_reply_bytes)
        except BaseException:
            self._release(sub)  # cancelled (the hub closes): nobody is answered, the turn still ends
            raise
        self._finish(sub, parked, entries)

    def _finish(self, sub: _Subscriber, parked: _ParkedPoll, entries: list[Entry]) -> None:
        """Answer a parked poll with `entries`, and end its turn."""
        try:
            delivery = self._served(sub, entries, parked.start, parked.from_seq)
        finally:
            self._release(sub)
        try:
            parked.finish(delivery)
        except Exception:  # one connection's failure must not leave the rest of the pass unanswered
            logger.exception("answering a poll failed")

    # -- history ----------------------------------------------------------------------------------

    async def history(self, room: str, from_seq: int, limit: int) -> list[Any]:
        self._check_running()
        messages = await self.broker.history(room, max(from_seq, 1), limit)
        room_left = self.limits.max_reply_bytes
        for count, message in enumerate(messages):
            room_left -= wire_size(memory_size(message), room)
            if room_left < 0 and count:
                return messages[:count]  # the reply is full: the caller asks again from the next seq
        return messages

    # -- what operators see ----------------------------------------------------------------------

    @property
    def room_count(self) -> int:
        """Rooms with at least one subscriber on this server."""
        return len(self._rooms)

    def queued_total(self) -> int:
        """Messages waiting in all subscribers' queues (walks every subscription: for scrapes, not calls)."""
        return sum(len(sub.queue) for sub in self._subs.values())

    def room_stats(self, limit: int) -> list[RoomStats]:
        """The `limit` rooms with the most subscribers here, with their queue depths and drops."""
        biggest = sorted(self._rooms.items(), key=lambda item: len(item[1]), reverse=True)[:limit]
        return [
            RoomStats(
                room=room,
                subscribers=len(subs),
                queued=sum(len(s.queue) for s in subs),
                max_queue_depth=max((len(s.queue) for s in subs), default=0),
                dropped=sum(s.dropped for s in subs),
            )
            for room, subs in biggest
        ]

    # -- expiry -----------------------------------------------------------------------------------

    def reap(self) -> int:
        """Expire subscriptions idle for longer than the TTL (never one with a poll in progress)."""
        deadline = self._clock() - self.limits.subscription_ttl
        stale = [s for s in self._subs.values() if s.last_active < deadline and not s.busy]
        for sub in stale:
            self._remove(sub)
        if stale:
            self.expired_total += len(stale)
            logger.info(
                "expired %d idle subscription(s)", len(stale),
                extra={"event": "subscriptions_expired", "count": len(stale)},
            )
        return len(stale)

    def _check_running(self) -> None:
        if self.state is not HubState.RUNNING:
            raise Unavailable("the server is shutting down")


class _ParkedPoll(Parked):
    """A parked poll as the hub keeps it: what to answer it with, and where its wait ends."""

    __slots__ = ("_hub", "from_seq", "linger", "lingering", "max_messages", "since", "start", "sub", "tick", "woken")

    def __init__(
        self, hub: Hub, sub: _Subscriber, max_messages: int, from_seq: int, start: int, linger: float,
        since: float, lingering: bool,
    ) -> None:
        self.encode = self.deliver = None  # Parked's, set here rather than by a call up: one per poll
        self._hub = hub
        self.sub = sub
        self.max_messages = max_messages
        self.from_seq = from_seq
        self.start = start
        self.linger = linger
        self.since = since
        """When the poll came (the loop's clock)."""
        self.lingering = lingering
        """A message is waiting: the wait ends `linger` after `since`, or after the oldest message came."""
        self.tick = 0
        """The tick its wait ends on (Hub._expiries)."""
        self.woken = False
        """It is to be answered in the next pass."""

    def _forget(self) -> None:
        if self._hub._unpark(self):
            self._hub._release(self.sub)
