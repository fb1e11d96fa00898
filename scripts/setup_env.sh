#!/usr/bin/env bash
# Creates .venv (if needed) and installs p2pl-jax into it with the given extras, e.g. "test".
# Usage: source scripts/setup_env.sh [EXTRAS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
# The shared data folder beside the checkout, when there is one and nothing else was chosen.
if [ -z "${P2PL_DATA_DIR:-}" ] && [ -d "$root/../shared/data" ]; then
  export P2PL_DATA_DIR="$(cd "$root/../shared/data" && pwd)"
fi
