"""A TCP proxy of the tests' own, on loopback: it forwards a client's connection to a server and can cut
it at the worst moment, in the middle of a reply, as a flaky network or a dying load balancer would."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from .conftest import LOOPBACK

Cut = Callable[[bytes], int | None]
"""Given a chunk on its way (a request or a reply): None to pass it whole, else how many of its bytes to
pass before both sides of the connection are aborted."""


class Proxy:
    """`async with Proxy(port) as proxy:` listens on `proxy.port` and forwards to `port`."""

    def __init__(self, target_port: int, cut: Cut | None = None) -> None:
        self.target_port = target_port
        self.cut = cut
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._server.wait_closed()

    def cut_once_within(self, marker: bytes) -> None:
        """Cut the next reply that carries `marker`, halfway through it."""

        def cut(chunk: bytes) -> int | None:
            if marker not in chunk:
                return None
            self.cut = None
            return chunk.index(marker) + len(marker) // 2

        self.cut = cut

    def cut_at_random(self, rng: random.Random, probability: float) -> None:
        """Cut each chunk, either way, with `probability`, at a random byte of it."""
        self.cut = lambda chunk: rng.randrange(len(chunk)) if rng.random() < probability else None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        self._writers |= {writer, up_writer}
        try:
            upstream = asyncio.ensure_future(self._pipe(reader, up_writer))
            downstream = asyncio.ensure_future(self._pipe(up_reader, writer))
            try:
                await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for half in (upstream, downstream):
                    half.cancel()
                await asyncio.wait({upstream, downstream})
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                keep = self.cut(chunk) if self.cut is not None else None
                if keep is not None:
                    self.cuts += 1
                    writer.write(chunk[:keep])
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    return
                writer.write(chunk)
                await writer.drain()
