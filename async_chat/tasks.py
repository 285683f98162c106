"""The background tasks we own: periodic housekeeping, and stopping it without swallowing our own cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def housekeeping_interval(period: float, cap: float) -> float:
    """How often to check a deadline of `period` seconds: four times per period, within [10 ms, cap]."""
    return min(max(period / 4, 0.01), cap)


async def every(interval: float, action: Callable[[], object]) -> None:
    """Call `action` every `interval` seconds until cancelled (the owner cancels it with cancel_and_wait)."""
    while True:
        await asyncio.sleep(interval)
        action()


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait for it to finish.

    The task's own CancelledError is expected and absorbed; if the caller is itself being cancelled while
    it waits, that cancellation propagates.
    """
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
