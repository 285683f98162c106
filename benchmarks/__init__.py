"""The benchmark harness: `python -m benchmarks` (see `--help`). Scenarios live one per module."""
