"""The background tasks we own: periodic housekeeping, and stopping it without swallowing our own cancellation."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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


def start_eagerly(
    coro: Coroutine[Any, Any, T], context: contextvars.Context
) -> tuple[T | None, asyncio.Task[T] | None]:
    """Run `coro` in `context` until it first waits: `(result, None)` if it finished, else `(None, task)`.

    Most calls finish without waiting (a publish to the memory broker, a poll with messages queued), and a
    task for each costs a loop iteration plus its allocation. Python 3.12's eager task factory does this;
    we run on 3.11. A coroutine that does wait is handed, suspended where it is, to a task that owns it
    from there on. Exceptions raised before the first wait propagate to the caller.
    """
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        return stop.value, None
    task = asyncio.get_running_loop().create_task(_continue(_Suspended(coro, yielded)), context=context)
    return None, task


async def _continue(suspended: _Suspended[T]) -> T:
    return await suspended


class _Suspended(Generic[T]):
    """A started coroutine, as an awaitable that first yields again what it yielded (so the task that
    awaits it waits on the same future), then passes every send and throw through."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first: Any = first

    def __await__(self) -> Generator[Any, Any, T]:
        return self  # an iterator with send and throw, driven like a generator

    def __iter__(self) -> _Suspended[T]:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        first = self._first
        if first is not _GONE:
            self._first = _GONE
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._first = _GONE
        return self._coro.throw(typ if val is None else val)

    def close(self) -> None:
        self._coro.close()


_GONE = object()
