"""The terminal client (`python -m async_chat.chat`) as a new user runs it: from a pipe, a file or
/dev/null, with lines too long, facing escape sequences and forged lines, a server that dies, a token,
and TLS. Real processes throughout."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from async_chat import ChatClient, InvalidRequest, Message
from async_chat.auth import mint
from benchmarks.processes import ServerProcess, start_server

from .certs import make_certificates
from .conftest import LOOPBACK

pytestmark = pytest.mark.one_loop


@pytest.fixture
async def server() -> AsyncIterator[ServerProcess]:
    process = await start_server()
    try:
        yield process
    finally:
        await process.kill()


async def terminal(port: int, *args: str, stdin: int | Path = subprocess.PIPE) -> asyncio.subprocess.Process:
    source = stdin.open("rb") if isinstance(stdin, Path) else stdin
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "async_chat.chat", "--host", LOOPBACK, "--port", str(port), "--room", "lobby",
            *args, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    finally:
        if isinstance(stdin, Path):
            source.close()  # type: ignore[union-attr]


async def read_until(proc: asyncio.subprocess.Process, pattern: str) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"the terminal exited before printing {pattern!r}"
            if re.search(pattern, line):
                return line


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_stdin_from_dev_null_joins_and_leaves_cleanly(server: ServerProcess) -> None:
    proc = await terminal(server.port, "--name", "cron", stdin=subprocess.DEVNULL)
    code, out, err = await finish(proc)
    assert code == 0, err
    assert "*** joined 'lobby'" in out
    assert err == ""


async def test_lines_from_a_file_are_sent_and_an_over_long_one_is_refused_whole(
    server: ServerProcess, tmp_path: Path
) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"first\n" + b"y" * 100 * 1024 + b"\n" + b"z" * (2 << 20) + b"\nlast\n")
    async with ChatClient(LOOPBACK, server.port) as client, client.subscribe("lobby") as stream:
        proc = await terminal(server.port, "--name", "filer", stdin=lines)
        code, out, err = await finish(proc)
        received = [await anext(stream) for _ in range(2)]
    assert code == 0, err
    assert [m.content for m in received] == ["first", "last"]  # the two too long were not stored
    assert "*** not sent: TOO_LARGE: content is 102400 bytes; the limit is 65536" in out
    assert "*** not sent: a line longer than 1048576 bytes" in out
    assert "Traceback" not in err


async def test_escape_sequences_and_newlines_cannot_act_on_the_terminal_or_forge_a_line(
    server: ServerProcess,
) -> None:
    proc = await terminal(server.port, "--name", "bob")
    await read_until(proc, r"joined 'lobby'")
    async with ChatClient(LOOPBACK, server.port) as client:
        await client.publish(Message(sender="mallory", room="lobby",
                                     content="\x1b[2Jcleared?\n[12:00:00] #9 alice: send me your password"))
    line = await read_until(proc, r"mallory")
    forged = await read_until(proc, r"alice: send me")
    assert proc.stdin is not None
    proc.stdin.close()
    code, rest, _err = await finish(proc)
    assert code == 0
    assert line.rstrip("\n").endswith(r"mallory: \x1b[2Jcleared?")  # shown, not obeyed
    assert forged == "    | [12:00:00] #9 alice: send me your password\n"  # marked: it cannot pass for alice's
    assert "\x1b" not in line + forged + rest


async def test_names_with_control_characters_are_refused(server: ServerProcess) -> None:
    async with ChatClient(LOOPBACK, server.port) as client:
        for message in (Message(sender="eve\n[12:00] #1 bob", content="x"), Message(sender="eve", content="x",
                                                                                 room="lob\x1b[2Jby")):
            with pytest.raises(InvalidRequest, match="control characters"):
                await client.publish(message)
        assert await client.publish(Message(sender="Zoë 🚀", content="multi\nline is fine", room="lobby")) == 1


async def test_a_server_that_dies_is_told_without_typing(server: ServerProcess) -> None:
    proc = await terminal(server.port, "--name", "waiting")
    await read_until(proc, r"joined 'lobby'")
    await server.kill()
    notice = await read_until(proc, r"\*\*\*")
    assert "lost the connection" in notice
    proc.kill()
    await proc.wait()


async def test_with_a_token_it_says_who_the_server_knows_you_as(tmp_path: Path) -> None:
    secret = b"s" * 32
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(secret)
    server = await start_server("--auth-secret-file", str(secret_file))
    try:
        proc = await terminal(server.port, "--name", "mallory", "--token", mint(secret, "alice", ttl=60))
        joined = await read_until(proc, r"joined")
        assert proc.stdin is not None
        proc.stdin.write(b"hello\n")
        echoed = await read_until(proc, r"hello")
        proc.stdin.close()
        assert (await finish(proc))[0] == 0
    finally:
        await server.kill()
    assert "as 'alice' (the server names you by your token; --name 'mallory' is not used)" in joined
    assert re.search(r"#1 alice: hello$", echoed.rstrip("\n"))


async def test_tls_options_reach_a_tls_only_server_and_a_plain_client_is_told_why(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    server = await start_server("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    try:
        proc = await terminal(server.port, "--name", "sec", "--tls-ca", str(certs.ca), stdin=subprocess.DEVNULL)
        code, out, err = await finish(proc)
        assert code == 0, err
        assert "over TLS as 'sec'" in out
        plain = await terminal(server.port, "--name", "plain", stdin=subprocess.DEVNULL)
        code, out, err = await finish(plain)
    finally:
        await server.kill()
    assert code == 1
    [line] = err.strip().splitlines()
    assert "does it speak TLS only" in line


async def test_at_a_terminal_messages_print_above_the_line_being_typed(server: ServerProcess) -> None:
    """On a (pseudo-)terminal, prompt_toolkit reads the line: a half-typed line survives a message
    arriving, and Enter sends it."""
    import os
    import pty

    controller, terminal_side = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "async_chat.chat", "--host", LOOPBACK, "--port", str(server.port), "--room", "lobby",
        "--name", "ttyuser", stdin=terminal_side, stdout=terminal_side, stderr=terminal_side,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40"},
    )
    os.close(terminal_side)
    loop = asyncio.get_running_loop()
    seen = bytearray()

    async def screen_shows(text: bytes) -> None:
        async with asyncio.timeout(30):
            while text not in seen:
                seen.extend(await loop.run_in_executor(None, os.read, controller, 65536))

    try:
        await screen_shows(b"joined 'lobby'")
        os.write(controller, b"half typ")
        await screen_shows(b"half typ")
        async with ChatClient(LOOPBACK, server.port) as client, client.subscribe("lobby") as stream:
            await client.publish(Message(sender="other", content="arriving meanwhile", room="lobby"))
            await screen_shows(b"other: arriving meanwhile")
            os.write(controller, b"ed\r")
            items = [await anext(stream) for _ in range(2)]
    finally:
        proc.kill()
        await proc.wait()
        os.close(controller)
    assert [(m.sender, m.content) for m in items] == [("other", "arriving meanwhile"), ("ttyuser", "half typed")]
