"""`python -m async_chat.server` and `python -m async_chat.chat` as real processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from async_chat import ChatClient, Message, Settings
from async_chat.settings import OPTIONS
from benchmarks.processes import ServerProcess, start_server

from .conftest import LOOPBACK

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
async def server_process() -> AsyncIterator[ServerProcess]:
    server = await start_server("--queue-size", "7")
    try:
        yield server
    finally:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


def run_cli(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "async_chat.server", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})},
    )


async def test_server_process_answers_and_stops_gracefully_on_sigterm(server_process: ServerProcess) -> None:
    start_line = server_process.log[-1]
    assert "transport=auto protocol=auto tls=off auth=off broker=memory://" in start_line
    assert "queue_size=7" in start_line
    async with ChatClient(LOOPBACK, server_process.port) as client:
        sub = await client.create_subscription("cli", 0)
        poll = asyncio.create_task(client.poll(sub.subscription_id, 10, 20_000))
        assert await client.publish(Message(sender="s", content="hello", room="cli")) == 1
        assert [m.content for m in (await poll).messages] == ["hello"]
    # (Polls in flight at shutdown are answered: tests/test_server.py drives that in-process.)
    assert await server_process.stop(signal.SIGTERM) == 0
    assert any("stopped" in line for line in server_process.log)
    assert not any("Traceback" in line for line in server_process.log)


async def test_server_process_exits_zero_on_sigint(server_process: ServerProcess) -> None:
    assert await server_process.stop(signal.SIGINT) == 0


async def test_environment_configures_the_server() -> None:
    server = await start_server(env={"ASYNC_CHAT_HISTORY": "3", "ASYNC_CHAT_TRANSPORT": "framed"})
    try:
        assert "transport=framed" in server.log[-1]
        assert "history=3" in server.log[-1]
        async with ChatClient(LOOPBACK, server.port, transport="framed") as client:
            for i in range(5):
                await client.publish(Message(sender="s", content=str(i)))
            assert [m.content for m in await client.history("general", 0, 10)] == ["2", "3", "4"]
    finally:
        assert await server.stop() == 0


def test_port_in_use_is_one_line_and_non_zero() -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(["--host", LOOPBACK, "--port", str(port)])
    assert done.returncode == 1
    expected = f"async_chat: cannot listen on {LOOPBACK}:{port}: Address already in use"
    assert done.stderr.strip().splitlines() == [expected]


@pytest.mark.parametrize(
    ("args", "env", "complaint"),
    [
        (["--transport", "pigeon"], {}, "invalid choice: 'pigeon'"),
        (["--port", "http"], {}, "invalid int value: 'http'"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--idle-timeout", "5"], {}, "idle-timeout (5s) must exceed max-poll-wait-ms (30s)"),
        (["--broker", "kafka://x"], {}, "broker must be a URL of memory://"),
        ([], {"ASYNC_CHAT_QUEUE_SIZE": "lots"}, "ASYNC_CHAT_QUEUE_SIZE='lots' is not a valid int"),
        ([], {"ASYNC_CHAT_HISTORY": "-5"}, "history must be 0 or more (from the environment: ASYNC_CHAT_HISTORY=-5)"),
        (["--prot", "9090"], {}, "unrecognized arguments: --prot 9090"),  # never taken as --protocol
        (["--broker", "redis://h:99999/0"], {}, "Port out of range 0-65535"),
        (["--broker", "redis://h:abc/0"], {}, "Port could not be cast to integer value as 'abc'"),
        (["--broker", "redis://[::1"], {}, "Invalid IPv6 URL"),
        (["--broker", "redis://h/0?socket_timeout=abc"], {}, "socket_timeout='abc' is not a valid value"),
        (["--broker", "redis://h/0?foo=bar"], {}, "unknown option 'foo' (known: client_name,"),
        (["--broker", "redis://:pw@h/abc"], {}, "'redis://***@h/abc': the database must be a number (/0)"),
        (["--broker", "rediss://h/0?ssl_ca_certs=/no/ca.pem"], {}, "the ssl_ca_certs file /no/ca.pem does not exist"),
        (["--auth-secret-file", "/no/secret"], {}, "auth-secret-file /no/secret: no such file"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(args: list[str], env: dict[str, str], complaint: str) -> None:
    done = run_cli(args, env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert complaint in line
    assert "Traceback" not in done.stderr


def test_help_explains_every_option_and_its_environment_variable() -> None:
    done = run_cli(["--help"])
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text


async def test_two_terminal_clients_chat_through_a_server(server_process: ServerProcess) -> None:
    async def terminal(name: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "async_chat.chat", "--name", name, "--room", "lobby",
            "--host", LOOPBACK, "--port", str(server_process.port),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    async def read_until(proc: asyncio.subprocess.Process, pattern: str) -> str:
        assert proc.stdout is not None
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"terminal exited before printing {pattern!r}"
            if re.search(pattern, line):
                return line

    alice, bob = await terminal("alice"), await terminal("bob")
    assert alice.stdin is not None
    assert bob.stdin is not None
    async with asyncio.timeout(30):
        await read_until(alice, r"joined 'lobby'")
        await read_until(bob, r"joined 'lobby'")
        alice.stdin.write(b"hello bob\n")
        seen_by_bob = await read_until(bob, r"alice: hello bob")
        bob.stdin.write(b"hi alice\n")
        seen_by_alice = await read_until(alice, r"bob: hi alice")
        alice.stdin.close()
        bob.stdin.close()
        assert await alice.wait() == 0
        assert await bob.wait() == 0
    assert re.match(r"\[\d\d:\d\d:\d\d\] #1 alice: hello bob", seen_by_bob)
    assert re.match(r"\[\d\d:\d\d:\d\d\] #2 bob: hi alice", seen_by_alice)


async def test_readme_quickstart_example_runs(server_process: ServerProcess) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "quickstart.py"), "--port", str(server_process.port),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[:2] == ["stored as lobby #1", "#1 alice: 'hi, lobby'"]
    assert re.fullmatch(r"general #1 at \d+ ms: 'hello'", lines[2])


def test_readme_configuration_table_matches_the_options() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    defaults = Settings()
    for option in OPTIONS:
        row = f"| `{option.flag}` | `{option.env}` | `{getattr(defaults, option.field)}` |"
        assert row in readme, f"README's table is out of date for {option.flag}"


@pytest.mark.parametrize("command", ["async_chat.server", "async_chat.chat", "async_chat.admin"])
def test_every_command_says_its_version(command: str) -> None:
    import async_chat

    done = subprocess.run([sys.executable, "-m", command, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip() == f"python -m {command} {async_chat.__version__}"
    assert async_chat.__version__ != "0+unknown"  # installed: the version comes from the package's metadata


def test_a_metrics_port_in_use_names_the_metrics_port() -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(["--host", LOOPBACK, "--port", "0", "--metrics-port", str(port)])
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"async_chat: cannot serve metrics on {LOOPBACK}:{port} (--metrics-port):"), line


def test_the_redis_broker_without_redis_py_names_the_extra_to_install() -> None:
    hide_redis = "import sys, runpy; sys.modules['redis'] = None; sys.argv[0] = 'server';" \
                 " runpy.run_module('async_chat.server', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", hide_redis, "--port", "0", "--broker", "redis://127.0.0.1:1/0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()[-1:]
    assert "needs redis-py" in line
    assert "pip install 'async-chat[redis]'" in line
    assert "Traceback" not in done.stderr


async def test_the_readme_snippet_runs_as_written(server_process: ServerProcess, tmp_path: Path) -> None:
    """The README's first Python example, taken from the README itself: only the port is the test's."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'ChatClient("127.0.0.1", 9090)' in snippet
    script = tmp_path / "snippet.py"
    ours = f'ChatClient("127.0.0.1", {server_process.port})'
    script.write_text(snippet.replace('ChatClient("127.0.0.1", 9090)', ours))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["#1 alice: 'hi'"]
