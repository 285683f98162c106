"""The self-checking stress run (tests/stress.py), briefly: `make stress SECONDS=…` runs it longer.

A run that found nothing wrong proves little unless the failure paths ran: each test also asserts that
connections were cut, queues overflowed, subscriptions expired and (on Redis) nodes and Redis itself
failed, during the run.
"""

from __future__ import annotations

import pytest

from .stress import stress

pytestmark = pytest.mark.one_loop  # the subject is the server processes; the clients' loop is not


@pytest.mark.timeout(120)
async def test_stress_on_the_memory_broker_loses_nothing_silently() -> None:
    report = await stress("memory", seconds=15)
    assert report.violations == []
    assert report.acked > 1000
    assert report.cuts > 10  # mid-request and mid-reply
    assert report.dropped > 0  # queues overflowed
    assert report.missed > 0  # past what history held: reported, at its gap
    assert report.expired > 0  # the napper's subscription expired under it


@pytest.mark.timeout(120)
async def test_stress_on_sqlite_with_the_server_sigkilled_loses_nothing_and_renumbers_nothing() -> None:
    report = await stress("sqlite", seconds=15)
    assert report.violations == []
    assert report.acked > 1000
    assert report.cuts > 10
    assert report.node_restarts >= 1  # SIGKILLed, and started again on the same file
    assert report.node_freezes >= 1
    assert report.resubscribes > 0  # the raw clients found their node gone and resumed from next_seq
    assert report.renumbered == 0  # a SIGKILL loses nothing: numbering simply continues


@pytest.mark.timeout(150)
async def test_stress_on_redis_with_nodes_and_redis_failing_reuses_no_seq() -> None:
    report = await stress("redis", seconds=20)
    assert report.violations == []
    assert report.acked > 1000
    assert report.cuts > 10
    assert report.node_restarts >= 1
    assert report.node_freezes >= 1
    assert report.redis_flushes >= 1
    assert report.redis_restarts >= 1
    assert report.renumbered > 0  # subscribers were told of every jump
    assert report.resubscribes > 0  # the raw clients found their node replaced and resumed
