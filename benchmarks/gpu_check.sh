#!/usr/bin/env bash
# One-shot check on a GPU machine (no internet; jax[cuda], flax, optax, chex, networkx, absl-py,
# torch installed), run from anywhere:  bash benchmarks/gpu_check.sh [RESULTS_DIR]
#
# Stages, each bounded by `timeout` and by an overall deadline (< 5 minutes in all); a stage that
# fails or times out is reported and the next one runs:
#   versions     nvidia-smi -L, python / jax / flax / optax / torch versions, jax devices
#   correctness  pytest tests/test_simulation.py (when present and pytest is installed), and
#                vs_loop at N=8: the vectorized round equals the per-device loops ("match: True")
#   round_time   N = 100, 1000, 10000; dense and gather consensus
#   vs_loop      N = 100: vectorized vs jax loop vs torch loop (torch on cuda)
#   sweep        python -m benchmarks.sweep, when that file exists
#   skew         benchmarks.skew at N = 100 and 1000 (padded vs bucketed local phase)
#   setup_time   benchmarks.setup_time (host set-up by stage)
#   models       benchmarks.models: resnet20, vgg11, resnet18 at N = 100, full width, B = 32: one
#                vmapped round vs one model on N x B batches and vs its roofline floor (#13)
#   algorithms   pytest tests/test_algorithms.py, then benchmarks.compare_algorithms (the reduced
#                protocol of issue #10; needs MNIST in .gpu_data; set GPU_CHECK_BUDGET_S=600)
#   wireless     pytest tests/test_wireless.py, then experiments.wireless_study at the issue's
#                target (97%, 60-round cap; needs MNIST in .gpu_data; its report goes to
#                RESULTS_DIR/wireless and is the full-scale version of docs/wireless_2026-12-02)
# Logs and JSON go to RESULTS_DIR (default $OUT/gpu_check when $OUT is set, else
# /tmp/p2pl_gpu_check); a short markdown table is printed last.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
RES=${1:-${OUT:+$OUT/gpu_check}}
RES=${RES:-/tmp/p2pl_gpu_check}
mkdir -p "$RES"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-285}   # whole script, seconds
: > "$RES/stages.txt"

# ml_collections (needed by p2pl_jax.runner and the tests) may be missing: wheels in .whl/.
if ! "$PY" -c "import ml_collections" 2>/dev/null && [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export P2PL_NO_TFDS=1
if [ -d .gpu_data ]; then
    export P2PL_DATA_DIR=$PWD/.gpu_data
fi

# stage NAME LIMIT_S CMD...: runs CMD with the smaller of LIMIT_S and the time left, logs it.
stage() {
    local name=$1 limit=$2
    shift 2
    local left=$(( START + BUDGET - $(date +%s) ))
    if (( left < limit )); then limit=$left; fi
    if (( limit < 10 )); then
        echo "=== $name: skipped (out of time)"
        echo "| $name | skipped (out of time) | 0 |" >> "$RES/stages.txt"
        return
    fi
    echo "=== $name (limit ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$RES/$name.log"
    rc=${PIPESTATUS[0]}
    local status="ok"
    if (( rc == 124 || rc == 137 )); then status="timed out"; elif (( rc != 0 )); then
        status="failed (rc $rc)"; fi
    echo "=== $name: $status in $(( $(date +%s) - t0 ))s"
    echo "| $name | $status | $(( $(date +%s) - t0 )) |" >> "$RES/stages.txt"
}

versions() {
    nvidia-smi -L || echo "nvidia-smi not found"
    "$PY" - <<'EOF'
import platform
import jax, flax, optax
print("python", platform.python_version(), "| jax", jax.__version__, "| flax", flax.__version__,
      "| optax", optax.__version__)
print("jax backend", jax.default_backend(), "devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    print("torch not importable")
try:
    import ml_collections  # noqa: F401
    print("ml_collections ok")
except ImportError:
    print("ml_collections missing")
EOF
}

export PY
export -f versions
stage versions 30 bash -c versions
if [ -f tests/test_simulation.py ] && "$PY" -c "import pytest" 2>/dev/null; then
    stage pytest_simulation 60 "$PY" -m pytest -q -x tests/test_simulation.py
fi
stage vs_loop_n8 40 "$PY" -m benchmarks.vs_loop --n=8 --samples=100 --repeats=1 \
    --json "$RES/vs_loop_n8.json"
# jax may use 95% of the GPU here: N = 10000 needs ~19 GiB of data plus ~8 GiB per model copy.
stage round_time 120 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 \
    "$PY" -m benchmarks.round_time --ns=100,1000,10000 --backends=dense,gather --repeats=2 \
    --json "$RES/round_time.json"
stage vs_loop_n100 60 "$PY" -m benchmarks.vs_loop --n=100 --repeats=1 \
    --json "$RES/vs_loop_n100.json"
if [ -f benchmarks/sweep.py ]; then
    stage sweep 60 "$PY" -m benchmarks.sweep
fi
if [ -f benchmarks/skew.py ]; then   # issue #12: padded vs bucketed local phase (calibrates
    # buckets.OVERHEAD["gpu"]); also N = 1000, where the padded scan is launch-bound
    stage skew 120 "$PY" -m benchmarks.skew --repeats=3 --padded-repeats=2 --json "$RES/skew.json"
    stage skew_n1000 120 "$PY" -m benchmarks.skew --n=1000 --cases=equal,top:0.5,lognormal:1.5 \
        --json "$RES/skew_n1000.json"
fi
if [ -f benchmarks/setup_time.py ]; then
    stage setup_time 120 "$PY" -m benchmarks.setup_time --json "$RES/setup_time.json"
fi
if [ -f benchmarks/models.py ]; then   # issue #13: vmapped round per model vs large batch, floor
    # S = 64: 2 local steps of B = 32 per round; the JSON is rewritten after every model.
    stage models 90 "$PY" -m benchmarks.models --models=resnet20,vgg11,resnet18 --devices=100 \
        --batch_size=32 --width_multiplier=1 --samples_per_device=64 --repeats=2 \
        --json "$RES/models.json"
fi
if [ -f tests/test_algorithms.py ] && "$PY" -c "import pytest" 2>/dev/null; then
    stage pytest_algorithms 90 "$PY" -m pytest -q -x tests/test_algorithms.py
fi
if [ -f benchmarks/compare_algorithms.py ]; then
    stage compare_algorithms 300 "$PY" -m benchmarks.compare_algorithms --grid_data=iid \
        --workdir "$RES/compare_algorithms"
fi
if [ -f experiments/wireless_study.py ]; then   # issue #14 at the issue's 97% target
    stage pytest_wireless 60 "$PY" -m pytest -q -x tests/test_wireless.py
    stage wireless_study 300 "$PY" -m experiments.wireless_study --target=0.97 --rounds=60 --jobs=2 \
        --workdir "$RES/wireless_runs" --out "$RES/wireless"
fi

echo
echo "## gpu_check ($(hostname), $(nvidia-smi -L 2>/dev/null | head -1 | cut -c1-60)), $(( $(date +%s) - START ))s"
echo
echo "| stage | status | s |"
echo "| --- | --- | --- |"
cat "$RES/stages.txt"
echo
shopt -s nullglob
jsons=("$RES"/round_time.json "$RES"/vs_loop_n8.json "$RES"/vs_loop_n100.json
       "$RES"/models.json)
existing=()
for f in "${jsons[@]}"; do [ -f "$f" ] && existing+=("$f"); done
if (( ${#existing[@]} )); then
    JAX_PLATFORMS=cpu timeout 60 "$PY" -m benchmarks.common --table "${existing[@]}"
fi
