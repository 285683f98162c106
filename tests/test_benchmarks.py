"""The benchmark harness runs (its short mode), so it cannot rot. No figure is asserted: only that it
measured, that nothing was lost or failed, and that the JSON says what a reader needs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.one_loop


@pytest.mark.timeout(300)
async def test_every_scenario_runs_in_short_mode(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks", "--short", "--out", str(out),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(290):
        _out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out.read_text())
    assert {"cpu", "cores", "python", "versions", "redis_server", "commit", "clean"} <= doc["machine"].keys()
    assert len(doc["machine"]["commit"]) == 40  # the code the figures came from
    throughput, latency, fanout, memory, scenario, durable, clients, metrics = doc["scenarios"]
    names = [s["scenario"] for s in doc["scenarios"]]
    assert names == ["throughput", "latency", "fanout", "memory", "redis", "durable", "clientload", "metrics"]
    # every peer answered every call with the expected bytes, through the C load generator
    [figures] = throughput["rounds"]
    assert {name.rpartition("/")[2] for name in figures} == {
        "ours", "raw", "aio-uvloop", "aio-asyncio", "thriftpy2-threaded", "apache-threaded", "apache-simple",
        "ours-chatclient",
    }
    for name, f in figures.items():
        assert f["errors"] == 0, (name, f)
        assert f["calls"] > 0, (name, f)
        assert f["p999_us"] >= f["p99_us"] >= f["p50_us"] > 0
        assert f["c_generator"] == (0 if name.endswith("chatclient") else 1)
    ours = throughput["summary"]["framed/binary/16/ours"]
    assert ours["calls_per_s_ratio_to_raw"] > 0
    assert ours["calls_per_s_ratio_to_aio-uvloop"] > 0
    assert throughput["summary"]["framed/binary/16/raw"]["calls_per_s_ratio_to_raw"] == 1.0
    # open loop: every message published was delivered or reported missed, none failed
    for name, f in latency["rounds"][0].items():
        assert f["errors"] == 0, (name, f)
        if name != "peak":
            assert f["delivered"] + f["missed"] == f["sent"] > 0
            assert f["lost"] == 0, (name, f)
            assert f["c_publisher"] == 1, (name, f)
            assert f["p99_ms"] >= f["p50_ms"] > 0
    for name, f in fanout["rounds"][0].items():
        assert f["errors"] == 0, (name, f)
        assert f["deliveries_per_s"] > 0, (name, f)
        assert f["c_subscribers"] == 1, (name, f)  # CI has a C compiler: the light subscribers measured
        if f["rate"]:
            assert f["lost"] == 0, (name, f)
            assert f["p99_ms"] >= f["p50_ms"] > 0, (name, f)
    assert {f["linger_ms"] for f in fanout["rounds"][0].values()} == {0, 20}
    idle = memory["summary"]["idle"]
    assert idle["bytes_per_idle_connection"] > 0
    assert idle["bytes_per_idle_subscription"] > 0
    # what a reader sees: the charts and the tables
    for chart in ("throughput.png", "throughput-connections.png", "latency.png", "fanout.png"):
        assert (tmp_path / chart).read_bytes().startswith(b"\x89PNG"), chart
    tables = (tmp_path / "results-tables.md").read_text()  # not latest.json: the full tables are kept
    assert "| framed/binary | 16 | 1 | ours |" in tables  # one row per round
    assert "idle connections held" in tables
    assert len(scenario["rounds"]) == scenario["parameters"]["rounds"]
    for figures in scenario["rounds"]:
        assert figures.keys() == {"memory", "redis-2-nodes"}
        for name, f in figures.items():
            assert f["errors"] == 0, (name, f)
            assert f["publishes_per_s"] > 0
            assert f["deliveries_per_s"] > 0
            assert f["latency_p99_ms"] >= f["latency_p50_ms"] > 0
    assert scenario["summary"]["memory"]["publishes_per_s_ratio_to_memory"] == 1.0
    [figures] = durable["rounds"]
    assert figures.keys() == {"memory", "sqlite", "sqlite-full", "redis-everysec"}
    for name, f in figures.items():
        assert f["errors"] == 0, (name, f)
        assert f["publishes_per_s"] > 0
        assert f["half_rate_answered_per_s"] > 0
        assert f["half_rate_p999_ms"] >= f["half_rate_p99_ms"] >= f["half_rate_p50_ms"] > 0
    assert "| 1 | sqlite |" in tables
    calls, last = clients["rounds"]
    assert calls.keys() == {"16/chatclient", "16/thriftpy2-aio", "16/apache"}
    for name, f in calls.items():
        assert f["errors"] == 0, (name, f)
        assert f["calls_per_s"] > 0
        assert f["client_cpu_us_per_call"] > 0
    assert last["stream"]["lost"] == 0  # every message the publisher got acknowledged arrived or was missed
    assert last["stream"]["received"] > 0
    assert (tmp_path / "clientload.png").read_bytes().startswith(b"\x89PNG")
    assert "| 16 | 1 | chatclient |" in tables
    assert b"round 2/2" in err
    assert b"step 15/" in err  # a line per step: stderr is not a terminal here
    for figures in metrics["rounds"]:
        assert figures.keys() == {"metrics-off", "metrics-on"}
        for f in figures.values():
            assert f["errors"] == 0
            assert f["server_cpu_us_per_publish"] > 0
    assert metrics["summary"]["metrics-on"]["server_cpu_us_per_publish_ratio_to_metrics-off"] > 0
