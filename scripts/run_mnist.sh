#!/usr/bin/env bash
# Sets up .venv and runs the paper's headline job: P2PL, 100 devices, IID MNIST, complete graph.
# Extra arguments are passed on, e.g. --config.topology=cycle --workdir=runs/cycle
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh ""   # no extras (an explicit argument: "$@" belongs to train)
exec .venv/bin/python -m experiments.train --config=configs/mnist.py --workdir=runs/mnist "$@"
