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


def configure(level: str, fmt: str = "text") -> None:
    """Send every logger's lines to stderr in `fmt`, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
