"""Log output: one line per event, as key=value text (the default) or JSON (`--log-format json`).

The standard library's logging, not structlog: every library we stand on (asyncio, redis-py, thriftpy2)
already logs through it, so one formatter covers their lines and ours, and the package needs no
dependency for it. Lines worth parsing carry `extra={"event": ...}` and their facts as fields; the
message stays readable for people.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

FORMATS = ("text", "json")

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own facts: ts, level, logger, event (if any), msg, then its extra fields."""
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    if "event" in extras:
        out["event"] = extras.pop("event")
    out["msg"] = record.getMessage()
    out.update(extras)
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class KeyValueFormatter(logging.Formatter):
    """`ts=… level=warning logger=async_chat.server event=connection_refused msg="…" peer=…`."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_quote(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same keys as the text format."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


def _quote(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


class Episodes:
    """Lines about one client's misbehaviour (a refused connection, an unreadable call, a stalled peer),
    logged once per episode: the first of each event at once, then at most one per `quiet` seconds,
    saying how many like it were left out meanwhile. A flood of bad connections is a few lines, not one
    per connection; the metrics still count every one."""

    def __init__(self, quiet: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self._clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, logger: logging.Logger, level: int, event: str, msg: str, *args: object, **fields: Any) -> None:
        now = self._clock()
        last = self._last.get(event)
        if last is not None and now - last < self.quiet:
            self._skipped[event] = self._skipped.get(event, 0) + 1
            return
        self._last[event] = now
        skipped = self._skipped.pop(event, 0)
        if skipped:
            msg += " (and %d more like it in the last %.0fs)"
            args = (*args, skipped, now - (last or now))
        logger.log(level, msg, *args, extra={"event": event, **fields, "left_out": skipped})


def configure(level: str, fmt: str = "text") -> None:
    """Send every logger's lines to stderr in `fmt`, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
