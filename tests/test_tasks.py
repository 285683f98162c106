"""cancel_and_wait: stops an owned task, but never eats a cancellation meant for the caller."""

from __future__ import annotations

import asyncio

import pytest

from async_chat.tasks import cancel_and_wait


async def test_the_owned_task_is_cancelled_and_awaited() -> None:
    child = asyncio.create_task(asyncio.Event().wait())
    await cancel_and_wait(child)  # returns normally
    assert child.cancelled()


async def test_a_cancellation_of_the_caller_propagates() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    stopping = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            stopping.set()
            await release.wait()

    child = asyncio.create_task(slow_to_stop())
    await started.wait()
    closer = asyncio.create_task(cancel_and_wait(child))
    await stopping.wait()  # closer has cancelled the child and now waits on it
    closer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert child.done()
