"""Speed scripts (run from the repo root: `python -m benchmarks.round_time`, ...); not tests."""
