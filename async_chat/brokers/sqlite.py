"""The durable embedded broker: one server process, rooms kept in a SQLite file that survives restarts.

`sqlite:///chat.db` (relative to the working directory) or `sqlite:////var/lib/async_chat/chat.db`
(absolute: four slashes), as SQLAlchemy spells it; `?synchronous=full` for the stricter durability below.

Why it is built this way:
- The standard library's `sqlite3`, not aiosqlite (which is sqlite3 on a thread with a queue of calls):
  the broker decides where each call runs. At synchronous=NORMAL a commit never waits for the disk (it
  writes to the operating system's cache), so it runs on the event loop: a batch of 16 costs about
  100 us, less than handing it to a thread did (thread switches, and two threads taking turns at the
  GIL on a busy core). What may wait for the disk runs on the broker's thread: every commit at FULL,
  retention passes, and checkpoints (on a second connection and thread of their own, beside the
  writer, so that copying the WAL into the file never stops publishes). An asyncio lock lets one user
  at a time at the writing connection.
- Acknowledged means stored: a publish is answered, and its message delivered to subscribers, only after
  the transaction holding it committed. Publishes that arrive together (read in the same turn of the
  event loop, or while a commit runs) share one transaction (group commit): a commit per batch, not per
  message, with no timer to tune.
- The file is in WAL mode with `synchronous=NORMAL` by default: a committed transaction survives the
  process's crash or SIGKILL (it is in the operating system's cache), but an OS crash or power loss may
  lose the last transactions before the WAL was synced, as Redis's `appendfsync everysec` may lose its
  last second. `?synchronous=full` syncs the WAL at every commit (once per batch): acknowledged
  publishes then survive power loss too, on a disk that honours fsync.
- No seq is issued twice, even after such a loss. The file records whether its last run shut down
  cleanly, on which boot of the machine, and at which synchronous level. A run that ended otherwise on
  an earlier boot (the machine restarted under it), at NORMAL, may have lost its last transactions, so
  the seqs they issued may be unknown to the file: numbering then goes on in a new epoch, above
  `cap(now) = (now_ms - BASE_MS) * 1000 + 999`, as the Redis broker does, and subscribers are told
  `renumbered`. A SIGKILL on the same boot loses nothing: numbering simply continues.
- One server per file: the server holds an exclusive flock on `<file>-lock` while it runs (the kernel
  releases it however the process dies), so a second server on the same file is refused at start.
  Several servers sharing rooms is what Redis is for. Other processes may read the file meanwhile
  (`sqlite3 chat.db ".backup copy.db"`), never write it.
- Bounded: each room keeps its last --history messages (and none older than --history-ttl, if set),
  client_msg_ids are remembered --dedup-ttl, rooms without a subscriber or publish for --room-ttl are
  forgotten, and at most --max-rooms rooms are kept (a new one past it forgets the least recently used
  room without a subscriber, as the memory broker does). Old rows are deleted in the background in
  bounded batches; SQLite reuses their pages, so the file grows only with what is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from ..contract import Message
from ..errors import InvalidRequest, Unavailable
from ..tasks import cancel_and_wait, housekeeping_interval
from . import Broker, Deliver

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
SYNCHRONOUS = ("normal", "full")
BASE_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z, as the Redis broker counts: an epoch begun at T numbers above cap(T)."""
PER_MS = 1000
KNOWN_FLOORS = 16
SWEEP_INTERVAL = 0.1
"""Seconds between the rounds of background passes that delete what retention no longer keeps: often, so
that each round is short (on a busy single core a long one delays the event loop's work)."""
SWEEP_PASSES = 100
"""Passes a round makes at most: enough to keep up with the fastest publishing (each pass deletes up to
SWEEP_ROWS rows of a room)."""
SWEEP_ROWS = 2000
"""Rows one statement of a background pass deletes at most, so that no pass holds the writer long."""
SWEEP_ROOMS = 100
"""Rooms one background pass forgets or trims at most (the rest wait for the next pass)."""
CHECKPOINT_INTERVAL = 0.1
"""Seconds between checkpoints: often, so that each has little to copy and sync."""
WAL_RESTART = 16 << 20
"""WAL bytes past which a checkpoint under the lock lets the next commit start it over."""
WAL_LIMIT = 16 << 20
"""Bytes the WAL file is cut back to after a checkpoint (SQLite's journal_size_limit)."""
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY, next_seq INTEGER NOT NULL, used_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, content TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL, client_msg_id TEXT,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedup (
    room TEXT NOT NULL, sender TEXT NOT NULL, client_msg_id TEXT NOT NULL, seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL, PRIMARY KEY (room, sender, client_msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_age ON dedup (at_ms);
"""


def parse_url(url: str) -> tuple[str, str]:
    """(path, synchronous) from `sqlite:///relative.db` or `sqlite:////absolute.db[?synchronous=full]`."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc or not path:
        raise InvalidRequest(
            f"broker URL {url!r}: give a file, as sqlite:///chat.db (relative) or sqlite:////var/lib/chat.db (absolute)"
        )
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - {"synchronous"})
    if unknown:
        raise InvalidRequest(f"broker URL {url!r}: unknown option {', '.join(unknown)} (known: synchronous)")
    synchronous = options.get("synchronous", ["normal"])[-1].lower()
    if synchronous not in SYNCHRONOUS:
        raise InvalidRequest(f"broker URL {url!r}: synchronous must be one of {', '.join(SYNCHRONOUS)}")
    return path, synchronous


def cap(now_ms: int) -> int:
    """The highest seq that may have been issued by `now_ms` in any epoch: where a new epoch begins above."""
    return (now_ms - BASE_MS) * PER_MS + PER_MS - 1


def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:  # not Linux: every unclean end is taken as one that may have lost data
        return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _held_elsewhere(where: str, detail: str = "") -> str:
    """Why the file at `where` cannot be ours: another process uses it (the lock file, or SQLite's own)."""
    said = f" ({detail})" if detail else ""
    return (
        f"cannot use {where}: another process holds it{said}. One server per SQLite file: to run several"
        " servers on the same rooms, use a Redis broker"
    )


class StoreError(Exception):
    """The file refused a write or a read (full, read-only, corrupt, I/O error): said in `reason`."""


class _Store:
    """The file and what the broker keeps of it in memory. One caller at a time (the broker's lock), on
    the loop or on the broker's thread; only `checkpoint` runs beside them, on a connection of its own."""

    def __init__(self, path: str, synchronous: str, *, history: int, history_ttl: float, dedup_ttl: float,
                 max_rooms: int, room_ttl: float, watched: set[str]) -> None:
        self.path = path
        self.synchronous = synchronous
        self.keep = history
        self.history_ttl_ms = int(history_ttl * 1000)
        self.dedup_ttl_ms = int(dedup_ttl * 1000)
        self.max_rooms = max_rooms
        self.room_ttl_ms = int(room_ttl * 1000)
        self.watched = watched
        """The loop's set of rooms with subscribers here: only read (membership) from this thread."""
        self.db: sqlite3.Connection | None = None
        """The connection that writes and reads: on the loop, or on the broker's thread (module docstring)."""
        self.checkpointer: sqlite3.Connection | None = None
        """A connection of its own for checkpoints, which run beside the writer without stopping it."""
        self._lock_fd: int | None = None
        self.page_size = 4096
        self.rooms: OrderedDict[str, int] = OrderedDict()
        """Each room's next seq, least recently published to first. The rooms table has it as of the last
        background pass (`save`), which a commit need not wait for: a room's messages written since are
        in the file, and `open` takes the counter past the newest of them."""
        self.unsaved: set[str] = set()
        """Rooms published to since their counter and use were last written to the rooms table."""
        self.untrimmed: set[str] = set()
        """Rooms that may hold more than --history messages."""
        self.floor = 0
        """The current epoch's floor: every seq issued in it is above."""
        self.floors: list[int] = []
        self.epoch_started = False
        self.forgotten = 0
        self.trimmed = 0

    # -- opening and closing ------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file, take its lock, check it, and start a new epoch if it may have lost data."""
        if os.path.exists(self.path):
            # SQLite would open a file it may not write read-only, and fail later with a vague I/O error.
            try:
                os.close(os.open(self.path, os.O_RDWR))
            except OSError as exc:
                raise StoreError(
                    f"cannot use {os.path.abspath(self.path)}: it is read-only ({exc.strerror}); the server must"
                    " be able to write it and its folder"
                ) from None
        self._take_lock()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        except sqlite3.Error as exc:
            self._release_lock()
            raise StoreError(self._cannot("open", exc)) from None
        self.db = db
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"cannot use {self.path}: SQLite would not put it in WAL mode ({mode})")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run beside the writer (`checkpoint`)
            db.execute("PRAGMA synchronous=FULL")  # the start-up marker below must survive power loss
            db.execute("BEGIN IMMEDIATE")
            check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise StoreError(f"cannot use {self.path}: it failed SQLite's integrity check ({check})")
            for statement in _SCHEMA.split(";"):  # not executescript: it would commit the lock's transaction
                if statement.strip():
                    db.execute(statement)
            # The age index costs every insert: kept only while --history-ttl asks for it.
            if self.history_ttl_ms:
                db.execute("CREATE INDEX IF NOT EXISTS messages_age ON messages (sent_at_ms)")
            else:
                db.execute("DROP INDEX IF EXISTS messages_age")
            meta = dict(db.execute("SELECT key, value FROM meta"))
            self._check_version(meta)
            self._begin_run(meta)
            self.rooms = self._load_rooms(db)
            self.untrimmed = set(self.rooms)
            db.execute("COMMIT")
            db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            self.page_size = db.execute("PRAGMA page_size").fetchone()[0]
            self.checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        except sqlite3.Error as exc:
            self.close_quietly()
            raise StoreError(self._cannot("use", exc)) from None
        except BaseException:
            self.close_quietly()
            raise

    def _take_lock(self) -> None:
        """One server per file: an exclusive flock on `<file>-lock`, held while the file is open (the
        kernel lets it go when the process dies, however it dies)."""
        where = os.path.abspath(self.path)
        try:
            fd = os.open(where + "-lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            folder = os.path.dirname(where)
            why = "its folder does not exist" if not os.path.isdir(folder) else "its folder is not writable"
            raise StoreError(f"cannot open {where}: {exc.strerror} ({why})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(_held_elsewhere(where)) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        """A call on the open file failed (full, read-only, damaged, an I/O error): why, naming the file."""
        return StoreError(f"{os.path.abspath(self.path)}: {exc}")

    def _cannot(self, verb: str, exc: sqlite3.Error) -> str:
        text = str(exc)
        where = os.path.abspath(self.path)
        if "locked" in text:
            return _held_elsewhere(where, "database is locked")
        if "unable to open" in text:
            folder = os.path.dirname(where)
            why = "its folder does not exist" if not os.path.isdir(folder) else "check the path and its permissions"
            return f"cannot {verb} {where}: {text} ({why})"
        if "readonly" in text:
            return f"cannot use {where}: it is read-only ({text}); the server must be able to write it and its folder"
        if "not a database" in text or "malformed" in text:
            return f"cannot use {where}: {text} (not an async_chat database, or damaged: move it aside to start afresh)"
        return f"cannot {verb} {where}: {text}"

    def _check_version(self, meta: dict[str, str]) -> None:
        version = int(meta.get("schema", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            raise StoreError(f"cannot use {self.path}: it was written by a newer async_chat (schema {version})")

    def _begin_run(self, meta: dict[str, str]) -> None:
        """Record this run as not cleanly ended (until `close`), starting a new epoch if the last may have lost data."""
        assert self.db is not None
        boot = _boot_id()
        self.floors = json.loads(meta.get("floors", "[]"))
        self.floor = int(meta.get("floor", "0"))
        unclean = meta.get("clean") == "0"
        lossy = meta.get("synchronous", "normal") != "full"
        if unclean and lossy and (boot is None or meta.get("boot") != boot):
            self.floor = cap(_now_ms())
            self.floors = [*self.floors, self.floor][-KNOWN_FLOORS:]
            self.epoch_started = True
        values = {
            "schema": str(SCHEMA_VERSION), "clean": "0", "boot": boot or "", "synchronous": self.synchronous,
            "floor": str(self.floor), "floors": json.dumps(self.floors),
        }
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items())

    def close(self) -> None:
        """Mark the run as ended cleanly, fold the WAL into the file, and release the lock."""
        self.close_checkpointer()
        db, self.db = self.db, None
        if db is None:
            return
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '1')")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # the next start treats this run as unclean: safe, if pessimistic
            logger.warning("could not mark %s as cleanly closed: %s", self.path, exc,
                           extra={"event": "broker_close_failed"})
        finally:
            db.close()
            self._release_lock()

    def finish(self) -> None:
        """The last passes of retention, then `close`."""
        with contextlib.suppress(StoreError):
            for _pass in range(SWEEP_PASSES):  # saves every counter, and trims what it can in bounded time
                if not self.sweep():
                    break
        self.close()

    def close_quietly(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            db.close()
        self.close_checkpointer()
        self._release_lock()

    def close_checkpointer(self) -> None:
        """Close the checkpoint's connection (on the checkpoint's thread, before `close`)."""
        checkpointer, self.checkpointer = self.checkpointer, None
        if checkpointer is not None:
            checkpointer.close()

    # -- writing --------------------------------------------------------------------------------------------

    def append(self, messages: list[Any]) -> list[tuple[int, bool] | Unavailable]:
        """Store `messages` in one transaction: (seq, stored) for each (or the refusal of a new room when
        every room has a subscriber), or StoreError and nothing stored."""
        db = self._open_db()
        before: dict[str, int | None] = {}
        """Each room this batch changed, with its next seq before (None: it was not kept), to undo on failure."""
        results: list[tuple[int, bool] | Unavailable] = []
        rows: list[tuple[Any, ...]] = []
        new_rooms: list[tuple[str, int, int]] = []
        keys: dict[tuple[str, str, str], int] = {}
        """Dedup rows of this batch, so that a retry in the same batch finds its first send too."""
        now = _now_ms()
        try:
            db.execute("BEGIN")
            for message in messages:
                room, sender, key = message.room, message.sender, message.client_msg_id
                if key is not None:
                    seq = keys.get((room, sender, key))
                    if seq is None:
                        row = db.execute(
                            "SELECT seq FROM dedup WHERE room = ? AND sender = ? AND client_msg_id = ?",
                            (room, sender, key),
                        ).fetchone()
                        seq = None if row is None else row[0]
                    if seq is not None:
                        results.append((seq, False))
                        continue
                next_seq = self.rooms.get(room)
                if next_seq is None:
                    refusal = self._make_room_for(db, before)
                    if refusal is not None:
                        results.append(refusal)
                        continue
                    next_seq = 1
                    new_rooms.append((room, next_seq, now))
                before.setdefault(room, self.rooms.get(room))
                seq = next_seq if next_seq > self.floor else self.floor + 1
                message.seq, message.sent_at_ms = seq, now
                rows.append((room, seq, sender, message.content, now, key))
                if key is not None:
                    keys[room, sender, key] = seq
                self.rooms[room] = seq + 1
                self.rooms.move_to_end(room)
                results.append((seq, True))
            if new_rooms:  # a room's row exists from its first message: `open` finds its counter from it
                db.executemany("INSERT INTO rooms (name, next_seq, used_ms) VALUES (?, ?, ?)", new_rooms)
            db.executemany(
                "INSERT INTO messages (room, seq, sender, content, sent_at_ms, client_msg_id)"
                " VALUES (?, ?, ?, ?, ?, ?)", rows,
            )
            if keys:
                db.executemany(
                    "INSERT INTO dedup (room, sender, client_msg_id, seq, at_ms) VALUES (?, ?, ?, ?, ?)",
                    [(room, sender, key, seq, now) for (room, sender, key), seq in keys.items()],
                )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db)
            for room, next_seq in before.items():  # forgotten rooms come back too, though not in LRU order
                if next_seq is None:
                    self.rooms.pop(room, None)
                else:
                    self.rooms[room] = next_seq
            for message in messages:
                message.seq = message.sent_at_ms = None
            raise self._failed(exc) from None
        self.unsaved.update(before)
        self.untrimmed.update(before)
        return results

    def _make_room_for(self, db: sqlite3.Connection, before: dict[str, int | None]) -> Unavailable | None:
        """Before a new room: past max_rooms, forget the least recently used one without a subscriber here
        (noted in `before`, to come back if the batch fails); the refusal of the new room when every room
        has one."""
        if len(self.rooms) < self.max_rooms:
            return None
        for name, next_seq in self.rooms.items():
            if name not in self.watched:
                before.setdefault(name, next_seq)
                self._forget(name, db)
                return None
        return Unavailable(f"the server holds its maximum of {self.max_rooms} rooms, each with a subscriber")

    def _forget(self, name: str, db: sqlite3.Connection) -> None:
        """Delete room `name` from the file (in the caller's transaction) and from the counters."""
        self._delete_room(name, db)
        self._drop(name)

    @staticmethod
    def _delete_room(name: str, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM messages WHERE room = ?", (name,))
        db.execute("DELETE FROM dedup WHERE room = ?", (name,))
        db.execute("DELETE FROM rooms WHERE name = ?", (name,))

    def _drop(self, name: str) -> None:
        del self.rooms[name]
        self.unsaved.discard(name)
        self.untrimmed.discard(name)
        self.forgotten += 1

    def _load_rooms(self, db: sqlite3.Connection) -> OrderedDict[str, int]:
        """Each room's next seq: past its newest message, which may be newer than its saved counter."""
        rooms: OrderedDict[str, int] = OrderedDict()
        for name, saved in db.execute("SELECT name, next_seq FROM rooms ORDER BY used_ms").fetchall():
            newest = db.execute("SELECT max(seq) FROM messages WHERE room = ?", (name,)).fetchone()[0]
            rooms[name] = max(saved, (newest or 0) + 1)
        return rooms

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:  # SQLite rolled back already (a full disk or an I/O error may)
            pass

    # -- reading --------------------------------------------------------------------------------------------

    def history(self, room: str, from_seq: int, limit: int) -> list[Any]:
        db = self._open_db()
        next_seq = self.rooms.get(room)
        if next_seq is None or self.keep == 0:
            return []
        oldest = max(from_seq, next_seq - self.keep, 1)
        query = "SELECT seq, sender, content, sent_at_ms, client_msg_id FROM messages WHERE room = ? AND seq >= ?"
        params: tuple[Any, ...] = (room, oldest)
        if self.history_ttl_ms:
            query += " AND sent_at_ms >= ?"
            params += (_now_ms() - self.history_ttl_ms,)
        try:
            rows = db.execute(query + " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        return [
            Message(sender=sender, content=content, room=room, seq=seq, sent_at_ms=at, client_msg_id=key)
            for seq, sender, content, at, key in rows
        ]

    def next_seq(self, room: str) -> int:
        next_seq = self.rooms.get(room, 1)
        return next_seq if next_seq > self.floor else self.floor + 1

    def _open_db(self) -> sqlite3.Connection:
        if self.db is None:
            raise StoreError("the broker is closed")
        return self.db

    # -- retention --------------------------------------------------------------------------------------

    def sweep(self) -> bool:
        """One bounded pass: save counters, forget idle rooms, trim rooms past --history and --history-ttl,
        expire dedup ids; whether there is more to do. Counters are saved before any message is trimmed, in
        the same transaction, so that the file never loses a room's newest seq."""
        db = self._open_db()
        now = _now_ms()
        saving = list(self.unsaved)
        trimming = list(self.untrimmed)[:SWEEP_ROOMS]
        try:
            db.execute("BEGIN")
            db.executemany(
                "UPDATE rooms SET next_seq = ?, used_ms = ? WHERE name = ?",
                [(self.rooms[name], now, name) for name in saving],
            )
            forgetting = self._forget_idle(db, now)
            trimmed, caught_up = self._trim_by_count(db, trimming)
            aged = 0
            if self.history_ttl_ms:
                aged = db.execute(
                    "DELETE FROM messages WHERE (room, seq) IN"
                    " (SELECT room, seq FROM messages WHERE sent_at_ms < ? LIMIT ?)",
                    (now - self.history_ttl_ms, SWEEP_ROWS),
                ).rowcount
            expired = db.execute(
                "DELETE FROM dedup WHERE (room, sender, client_msg_id) IN"
                " (SELECT room, sender, client_msg_id FROM dedup WHERE at_ms < ? LIMIT ?)",
                (now - self.dedup_ttl_ms, SWEEP_ROWS),
            ).rowcount
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db)
            raise self._failed(exc) from None
        # Only now that the file has it: what was saved, trimmed and forgotten.
        self.unsaved.difference_update(saving)
        self.untrimmed.difference_update(caught_up)
        for name in forgetting:
            self._drop(name)
        self.trimmed += trimmed + aged
        return bool(self.untrimmed) or expired == SWEEP_ROWS or aged == SWEEP_ROWS

    def _forget_idle(self, db: sqlite3.Connection, now: int) -> list[str]:
        """Delete rooms nobody here subscribes to and nobody published to for --room-ttl; their names."""
        idle = db.execute(
            "SELECT name FROM rooms WHERE used_ms < ? ORDER BY used_ms LIMIT ?", (now - self.room_ttl_ms, SWEEP_ROOMS)
        ).fetchall()
        names = [n for (n,) in idle if n not in self.watched and n in self.rooms and n not in self.unsaved]
        for name in names:
            self._delete_room(name, db)
        return names

    def _trim_by_count(self, db: sqlite3.Connection, names: list[str]) -> tuple[int, list[str]]:
        """Delete what --history no longer keeps from rooms `names`: (rows deleted, rooms now within it)."""
        trimmed, done = 0, []
        for name in names:
            deleted = db.execute(
                "DELETE FROM messages WHERE room = ?1 AND seq IN"
                " (SELECT seq FROM messages WHERE room = ?1 AND seq < ?2 ORDER BY seq LIMIT ?3)",
                (name, self.rooms[name] - self.keep, SWEEP_ROWS),
            ).rowcount
            trimmed += deleted
            if deleted < SWEEP_ROWS:
                done.append(name)
        return trimmed, done

    def checkpoint(self) -> int:
        """Copy what the WAL holds into the file (PASSIVE: beside the writer, never stopping it), on the
        checkpoint's own connection and thread. Returns the bytes the WAL holds (copied or not)."""
        checkpointer = self.checkpointer
        if checkpointer is None:
            return 0
        try:
            _busy, frames, _copied = checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        return max(int(frames), 0) * self.page_size

    def restart_wal(self) -> None:
        """Under the broker's lock (no commit can run): a checkpoint that lets the next commit write the
        WAL from its start again. A WAL written to without pause is never wholly copied by PASSIVE
        checkpoints alone, so it would grow without end."""
        try:
            self._open_db().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    def size(self) -> int:
        """Bytes the file and its WAL take on disk now."""
        total = 0
        for name in (self.path, self.path + "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(name)
        return total


class SqliteBroker(Broker):
    """Rooms in a SQLite file owned by this process: seqs, history and dedup survive restarts."""

    eager = True  # nothing here asks for the current task: a publish waits on a future the writer resolves

    def __init__(self, url: str, *, history: int, history_ttl: float, dedup_ttl: float, max_rooms: int,
                 room_ttl: float, timeout: float) -> None:
        path, synchronous = parse_url(url)
        self.url = url
        self._timeout = timeout
        self._watched: set[str] = set()
        self._store = _Store(path, synchronous, history=history, history_ttl=history_ttl, dedup_ttl=dedup_ttl,
                             max_rooms=max_rooms, room_ttl=room_ttl, watched=self._watched)
        self._executor: ThreadPoolExecutor | None = None
        self._inline = self._store.synchronous == "normal"
        self._lock = asyncio.Lock()
        """One user of the connection at a time: the loop's commits and reads, or the thread's jobs."""
        self._deliver: Deliver | None = None
        self._queued: list[tuple[Any, asyncio.Future[tuple[int, bool]]]] = []
        self._queued_event = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoints: ThreadPoolExecutor | None = None
        self._queued_since = 0.0
        """Loop time the oldest publish waiting was queued."""
        self._inflight: list[tuple[Any, asyncio.Future[tuple[int, bool]]]] = []
        """The batch being committed (or the last one), and since when."""
        self._inflight_since = 0.0
        self._problem = ""

    def __repr__(self) -> str:
        s = self._store
        state = "up" if self.up else f"FAILING ({self._problem})"
        return (f"<SqliteBroker {s.path} {state} synchronous={s.synchronous} rooms={len(s.rooms)} floor={s.floor}"
                f" trimmed={s.trimmed} forgotten={s.forgotten}>")

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Open the file (a bad path, a locked or damaged file fails here, in one line), then serve."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="async_chat.sqlite")
        try:
            await self._background(self._store.open)
        except StoreError as exc:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise Unavailable(exc.args[0]) from None
        self._checkpoints = ThreadPoolExecutor(1, thread_name_prefix="async_chat.sqlite.checkpoint")
        store = self._store
        if store.epoch_started:
            logger.warning(
                "%s: the last run did not shut down cleanly and the machine restarted since: transactions it"
                " committed last may be lost (synchronous=normal), so numbering goes on above %d; no seq is"
                " issued twice", store.path, store.floor, extra={"event": "broker_new_epoch", "floor": store.floor},
            )
        self._deliver = deliver
        self._writer = asyncio.create_task(self._write_forever(), name="async_chat.sqlite.writer")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="async_chat.sqlite.sweeper")
        self._checkpointer = asyncio.create_task(self._checkpoint_forever(), name="async_chat.sqlite.checkpointer")
        self._watchdog = asyncio.create_task(self._watch_forever(), name="async_chat.sqlite.watchdog")

    async def aclose(self) -> None:
        self._deliver = None
        writer, self._writer = self._writer, None
        sweeper, self._sweeper = self._sweeper, None
        watchdog, self._watchdog = self._watchdog, None
        checkpointer, self._checkpointer = self._checkpointer, None
        executor, self._executor = self._executor, None
        checkpoints, self._checkpoints = self._checkpoints, None
        try:
            await cancel_and_wait(watchdog)
            await cancel_and_wait(checkpointer)
            await cancel_and_wait(sweeper)
            await cancel_and_wait(writer)
        finally:
            if checkpoints is not None:  # a checkpoint in progress completes first
                await asyncio.shield(
                    asyncio.get_running_loop().run_in_executor(checkpoints, self._store.close_checkpointer)
                )
                checkpoints.shutdown(wait=False)
            for _message, waiter in self._queued:
                waiter.cancel()
            self._queued.clear()
            if executor is not None:
                # The thread finishes what it was given (a commit in progress completes), then leaves the
                # file trimmed as retention says (one bounded pass) and closes it.
                closing = asyncio.get_running_loop().run_in_executor(executor, self._store.finish)
                await asyncio.shield(closing)
                executor.shutdown(wait=False)

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish(self, message: Any) -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bool]] = loop.create_future()
        if not self._queued:
            self._queued_since = loop.time()
        self._queued.append((message, waiter))
        self._queued_event.set()
        return await waiter  # bounded by the watchdog, which fails it after --broker-timeout

    async def _write_forever(self) -> None:
        """Commit every publish waiting as one transaction, one transaction at a time (group commit)."""
        while True:
            await self._queued_event.wait()
            await asyncio.sleep(0)  # one more turn of the loop: the calls read with the first join its batch
            self._queued_event.clear()
            batch, self._queued = self._queued, []
            batch = [(message, waiter) for message, waiter in batch if not waiter.done()]  # given up on
            if not batch:
                continue
            messages = [message for message, _waiter in batch]
            self._inflight, self._inflight_since = batch, asyncio.get_running_loop().time()
            try:
                results = await self._run(self._store.append, messages)
            except StoreError as exc:
                self.errors += 1
                self._mark_down(exc.args[0])
                self._fail(batch, Unavailable(
                    f"the broker could not store the message ({exc.args[0]}); nothing was stored, retry later"
                ))
                continue
            self._mark_up()
            deliver = self._deliver
            for (message, waiter), result in zip(batch, results, strict=True):
                if isinstance(result, Unavailable):
                    if not waiter.done():
                        waiter.set_exception(result)
                    continue
                if result[1] and deliver is not None:
                    deliver(message)
                if not waiter.done():
                    waiter.set_result(result)

    async def _watch_forever(self) -> None:
        """Fail publishes the file has not committed within --broker-timeout (a disk that hangs), queued or
        in flight, rather than each publish paying for a timeout of its own. A commit that completes
        later still stores and delivers them: the clients were told they may have been stored."""
        loop = asyncio.get_running_loop()
        late = Unavailable(
            f"the database did not commit within {self._timeout:g}s; the message may have been stored:"
            " retry with the same client_msg_id"
        )
        while True:
            await asyncio.sleep(housekeeping_interval(self._timeout, cap=0.25))
            deadline = loop.time() - self._timeout
            for batch, since in ((self._inflight, self._inflight_since), (self._queued, self._queued_since)):
                if batch and since < deadline and any(not waiter.done() for _message, waiter in batch):
                    self.errors += 1
                    self._fail(batch, late)

    @staticmethod
    def _fail(batch: Iterable[tuple[Any, asyncio.Future[Any]]], error: Exception) -> None:
        for _message, waiter in batch:
            if not waiter.done():
                waiter.set_exception(error)

    def _mark_down(self, problem: str) -> None:
        self._problem = problem
        if self.up:
            self.up = False
            self.outages += 1
            logger.error(
                "broker cannot store (%s): publishes answer UNAVAILABLE until a commit succeeds again", problem,
                extra={"event": "broker_down", "reason": problem},
            )

    def _mark_up(self) -> None:
        if not self.up:
            self.up = True
            logger.warning("broker stores again", extra={"event": "broker_up"})

    # -- reading ------------------------------------------------------------------------------------------

    async def history(self, room: str, from_seq: int, limit: int) -> list[Any]:
        if limit <= 0:
            return []
        try:
            return await self._run(self._store.history, room, from_seq, limit)
        except StoreError as exc:
            self.errors += 1
            raise Unavailable(f"the broker could not read history ({exc.args[0]})") from None

    async def next_seq(self, room: str) -> int:
        return await self._run(self._store.next_seq, room)

    async def watch(self, room: str) -> None:
        self._watched.add(room)

    def unwatch(self, room: str) -> None:
        self._watched.discard(room)

    def renumbered(self, room: str, start: int, end: int) -> int | None:
        floors = [f for f in self._store.floors if start <= f < end]
        return max(floors) if floors else None

    def store_bytes(self) -> int | None:
        return self._store.size()

    # -- retention ------------------------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        """Retention, in passes of bounded length that let commits run between them, until it has caught up."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                for _pass in range(SWEEP_PASSES):
                    if not await self._background(self._store.sweep):
                        break
            except StoreError as exc:
                self.errors += 1
                self._mark_down(exc.args[0])

    async def _checkpoint_forever(self) -> None:
        """Keep the WAL short: copy it into the file beside the writer (PASSIVE, on a thread and connection
        of its own), and now and then, under the lock, let the next commit start it over."""
        loop = asyncio.get_running_loop()
        store = self._store
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self._checkpoints is None:
                continue
            try:
                left = await loop.run_in_executor(self._checkpoints, store.checkpoint)
                if left >= WAL_RESTART:
                    await self._background(store.restart_wal)
            except StoreError as exc:
                self.errors += 1
                self._mark_down(exc.args[0])

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        """A call on the file: on the loop at synchronous=normal (it never waits for the disk), else on the thread."""
        async with self._lock:
            if self._inline:
                if self._executor is None:
                    raise Unavailable("the broker is closed")
                return call(*args)
            return await self._in_thread(call, *args)

    async def _background(self, call: Callable[..., T], *args: Any) -> T:
        """A call that may wait for the disk (a checkpoint, a retention pass): always on the thread."""
        async with self._lock:
            return await self._in_thread(call, *args)

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise Unavailable("the broker is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)
