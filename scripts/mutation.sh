#!/usr/bin/env bash
# Mutation testing of the core modules with the project's .venv; arguments go to
# scripts/mutate.py (see its --help), e.g. `scripts/mutation.sh --list` or
# `scripts/mutation.sh --jobs 2 rng sync` or `scripts/mutation.sh --report docs_table`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  echo "no .venv: run 'source scripts/setup_env.sh test' first" >&2
  exit 2
fi
exec .venv/bin/python scripts/mutate.py "$@"
