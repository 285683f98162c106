"""Stopping the background tasks we own, without swallowing a cancellation aimed at us."""

from __future__ import annotations

import asyncio
from typing import Any


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
