"""What every scenario shares: the machine's description, rounds interleaved in rotation, ratios.

This machine's speed drifts within a minute (a shared, virtual machine), so a figure alone means little:
scenarios run their configurations in rounds, rotated so none always goes first, and report each
figure also as the median of per-round ratios to a reference measured in the same round.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from async_chat import build
from async_chat.codec import DECODER


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare runs: CPU, cores, OS, Python and library versions."""
    cpu = platform.processor()
    with_name = Path("/proc/cpuinfo")
    if with_name.exists():
        for line in with_name.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for dist in ("async-chat", "thriftpy2", "uvloop", "redis"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        redis_version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()[2]
    except (OSError, IndexError):
        redis_version = None
    return {
        **_commit(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "redis_server": redis_version,
        "decoder": DECODER,  # what the servers run (the same package)
        "core": build.core(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _commit() -> dict[str, Any]:
    """Which code made the figures: the commit, and whether the work tree differed from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "HEAD").strip() or None
    changed = git("status", "--porcelain", "--", "async_chat", "benchmarks", "pyproject.toml", "setup.py",
                  ":(exclude)benchmarks/results").strip()
    return {"commit": commit, "clean": commit is not None and not changed}


async def closed_loop(call: Callable[[int], Awaitable[object]], tasks: int, seconds: float) -> tuple[int, int, float]:
    """`tasks` tasks each make call(i) back to back for `seconds`: (calls answered, calls failed, seconds).

    `call` gets a number unique across tasks (to tell its messages apart); a failure is any exception
    from the call, counted, never hidden.
    """
    counter = itertools.count()
    done = failed = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            try:
                await call(next(counter))
                done += 1
            except Exception:
                failed += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(loop())
    return done, failed, time.perf_counter() - started


async def closed_loop_timed(
    call: Callable[[int], Awaitable[object]], tasks: int, seconds: float
) -> tuple[int, int, float, list[float]]:
    """`closed_loop`, also returning every answered call's round trip in seconds."""
    latencies: list[float] = []

    async def timed(i: int) -> None:
        started = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - started)

    done, failed, took = await closed_loop(timed, tasks, seconds)
    return done, failed, took, latencies


def allow_open_files(count: int) -> None:
    """Raise this process's soft limit on open files to hold `count` sockets and some to spare (never
    past the hard limit): thousands of connections are a scenario here, not a leak."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 1024)), hard))


def own_cpu_seconds() -> float:
    """This process's CPU time so far (user and system): every load process reports its own."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def rotations(names: Sequence[str], rounds: int) -> list[list[str]]:
    """`rounds` orders of `names`, each rotated by one, so that no configuration always runs first."""
    return [list(names[r % len(names):]) + list(names[: r % len(names)]) for r in range(rounds)]


def median_ratio(rounds: list[dict[str, dict[str, float]]], name: str, reference: str, metric: str) -> float:
    """The median over rounds of `name`'s metric divided by `reference`'s, from the same round."""
    ratios = [r[name][metric] / r[reference][metric] for r in rounds if r[reference][metric]]
    return statistics.median(ratios) if ratios else float("nan")


@dataclass
class Report:
    """One scenario's output: parameters, every round's figures, and the medians and ratios."""

    scenario: str
    parameters: dict[str, Any]
    rounds: list[dict[str, dict[str, float]]] = field(default_factory=list)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summarize(self, reference: str | Sequence[str], ratios: Sequence[str]) -> None:
        """Each configuration's median of every figure over the rounds, and for `ratios` the median of
        per-round ratios to each reference (named `<figure>_ratio_to_<reference>`).

        A name may carry a group before its last "/" ("framed/binary/64/ours"): its references are then
        the group's ("framed/binary/64/raw"), measured in the same rounds."""
        references = [reference] if isinstance(reference, str) else list(reference)
        for name in dict.fromkeys(n for r in self.rounds for n in r):
            present = [r for r in self.rounds if name in r]
            group = name.rpartition("/")[0]
            summary = {m: statistics.median(r[name][m] for r in present) for m in present[0][name]}
            for ref in references:
                against = f"{group}/{ref}" if group else ref
                if all(against in r for r in present):
                    summary.update({f"{m}_ratio_to_{ref}": median_ratio(present, name, against, m) for m in ratios})
            self.summary[name] = summary


def write(reports: list[Report], out: Path) -> dict[str, Any]:
    """Write the run's JSON file (the machine, then every scenario) and return what was written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "scenarios": [r.to_json() for r in reports]}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


class Progress:
    """Where a run stands, on stderr: tqdm's bar on a terminal (the lines scenarios print go above it), and
    on anything else (CI logs, pipes) a plain line per step, `step 12/40: <what is running>`, since a bar
    redrawn with carriage returns makes an unreadable log."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.done = max(total, 1), 0
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        if self.live:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(total=self.total, file=self.stream, dynamic_ncols=True, unit="step")

    def step(self, label: str) -> None:
        """One step starts: `label` says what."""
        if self._bar is not None:
            self._bar.set_description_str(label)
            self._bar.update(1)
        else:
            self.stream.write(f"step {self.done + 1}/{self.total}: {label}\n")
            self.stream.flush()
        self.done = min(self.done + 1, self.total)

    def say(self, line: str) -> None:
        """A line of results, kept in the log."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write(f"done: {self.total} steps\n")
            self.stream.flush()
