"""The SQLite broker on real server processes: what survives SIGKILL, restarts, a full disk, a second
server, a damaged or read-only file, and a machine that may have lost the file's last transactions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from async_chat import ChatClient, ChatError, Message, Missed, Unavailable
from benchmarks.processes import LOOPBACK, ServerProcess, free_port, start_process, start_server

from .conftest import wait_until
from .test_redis import assert_no_internal_errors

pytestmark = pytest.mark.one_loop  # the subject is a server process; the test's loop only drives it

ROOM = "durable"


def url(path: Path, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")  # path is absolute: sqlite:////tmp/...


async def start(path: Path, *args: str, port: int = 0, fsize: int | None = None) -> ServerProcess:
    argv = ["--broker", url(path), "--port", str(port), *args]
    if fsize is None:
        return await start_server(*argv)
    # A real limit on how large the server may grow a file (the kernel refuses writes past it, EFBIG):
    # a disk that fills up, without needing a file system of our own.
    boot = (
        f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize})); "
        "sys.argv = ['async_chat.server'] + sys.argv[1:]; runpy.run_module('async_chat.server', run_name='__main__')"
    )
    return await start_process([sys.executable, "-c", boot, "--host", LOOPBACK, *argv])


async def history(port: int, room: str = ROOM) -> list[Message]:
    out: list[Message] = []
    async with ChatClient(LOOPBACK, port, timeout=10) as client:
        while page := await client.history(room, out[-1].seq + 1 if out else 0, 1000):
            out.extend(page)
    return out


def refusal(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "async_chat.server", "--host", LOOPBACK, "--port", "0", *argv],
        capture_output=True, text=True, timeout=60,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    """The server refused to start with exit 1 and one line that says why, no traceback."""
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


async def test_twenty_sigkills_mid_stream_lose_no_acknowledged_publish_and_reuse_no_seq(tmp_path: Path) -> None:
    """Publishers and a subscriber run while the server is SIGKILLed 20 times and restarted on the same file."""
    db, port = tmp_path / "chat.db", free_port()
    acked: dict[int, str] = {}
    received: list[Message] = []
    missed: list[Missed] = []
    servers: list[ServerProcess] = []

    async def publisher(client: ChatClient, name: str, stop: asyncio.Event) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            content = f"{name}-{i}"
            try:
                seq = await client.publish(Message(sender=name, content=content, room=ROOM, client_msg_id=content))
            except ChatError:  # the server was killed under it: this one may or may not be stored
                return
            assert acked.setdefault(seq, content) == content, f"seq {seq} acknowledged twice"

    async def subscriber(stream: AsyncIterator[Message | Missed]) -> None:
        async for item in stream:
            (missed if isinstance(item, Missed) else received).append(item)

    servers.append(await start(tmp_path / "chat.db", "--history", "100000", port=port))
    try:
        async with (
            ChatClient(LOOPBACK, port, timeout=5) as reader,
            reader.subscribe(ROOM) as stream,
            asyncio.TaskGroup() as group,
        ):
            reading = group.create_task(subscriber(stream))
            for cycle in range(20):
                stop = asyncio.Event()
                async with ChatClient(LOOPBACK, port, timeout=5) as client:
                    tasks = [group.create_task(publisher(client, f"c{cycle}p{p}", stop)) for p in range(4)]
                    before = len(acked)
                    await wait_until(lambda before=before: len(acked) >= before + 100, timeout=30)
                    await servers[-1].kill()  # SIGKILL, publishes in flight
                    stop.set()
                    await asyncio.gather(*tasks)
                servers.append(await start(db, "--history", "100000", port=port))
            async with ChatClient(LOOPBACK, port, timeout=5) as client:
                last = await client.publish(Message(sender="end", content="end", room=ROOM))
            await wait_until(lambda: bool(received) and received[-1].seq >= last, timeout=30)
            reading.cancel()
        stored = await history(port)
    finally:
        for server in servers:
            await server.kill()
    assert_no_internal_errors(servers)
    assert len(acked) >= 2000
    by_seq = {m.seq: m.content for m in stored}
    lost = {seq: content for seq, content in acked.items() if by_seq.get(seq) != content}
    assert not lost, f"{len(lost)} acknowledged publishes missing or changed after SIGKILL"
    assert [m.seq for m in stored] == list(range(1, last + 1))  # gapless, each seq once
    assert [(m.seq, m.content) for m in received] == [(m.seq, m.content) for m in stored]
    assert missed == []  # resumed after every restart without a reset and without loss


async def test_a_clean_restart_continues_numbering_history_and_dedup(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    server = await start(db)
    async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
        first = [await client.publish(Message(sender="a", content=f"m{i}", room=ROOM, client_msg_id=f"k{i}"))
                 for i in range(3)]
        stats = await client.stats(0)
    await server.stop()
    assert first == [1, 2, 3]
    assert stats.broker_bytes > 0  # the file and its WAL, as the operator's disk sees them

    server = await start(db)
    try:
        async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
            retried = await client.publish(Message(sender="a", content="m1", room=ROOM, client_msg_id="k1"))
            fresh = await client.publish(Message(sender="a", content="m3", room=ROOM))
            async with client.subscribe(ROOM, from_seq=2) as stream:
                items = [await anext(stream) for _ in range(3)]
    finally:
        await server.stop()
    assert (retried, fresh) == (2, 4)  # the retry of an acknowledged send is stored once, across a restart
    assert [(m.seq, m.content) for m in items] == [(2, "m1"), (3, "m2"), (4, "m3")]
    assert not any("new_epoch" in line for line in server.log)


async def test_a_second_server_on_the_same_file_is_refused_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    first = await start(db)
    try:
        done = await asyncio.to_thread(refusal, ["--broker", url(db)])
        async with ChatClient(LOOPBACK, first.port, timeout=10) as client:  # the first is unharmed
            assert await client.publish(Message(sender="a", content="still mine", room=ROOM)) == 1
    finally:
        await first.stop()
    assert_one_line(done, f"async_chat: cannot use {db}: another process holds it", "use a Redis broker")


def damage(db: Path, how: str) -> None:
    if how == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
    elif how == "truncated":
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("CREATE TABLE filler (x BLOB)")
            conn.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(2000),) for _ in range(200)])
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    elif how == "missing-folder":
        pass  # the path's folder is never made


@pytest.mark.parametrize("how", ["garbage", "truncated", "missing-folder"])
async def test_a_file_that_cannot_be_used_is_one_line_at_start(tmp_path: Path, how: str) -> None:
    db = (tmp_path / "nowhere" / "chat.db") if how == "missing-folder" else tmp_path / "chat.db"
    damage(db, how)
    done = await asyncio.to_thread(refusal, ["--broker", url(db)])
    why = {"garbage": "move it aside", "truncated": "move it aside", "missing-folder": "its folder does not exist"}
    assert_one_line(done, "async_chat: cannot ", str(db), why[how])


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` made read-only for this server: by mode, and (as root, whom modes do not stop) immutable."""
    path.chmod(0o444)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o644)


