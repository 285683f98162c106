"""`python -m benchmarks [SCENARIO ...] [--short] [--out FILE]`: run scenarios, write one JSON file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvloop

from . import harness, metrics_cost, redis_broker

SCENARIOS = {"redis": redis_broker, "metrics": metrics_cost}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run async_chat's benchmark scenarios on this machine and write every figure to one JSON file.",
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--short", action="store_true", help="a run of seconds, to check the harness works")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default: the scenario's own)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest.json"), help="where to write")
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    reports = []
    for name in args.scenarios or list(SCENARIOS):
        module = SCENARIOS[name]
        params = module.Parameters.short() if args.short else module.Parameters()
        if args.rounds:
            params = type(params)(**{**params.__dict__, "rounds": args.rounds})
        print(f"== {name}", file=sys.stderr)
        reports.append(uvloop.run(module.run(params, progress=lambda line: print(line, file=sys.stderr))))
    harness.write(reports, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
