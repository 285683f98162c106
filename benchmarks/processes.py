"""Real processes that benchmarks and tests start: our server (`python -m async_chat.server`) and `redis-server`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"
UNLIMITED = ("--publish-rate", "0")
"""Server flags for benchmarks: they measure the server, not its per-connection rate limit."""


class ServerProcess:
    """A server process. `log` collects its stderr lines as they come (all of them once it has stopped):
    read all along, so a chatty server never blocks on a full pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: list[str]) -> None:
        self.proc, self.port, self.log = proc, port, log
        assert proc.stderr is not None
        self._line = asyncio.Condition()
        """Notified with each line that comes (`logged`)."""
        self._reader = asyncio.create_task(self._read(proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.log.append(line.decode().rstrip("\n"))
            async with self._line:
                self._line.notify_all()

    async def logged(self, text: str, count: int = 1) -> None:
        """Until `count` lines of the log hold `text`: woken by each line as it comes (the caller bounds it)."""
        async with self._line:
            await self._line.wait_for(lambda: sum(text in line for line in self.log) >= count)

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user + system), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """The process's resident memory now, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {self.proc.pid}")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(15):
            await self._reader
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.stop()


async def start_server(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start `python -m async_chat.server` on a free loopback port; returns once it listens."""
    return await start_process(
        [sys.executable, "-m", "async_chat.server", "--host", LOOPBACK, "--port", "0", *args], env=env
    )


async def start_process(argv: list[str], env: dict[str, str] | None = None) -> ServerProcess:
    """Start a server process that says `listening on 127.0.0.1:PORT` on stderr; returns once it has."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError(f"{argv[0]} exited before listening:\n" + "\n".join(log))
                log.append(line.rstrip("\n"))
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if found:
                    return ServerProcess(proc, int(found.group(1)), log)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


class RedisProcess:
    """A redis-server of the caller's own on loopback, which it may kill, freeze and restart.

    `persistent`: an append-only file (fsynced on every write, or as `appendfsync` says), kept across restarts
    in `directory`;
    otherwise nothing is saved and a restart comes back empty. `password` sets requirepass. `tls`:
    (certificate, key, CA) files: the server then speaks only TLS, and `url` is a rediss:// URL that
    trusts that CA.
    """

    def __init__(
        self,
        directory: Path,
        *,
        persistent: bool,
        appendfsync: str = "always",
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: `make test` installs it (Debian package redis-server)")
        self.binary, self.directory, self.persistent = binary, directory, persistent
        self.appendfsync = appendfsync
        self.password, self.tls = password, tls
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{credentials}{LOOPBACK}:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{credentials}{LOOPBACK}:{self.port}/0"

    async def start(self) -> None:
        options = (
            ["--appendonly", "yes", "--appendfsync", self.appendfsync] if self.persistent else ["--appendonly", "no"]
        )
        if self.password:
            options += ["--requirepass", self.password]
        if self.tls:
            cert, key, ca = self.tls
            options += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        else:
            options += ["--port", str(self.port)]
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "--bind", LOOPBACK, "--save", "", *options,
            "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "notice",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        seen: list[str] = []
        async with asyncio.timeout(20):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("redis-server exited:\n" + "".join(seen))
                seen.append(line)
                if "Ready to accept connections" in line:
                    break
        self._drain = asyncio.create_task(self._discard(self.proc.stdout))

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    async def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients; what was not fsynced is gone."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._drain

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    async def restart(self) -> None:
        await self.kill()
        await self.start()
