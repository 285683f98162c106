"""Dispatch with our error mapping: the one place where `ChatError` becomes a Thrift error.

thriftpy2's `TAsyncProcessor` re-raises any exception the IDL does not declare, and its server then drops
the connection with no reply at all. Here every call gets an answer:
- a `ChatError` on a method that declares `throws (1: ChatError error)` -> the IDL's ChatError;
- a `ChatError` on `sendMessage`/`unsubscribe` (which declare none, so classic clients keep working)
  -> a TApplicationException whose message is "CODE: reason";
- anything unexpected -> logged with its traceback, answered with TApplicationException INTERNAL_ERROR.
The connection lives on in every case.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from thriftpy2.contrib.aio.processor import TAsyncProcessor
from thriftpy2.thrift import TApplicationException

from .contract import WireChatError
from .errors import ChatError

if TYPE_CHECKING:
    from .metrics import Metrics

logger = logging.getLogger(__name__)


class ChatProcessor:
    """Reads a call (`read_call`) and answers it (`answer`); split so the server can tell idle from busy.

    Wraps thriftpy2's processor for its decoding and encoding; only the dispatch is ours.
    """

    def __init__(self, service: Any, handler: Any, metrics: Metrics | None = None) -> None:
        self._thrift = TAsyncProcessor(service, handler)
        self.metrics = metrics

    async def send_exception(self, oprot: Any, api: str, exc: TApplicationException, seqid: int) -> None:
        await self._thrift.send_exception(oprot, api, exc, seqid)

    async def send_result(self, oprot: Any, api: str, result: Any, seqid: int) -> None:
        await self._thrift.send_result(oprot, api, result, seqid)

    async def read_call(self, iprot: Any) -> tuple[str, int, Any, Any]:
        api, seqid, result, call = await self._thrift.process_in(iprot)
        return api, seqid, result, call

    async def answer(self, oprot: Any, api: str, seqid: int, result: Any, call: Any) -> None:
        """Run the call and send its answer; with metrics on, count it by method and outcome."""
        if self.metrics is None:
            await self._answer(oprot, api, seqid, result, call)
            return
        started = time.perf_counter()
        outcome = await self._answer(oprot, api, seqid, result, call)
        self.metrics.observe(api, outcome, time.perf_counter() - started)

    async def _answer(self, oprot: Any, api: str, seqid: int, result: Any, call: Any) -> str:
        if isinstance(result, TApplicationException):  # unknown method: thriftpy2 built the answer
            logger.debug("unknown method %r called", api)
            result.message = f"unknown method {api!r}"
            await self.send_exception(oprot, api, result, seqid)
            return "unknown_method"
        try:
            result.success = await call()
        except ChatError as exc:
            if exc.code is None:  # a client-side kind has no wire code: a bug here, not a refusal
                await self._internal_error(oprot, api, seqid)
                return "internal"
            if "error" in {spec[1] for spec in result.thrift_spec.values()}:
                result.error = WireChatError(code=int(exc.code), reason=exc.reason)
            else:
                refusal = TApplicationException(TApplicationException.UNKNOWN, str(exc))
                await self.send_exception(oprot, api, refusal, seqid)
                return exc.code.name.lower()
            outcome = exc.code.name.lower()
        except Exception:
            await self._internal_error(oprot, api, seqid)
            return "internal"
        else:
            outcome = "ok"
        if not result.oneway:
            await self.send_result(oprot, api, result, seqid)
        return outcome

    async def _internal_error(self, oprot: Any, api: str, seqid: int) -> None:
        """Log the exception being handled, with its traceback, and answer INTERNAL_ERROR."""
        logger.exception(
            "%s failed with an unexpected error; answering INTERNAL_ERROR", api,
            extra={"event": "internal_error", "method": api},
        )
        message = f"internal error in {api} (logged by the server)"
        error = TApplicationException(TApplicationException.INTERNAL_ERROR, message)
        await self.send_exception(oprot, api, error, seqid)
