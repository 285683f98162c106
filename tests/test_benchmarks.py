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


@pytest.mark.timeout(180)
async def test_every_scenario_runs_in_short_mode(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks", "--short", "--out", str(out),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(170):
        _out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out.read_text())
    assert {"cpu", "cores", "python", "versions", "redis_server"} <= doc["machine"].keys()
    scenario, metrics = doc["scenarios"]
    assert (scenario["scenario"], metrics["scenario"]) == ("redis", "metrics")
    assert len(scenario["rounds"]) == scenario["parameters"]["rounds"]
    for figures in scenario["rounds"]:
        assert figures.keys() == {"memory", "redis-2-nodes"}
        for name, f in figures.items():
            assert f["errors"] == 0, (name, f)
            assert f["publishes_per_s"] > 0
            assert f["deliveries_per_s"] > 0
            assert f["latency_p99_ms"] >= f["latency_p50_ms"] > 0
    assert scenario["summary"]["memory"]["publishes_per_s_ratio_to_memory"] == 1.0
    assert b"round 2/2" in err  # progress is shown
    for figures in metrics["rounds"]:
        assert figures.keys() == {"metrics-off", "metrics-on"}
        for f in figures.values():
            assert f["errors"] == 0
            assert f["server_cpu_us_per_publish"] > 0
    assert metrics["summary"]["metrics-on"]["server_cpu_us_per_publish_ratio_to_metrics-off"] > 0