async def test_a_read_only_file_is_one_line_at_start(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    server = await start(db)
    await server.stop()
    with read_only(db):
        done = await asyncio.to_thread(refusal, ["--broker", url(db)])
    assert_one_line(done, f"async_chat: cannot use {db}", "read-only")


async def test_a_full_disk_refuses_publishes_and_loses_none_it_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    server = await start(db, "--history", "100000", fsize=1 << 20)  # no file of the server's past 1 MiB
    acked: dict[int, str] = {}
    refused = 0
    try:
        async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
            reasons: set[str] = set()
            for i in range(2000):
                content = f"{i:06d}" + "x" * 2000
                try:
                    acked[await client.publish(Message(sender="a", content=content, room=ROOM))] = content
                except Unavailable as exc:
                    reasons.add(exc.reason.partition(" (")[0] + " ..." + exc.reason.rpartition(")")[2])
                    refused += 1
                    if refused == 20:
                        break
            assert refused == 20
            assert len(acked) > 10
            assert reasons == {"the broker could not store the message ...; nothing was stored, retry later"}
            stats = await client.stats(0)
            assert not stats.broker_up  # /readyz and stats say so while it lasts
            served = await client.history(ROOM, 1, 10)  # reading goes on
            assert [m.seq for m in served] == list(range(1, 11))
    finally:
        await server.stop()
    assert sum("event=broker_down" in line for line in server.log) == 1  # once per episode, not per publish
    assert_no_internal_errors([server])

    server = await start(db, "--history", "100000")  # space again
    try:
        stored = await history(server.port)
        async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
            after = await client.publish(Message(sender="a", content="after", room=ROOM))
    finally:
        await server.stop()
    assert {m.seq: m.content for m in stored} == acked  # every acknowledged one, and only those
    assert after == max(acked) + 1  # the refused publishes took no seq: numbering has no gap


def rewind_as_after_power_loss(db: Path, keep: int) -> None:
    """What an OS crash may leave of a file at synchronous=NORMAL: its last transactions gone, and (the
    machine having restarted) another boot id on record. Only what SQLite itself could have lost."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM messages WHERE seq > ?", (keep,))
        conn.execute("UPDATE rooms SET next_seq = ?", (keep + 1,))
        conn.execute("UPDATE meta SET value = 'an-earlier-boot' WHERE key = 'boot'")


async def test_after_a_possible_power_loss_numbering_jumps_and_subscribers_are_told(tmp_path: Path) -> None:
    db, port = tmp_path / "chat.db", free_port()
    server = await start(db, port=port)
    async with ChatClient(LOOPBACK, port, timeout=10) as client:
        for i in range(5):
            await client.publish(Message(sender="a", content=f"m{i}", room=ROOM))
        async with client.subscribe(ROOM, from_seq=1) as stream:
            seen = [await anext(stream) for _ in range(5)]
            await server.kill()  # unclean: the file says this run never ended
            rewind_as_after_power_loss(db, keep=3)  # seqs 4 and 5 were acknowledged, then lost
            server = await start(db, port=port)
            try:
                seq = await client.publish(Message(sender="a", content="after", room=ROOM))
                jump, first = await anext(stream), await anext(stream)
            finally:
                await server.stop()
    assert [m.seq for m in seen] == [1, 2, 3, 4, 5]
    assert seq > 1_000_000  # above every seq the lost transactions can have issued: 4 and 5 are not reused
    assert isinstance(jump, Missed)
    assert (jump.reset, jump.count) == (True, 0)
    assert (first.seq, first.content) == (seq, "after")
    assert any("event=broker_new_epoch" in line for line in server.log)


async def test_retention_keeps_history_rooms_and_the_file_bounded(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    server = await start(db, "--history", "5", "--max-rooms", "3")
    try:
        async with ChatClient(LOOPBACK, server.port, timeout=10) as client, client.subscribe("watched"):
            for i in range(20):
                await client.publish(Message(sender="a", content=f"m{i}", room=ROOM))
            assert [m.seq for m in await client.history(ROOM, 0, 100)] == [16, 17, 18, 19, 20]
            await client.publish(Message(sender="a", content="kept", room="watched"))
            for room in ("r1", "r2", "r3", "r4"):  # past --max-rooms: the least recently used unwatched go
                await client.publish(Message(sender="a", content="x", room=room))
            assert [m.content for m in await client.history("watched", 0, 10)] == ["kept"]
            assert await client.history(ROOM, 0, 10) == []
    finally:
        await server.stop()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        rooms = sorted(name for (name,) in conn.execute("SELECT name FROM rooms"))
        rows = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert rooms == ["r3", "r4", "watched"]
    assert rows == 3


async def test_retention_keeps_up_with_a_fast_publisher(tmp_path: Path) -> None:
    """Publishes far faster than one background pass deletes: the file still keeps only --history."""
    db = tmp_path / "chat.db"
    server = await start(db, "--history", "100", "--publish-rate", "0")
    try:
        async with ChatClient(LOOPBACK, server.port, timeout=10, pool_size=16) as client:
            for start_at in range(0, 20_000, 1000):
                await asyncio.gather(*(
                    client.sendMessage(Message(sender="a", content=f"m{i}", room=ROOM))
                    for i in range(start_at, start_at + 1000)
                ))
            served = await client.history(ROOM, 0, 1000)
    finally:
        await server.stop()
    assert [m.seq for m in served] == list(range(19_901, 20_001))
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        rows = conn.execute("SELECT min(seq), max(seq), count(*) FROM messages").fetchone()
    assert rows == (19_901, 20_000, 100)


async def test_history_ttl_serves_nothing_older(tmp_path: Path) -> None:
    server = await start(tmp_path / "chat.db", "--history-ttl", "1")
    try:
        async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
            await client.publish(Message(sender="a", content="old", room=ROOM))
            async with asyncio.timeout(10):
                while await client.history(ROOM, 0, 10):  # noqa: ASYNC110 - a clock in another process
                    await asyncio.sleep(0.1)
            await client.publish(Message(sender="a", content="new", room=ROOM))
            assert [(m.seq, m.content) for m in await client.history(ROOM, 0, 10)] == [(2, "new")]
    finally:
        await server.stop()


def test_a_bad_sqlite_url_is_one_line(tmp_path: Path) -> None:
    for bad, why in [
        ("sqlite://", "give a file"),
        ("sqlite://host/chat.db", "give a file"),
        (f"sqlite:///{tmp_path}/c.db?synchronous=sometimes", "synchronous must be one of normal, full"),
        (f"sqlite:///{tmp_path}/c.db?journal=off", "unknown option journal"),
    ]:
        done = refusal(["--broker", bad])
        assert done.returncode == 2, done.stderr
        assert why in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


async def test_synchronous_full_is_recorded_and_needs_no_new_epoch(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    server = await start_server("--broker", url(db, synchronous="full"))
    async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
        await client.publish(Message(sender="a", content="synced", room=ROOM))
    await server.kill()
    rewind_as_after_power_loss(db, keep=1)  # another boot: but every commit was synced, nothing was lost
    server = await start_server("--broker", url(db, synchronous="full"))
    try:
        async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
            assert await client.publish(Message(sender="a", content="next", room=ROOM)) == 2
    finally:
        await server.stop()
    assert not any("new_epoch" in line for line in server.log)


async def test_another_process_can_back_the_file_up_while_the_server_runs(tmp_path: Path) -> None:
    """The README's promise: a backup while serving (sqlite3's online backup, from a process of its own)."""
    db, copy = tmp_path / "chat.db", tmp_path / "copy.db"
    server = await start(db)
    try:
        async with ChatClient(LOOPBACK, server.port, timeout=10) as client:
            for i in range(5):
                await client.publish(Message(sender="a", content=f"m{i}", room=ROOM))
            backup = (
                "import sqlite3, sys; src = sqlite3.connect(sys.argv[1]); dst = sqlite3.connect(sys.argv[2]);"
                " src.backup(dst); dst.close(); src.close()"
            )
            done = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-c", backup, str(db), str(copy)],
                capture_output=True, text=True, timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert await client.publish(Message(sender="a", content="after the backup", room=ROOM)) == 6
    finally:
        await server.stop()
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        saved = [content for (content,) in conn.execute("SELECT content FROM messages ORDER BY seq")]
    assert saved == [f"m{i}" for i in range(5)]
