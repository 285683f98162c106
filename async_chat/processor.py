"""Dispatch with our error mapping: the one place where `ChatError` becomes a Thrift error.

thriftpy2's `TAsyncProcessor` re-raises any exception the IDL does not declare, and its server then drops
the connection with no reply at all. Here every call gets an answer:
- a `ChatError` on a method that declares `throws (1: ChatError error)` -> the IDL's ChatError;
- a `ChatError` on `sendMessage`/`unsubscribe` (which declare none, so classic clients keep working)
  -> a TApplicationException whose message is "CODE: reason";
- anything unexpected -> logged with its traceback, answered with TApplicationException INTERNAL_ERROR.
The connection lives on in every case. Decoding is the codec's (codec.py); an answer comes back as the
reply's bytes, encoded by the caller's codec, so that the connection writes it in one piece.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from thriftpy2.thrift import TApplicationException

from .contract import WireChatError
from .errors import ChatError

if TYPE_CHECKING:
    from .codec import Call, Codec
    from .metrics import Metrics

logger = logging.getLogger(__name__)


class ChatProcessor:
    """Runs decoded calls on the handler and encodes their answers."""

    def __init__(self, service: Any, handler: Any, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._results: dict[str, Any] = {}
        self._params: dict[str, tuple[str, ...]] = {}
        self._declares_error: dict[str, bool] = {}
        self._methods: dict[str, Any] = {}
        for api in service.thrift_services:
            result = getattr(service, api + "_result")
            self._results[api] = result
            self._params[api] = tuple(spec[1] for spec in getattr(service, api + "_args").thrift_spec.values())
            self._declares_error[api] = "error" in {spec[1] for spec in result.thrift_spec.values()}
            self._methods[api] = getattr(handler, api, None)

    async def answer(self, call: Call, codec: Codec) -> bytes | None:
        """Run `call` and return its reply's bytes (None for a oneway method); with metrics on, count it
        by method and outcome."""
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        api, seqid = call.api, call.seqid
        reply: bytes | None
        if call.args is None:  # a method the service does not have
            logger.debug("unknown method %r called", api)
            error = TApplicationException(TApplicationException.UNKNOWN_METHOD, f"unknown method {api!r}")
            reply, outcome = codec.exception(api, seqid, error), "unknown_method"
        else:
            reply, outcome = await self._run(call, codec)
        if metrics is not None:
            metrics.observe(api, outcome, time.perf_counter() - started)
        return reply

    async def _run(self, call: Call, codec: Codec) -> tuple[bytes | None, str]:
        api, seqid, args = call.api, call.seqid, call.args
        result = self._results[api]()
        try:
            result.success = await self._methods[api](*[getattr(args, name) for name in self._params[api]])
        except ChatError as exc:
            if exc.code is None:  # a client-side kind has no wire code: a bug here, not a refusal
                return self._internal_error(api, seqid, codec), "internal"
            outcome = exc.code.name.lower()
            if not self._declares_error[api]:
                refusal = TApplicationException(TApplicationException.UNKNOWN, str(exc))
                return codec.exception(api, seqid, refusal), outcome
            result.error = WireChatError(code=int(exc.code), reason=exc.reason)
        except Exception:
            return self._internal_error(api, seqid, codec), "internal"
        else:
            outcome = "ok"
        if result.oneway:
            return None, outcome
        try:
            return codec.reply(api, seqid, result), outcome
        except Exception:  # the handler returned what the IDL cannot carry
            return self._internal_error(api, seqid, codec), "internal"

    def _internal_error(self, api: str, seqid: int, codec: Codec) -> bytes:
        """Log the exception being handled, with its traceback; the bytes of an INTERNAL_ERROR answer."""
        logger.exception(
            "%s failed with an unexpected error; answering INTERNAL_ERROR", api,
            extra={"event": "internal_error", "method": api},
        )
        message = f"internal error in {api} (logged by the server)"
        return codec.exception(api, seqid, TApplicationException(TApplicationException.INTERNAL_ERROR, message))
