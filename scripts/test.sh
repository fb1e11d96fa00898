#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the test suite (extra args go to pytest).
# The tests run in parallel worker processes (pytest-xdist): one per core, at most 4
# (P2PL_TEST_WORKERS overrides; 0 runs them in this process).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh test
cores=$(nproc 2>/dev/null || echo 2)
workers=${P2PL_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
exec .venv/bin/python -m pytest -n "$workers" "$@"
