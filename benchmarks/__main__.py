"""`python -m benchmarks [SCENARIO ...] [--short] [--rounds N] [--out FILE]`: run scenarios with a progress
bar, write one JSON file of every figure, and draw the charts (PNG) and tables (markdown) beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import uvloop

from . import charts, clientload, durable, fanout, harness, latency, memory, metrics_cost, redis_broker, throughput

SCENARIOS: dict[str, Any] = {
    "throughput": throughput,
    "latency": latency,
    "fanout": fanout,
    "memory": memory,
    "redis": redis_broker,
    "durable": durable,
    "clientload": clientload,
    "metrics": metrics_cost,
}
"""Each has `Parameters` (with `short()`) and `run`; those with `steps` drive the progress bar themselves."""


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run async_chat's benchmark scenarios on this machine (server pinned to core 0, load to core"
        " 1 where taskset exists), write every figure to one JSON file, and draw charts and tables beside it.",
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--short", action="store_true", help="a run of seconds, to check the harness works")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default: the scenario's own)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest.json"),
                        help="the JSON file to write; charts (*.png) and tables go beside it (tables.md for"
                        " latest.json, else <name>-tables.md, so that a run of some scenarios keeps the full tables)")
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    chosen = args.scenarios or list(SCENARIOS)
    params = {}
    for name in chosen:
        module = SCENARIOS[name]
        p = module.Parameters.short() if args.short else module.Parameters()
        params[name] = type(p)(**{**p.__dict__, "rounds": args.rounds}) if args.rounds else p
    bar = harness.Progress(sum(
        SCENARIOS[n].steps(p) if hasattr(SCENARIOS[n], "steps") else p.rounds for n, p in params.items()))
    reports = []
    for name, p in params.items():
        module = SCENARIOS[name]
        bar.say(f"== {name}")
        if hasattr(module, "steps"):
            reports.append(uvloop.run(module.run(p, bar)))
        else:
            def progress(line: str, name: str = name) -> None:
                bar.say(line)
                bar.step(name)

            reports.append(uvloop.run(module.run(p, progress=progress)))
    bar.close()
    doc = harness.write(reports, args.out)
    for path in charts.draw(doc, args.out.parent):
        print(f"drew {path}", file=sys.stderr)
    tables = args.out.with_name("tables.md" if args.out.name == "latest.json" else args.out.stem + "-tables.md")
    tables.write_text(charts.tables(doc) + "\n")
    print(f"wrote {args.out} and {tables}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
