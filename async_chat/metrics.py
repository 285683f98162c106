"""Prometheus metrics: what a running server does, in the names operators scrape.

Two kinds, for cost: per-call facts (calls by method and outcome, call latency) are counted as calls
finish, and only when metrics are on (the processor holds no `Metrics` otherwise). Everything else
(connections, subscriptions, queue depth, messages, drops, the broker) the server already counts in
plain integers; `_StateCollector` reads them at scrape time, so they cost a call nothing.

No label carries a room, a sender or a subscription: their number is the clients' to choose, and a
label per room would let them grow the scrape without bound. Per-room figures are in `stats()`
(`python -m async_chat.admin stats`). Imported only with `--metrics-port` (needs prometheus-client).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .contract import ChatService

if TYPE_CHECKING:
    from .server import ChatServer

METHODS = frozenset(ChatService.thrift_services)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds. Long polls land in the upper buckets by design: a poll waits for messages."""


class Metrics:
    """The registry one server exposes, and the per-call counters the processor feeds."""

    def __init__(self, server: ChatServer) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._calls = Counter(
            "async_chat_calls", "Calls answered, by method and outcome (ok, or the error code in lower case,"
            " internal, unknown_method).", ["method", "outcome"], registry=self.registry,
        )
        self._latency = Histogram(
            "async_chat_call_duration_seconds", "Time from a call's arrival to its answer, by method"
            " (polls include their wait).", ["method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self.registry.register(_StateCollector(server))

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        if method not in METHODS:
            method = "unknown"  # clients choose method names: keep them out of the label set
        key = (method, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._calls.labels(method, outcome), self._latency.labels(method))
        calls, latency = children
        calls.inc()
        latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Reads the server's own counters when scraped."""

    def __init__(self, server: ChatServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        hub = server.hub

        def gauge(name: str, doc: str, value: float) -> Metric:
            return GaugeMetricFamily(f"async_chat_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(f"async_chat_{name}", doc, value=value)

        yield gauge("connections", "Client connections open now.", server.connection_count)
        yield counter("connections_opened", "Client connections accepted since start.", server.connections_total)
        yield counter(
            "connections_refused", "Connections closed on their first bytes: not Thrift, or a transport or"
            " protocol this server does not take.", server.refused_total,
        )
        yield counter(
            "connections_unreadable", "Connections closed because a call could not be decoded.",
            server.unreadable_total,
        )
        yield counter(
            "connections_oversized", "Connections closed because a call was longer than --max-call-bytes.",
            server.oversized_total,
        )
        if hub is None:
            return
        broker = hub.broker
        yield gauge("subscriptions", "Subscriptions held now.", hub.subscription_count)
        yield gauge("rooms", "Rooms with at least one subscriber on this server.", hub.room_count)
        yield gauge("queued_messages", "Messages waiting in subscription queues.", hub.queued_total())
        yield gauge("polls_waiting", "Long polls waiting for a message now.", hub.polls_waiting)
        yield counter("messages_published", "Messages stored through this server (retries not counted).",
                      hub.published_total)
        yield counter("messages_delivered", "Messages returned by polls.", hub.delivered_total)
        yield counter("messages_dropped", "Messages dropped from full subscription queues (slow subscribers).",
                      hub.dropped_total)
        yield counter("messages_missed", "Lost messages reported to subscribers in Batch.missed (drops, gaps,"
                      " history that no longer reached back).", hub.missed_total)
        yield counter("subscriptions_expired", "Subscriptions removed after going unpolled for the TTL.",
                      hub.expired_total)
        yield counter("subscriptions_evicted", "Subscriptions ended because their queue was full"
                      " (--overflow drop-subscription).", hub.evicted_total)
        yield gauge("broker_up", "1 if the broker is reachable, else 0.", 1 if broker.up else 0)
        stored = broker.store_bytes()
        if stored is not None:
            yield gauge(
                "broker_store_bytes", "Bytes the broker's store takes (memory counted, or the SQLite file and WAL).",
                stored,
            )
        yield counter("broker_errors", "Broker calls that failed (answered UNAVAILABLE).", broker.errors)
        yield counter("broker_outages", "Times the broker became unreachable.", broker.outages)
        yield counter("broker_reconnects", "Reconnection attempts to the broker.", broker.reconnects)
