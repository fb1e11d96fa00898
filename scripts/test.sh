#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh test
exec .venv/bin/python -m pytest "$@"
