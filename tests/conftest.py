"""Shared fixtures: real servers on 127.0.0.1 port 0, real clients, uvloop as in production."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from async_chat import ChatClient, ChatServer, Settings, build

LOOPBACK = "127.0.0.1"
CLASSIC_IDL = """
struct Message {
    1: required string sender,
    2: required string content
}

service ChatService {
    void sendMessage(1: Message message)
}
"""
"""The article's contract, as old clients were generated from it."""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test compiled modules older than their sources: the old code would run, not the .py."""
    if not build.PURE and (stale := build.stale()):
        pytest.exit(f"{', '.join(stale)} changed since the package was compiled: install it again (`make pytest`"
                    " does), or test the .py files with ASYNC_CHAT_PURE_PYTHON=1", returncode=2)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Every async test runs on uvloop (what the CLI runs) and on asyncio's own loop (what apps may embed in).

    Tests marked `one_loop` (where a foreign process is the subject, not our loop) run on uvloop only.
    """
    if item.get_closest_marker("one_loop"):
        return {"uvloop": uvloop.new_event_loop}
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


ServerFactory = Callable[..., Awaitable[ChatServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers with settings overrides; all are closed (gracefully) at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(**overrides: Any) -> ChatServer:
            overrides.setdefault("host", LOOPBACK)
            overrides.setdefault("port", 0)
            return await stack.enter_async_context(ChatServer(Settings(**overrides)))

        yield factory


@pytest.fixture
async def server(make_server: ServerFactory) -> ChatServer:
    return await make_server()


@pytest.fixture
async def client(server: ChatServer) -> AsyncIterator[ChatClient]:
    async with ChatClient(LOOPBACK, server.port, timeout=5.0) as c:
        yield c


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition the code under test makes true by itself (bounded; fails on timeout)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the state under test has no event to wait on
            await asyncio.sleep(0.01)


async def read_to_close(reader: asyncio.StreamReader) -> bytes:
    """All the server sends until it closes the connection. A close that leaves bytes we sent unread
    arrives as a reset rather than an end of stream; both mean the server closed it."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


class RawConnection:
    """One plain thriftpy2 aio client on its own connection: for asserting what the wire carries."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: Any) -> None:
        self.reader, self.writer, self.client = reader, writer, client

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_connection(port: int, service: Any = None, dialect: Any = None) -> AsyncIterator[Any]:
    from thriftpy2.contrib.aio.client import TAsyncClient
    from thriftpy2.contrib.aio.socket import StreamHandler

    from async_chat.contract import ChatService
    from async_chat.wire import Dialect

    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    protocol = (dialect or Dialect()).protocol_on(StreamHandler(reader, writer))
    conn = RawConnection(reader, writer, TAsyncClient(service or ChatService, protocol))
    try:
        yield conn
    finally:
        await conn.close()
