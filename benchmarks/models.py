"""One vmapped P2PL round per model against one large-batch model and the round's roofline floor.

    python -m benchmarks.models [--models=mlp,cnn,...|all] [--devices=N] [--batch_size=B]
        [--width_multiplier=w] [--samples_per_device=S] [--repeats=R] [--exact_body] [--quick]
        [--json=PATH]

Issue #13. For each model of p2pl_jax.models (smallest first; `make_model(name,
width_multiplier=w)`, 28x28x1 inputs for mlp / cnn / lenet_gn, 32x32x3 for resnet20 / resnet18
/ vgg11; synthetic uniform float32 images, random labels: the time does not depend on them):

  round     one round of the real simulator: `simulation.Simulator` with N devices of S samples
            each, a complete graph, algorithm p2pl (data-size weights: on equal sizes one global
            average), E = 1, batch B, device_block 0 (the local phase of all N devices under
            one jax.vmap, lax.scan over the ceil(S / B) steps), one padded scan
            (local_buckets 1), sync "none". Compiled as `Simulator.compile` does
            (jax.jit(sim.round_fn, donate_argnums=0).lower(...).compile()), so that its XLA cost
            and memory analyses can be read; then run as `Simulator.step` runs it.
  single    (a) the same model with one set of parameters, the same optimizer (optax.sgd with
            momentum, local_update.make_optimizer) for the same ceil(S / B) steps over batches
            of N x B examples (from device 0's initial parameters; a fresh shuffle each round,
            lax.scan over steps, jitted, state donated): the same examples per round as the
            round's local phase.
            round / single is what vmapping N small models costs against one big batch (it
            includes the round's consensus, a global average of N models: small).
  floor     (b) the round's roofline floor: max(FLOPs / matmul throughput, bytes / bandwidth).
            Throughput: a float32 matmul (2048^2 on CPU, 8192^2 on an accelerator; 4 products
            chained in one jitted call), at the default matmul precision, as the model runs;
            bandwidth: `common.copy_bandwidth`; both measured in this run, each the fastest of
            5 calls (a floor wants the machine's peak; on a CPU shared with other jobs the
            median call is slowed by them, and the floor with it).

Where the FLOPs and bytes come from. `compiled.cost_analysis()` (a dict, or a list of one dict
per program in some jax versions: both are read) counts the body of a while loop -- every
lax.scan -- once, not once per iteration (HloCostAnalysis has no trip counts): with jax 0.10 on
CPU a scan of 10 chained 256 x 256 matmuls reports the FLOPs of one, and the round's raw count
is the same for 2, 16 or 32 local steps. The raw count is "one local step of every device +
everything outside the scan" (shuffles, consensus, finite check). When (i) a probe in the same
run (`loops_counted_once`: a scan of 16 matmuls against one) says this XLA counts a loop body
once and (ii) the compiled round still has a while loop of `steps` trips (`known_trip_count` in
its HLO; XLA may unroll a short loop, whose count is then complete), the round's FLOPs and bytes
are taken as steps x raw: the body multiplied by the trip count, with the part outside the
scan counted steps times instead of once. `--exact_body` compiles the body alone
(`vmapped_step`: the simulator's own local update for one step, vmapped over the N devices)
and takes round + (steps - 1) x body instead, at the price of a second compile per model. The
two differ little: with N = 8, B = 8, 2 steps on CPU, the part outside the scan is <= 0.5 % of
the raw FLOPs (resnet20 0.04 %, vgg11 0.5 %, resnet18 0.15 %) and <= 18 % of the raw bytes
(vgg11; the consensus and the finite check read the N-model stack a few times), so steps x raw
overstates the bytes by at most 10 % there, and the floor with them (the ratio to the floor is
then optimistic by as much). Otherwise the cost is taken as counted. `loop_corrected` in the
JSON says which. If the compiled program's FLOPs are below half of the lowered (unoptimised)
program's -- a backend that does not count its library calls -- the lowered FLOPs are used
(`flops_source`). The random-number generator's small loops (threefry, 5 trips) stay counted
once either way: a few kFLOP. The count is checked against the MLP's analytic one in every run
that includes the mlp: per example, 2 FLOPs per weight forward, 2 for the weight
gradient and 2 for the input gradient of every layer but the first (JAX does not compute the
input's gradient): 6 P - 2 P_1 per example, vs the 6 P of the rule of thumb (P_1 is the first
layer's weights); "flop_check" in the JSON and a printed line, ratio XLA / analytic.
Bytes are XLA's "bytes accessed" of the fused program (every fusion's operands and results,
no cache): on CPU a small model's working set stays in cache across the scan, so the memory
bound can be beaten (ratio < 1), as in round_time.py.

Peak memory is the compiled round's argument + output + temp bytes (memory_analysis; its
donated, aliased part is memory_analysis.alias in the JSON), per model; the process peak
(`common.peak_memory`: device peak_bytes_in_use, else host max RSS, of the whole run so far)
is in the JSON too. Times are medians over `--repeats` rounds after one warm-up, compile
times apart (the table's is the round's; the body's and single's are in the JSON).

Defaults (N = 8, B = 8, S = 16: 2 steps, w = 0.25, 2 repeats) keep the CPU run to a few
minutes; on CPU the default models leave out resnet18 (one slim round of it takes ~40 s on a
2-core CPU, where the conv models run at ~1 GFLOP/s: XLA:CPU convolutions are several times
slower inside a while loop -- every lax.scan -- than outside one, slim ones are slow anyway, and
grouped ones under vmap slower still; docs/models_benchmark_2026-12-01.txt), on an
accelerator they are all six.
The JSON is rewritten after every model, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import math
import re
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from benchmarks.common import MiB
from p2pl_jax import models as models_lib
from p2pl_jax import simulation
from p2pl_jax.local_update import make_local_update, make_optimizer

MNIST_SHAPE, CIFAR_SHAPE = (28, 28, 1), (32, 32, 3)
INPUT_SHAPE = {"mlp": MNIST_SHAPE, "cnn": MNIST_SHAPE, "lenet_gn": MNIST_SHAPE,
               "resnet20": CIFAR_SHAPE, "resnet18": CIFAR_SHAPE, "vgg11": CIFAR_SHAPE}
DEFAULT_MODELS = ("mlp", "lenet_gn", "cnn", "resnet20", "vgg11", "resnet18")   # smallest first
CPU_MODELS = DEFAULT_MODELS[:-1]   # resnet18 only when asked for on CPU (module docstring)


# ----------------------------------------------------------------------------- probes, costs


def matmul_throughput(size: int, repeats: int = 5, passes: int = 4) -> dict[str, float]:
    """Measured float32 matmul throughput: `passes` chained size x size products in one jitted
    fori_loop (a <- (a @ b) * s) over `repeats` calls after a warm-up; FLOP/s of the median
    call (`flops_per_s`) and of the fastest (`best_flops_per_s`, the peak the floor uses)."""
    b = jnp.eye(size, dtype=jnp.float32) + 1e-3
    scale = jnp.float32(1.0 / (1.0 + 1e-3 * size))
    run = jax.jit(lambda a: jax.lax.fori_loop(0, passes, lambda i, a: (a @ b) * scale, a))
    a = jnp.ones((size, size), jnp.float32)
    jax.block_until_ready(run(a))
    times = [common.timed(partial(run, a))[1] for _ in range(repeats)]
    t = common.median(times)
    flops = 2.0 * size ** 3 * passes
    return {"size": size, "passes": passes, "seconds": t, "flops_per_s": flops / t,
            "best_flops_per_s": flops / min(times), "spread": common.spread(times)}


def xla_cost(compiled: Any) -> dict[str, float]:
    """FLOPs and bytes accessed of a compiled (or lowered) program (cost_analysis: a dict, or a
    list of one dict per program in some jax versions, summed; zeros when there is none)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without it
        ca = None
    parts = ca if isinstance(ca, (list, tuple)) else [ca]
    parts = [p for p in parts if p]
    return {"flops": float(sum(p.get("flops", 0.0) for p in parts)),
            "bytes": float(sum(p.get("bytes accessed", 0.0) for p in parts))}


def xla_memory(compiled: Any) -> dict[str, float]:
    """argument, output, temp and alias bytes of a compiled program (memory_analysis), with
    total = argument + output + temp (NaN where the backend gives none)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without it
        m = None
    if m is None:
        return {"total_bytes": float("nan")}
    out = {k: float(getattr(m, f"{k}_size_in_bytes", 0)) for k in
           ("argument", "output", "temp", "alias")}
    out["total_bytes"] = out["argument"] + out["output"] + out["temp"]
    return out


def loops_counted_once(length: int = 16, size: int = 64) -> bool:
    """Whether this XLA's cost analysis counts a while loop's body once, not `length` times:
    a lax.scan of `length` chained size x size matmuls against one (milliseconds)."""
    m = jnp.ones((size, size), jnp.float32)
    one = xla_cost(jax.jit(lambda a: a @ m).lower(m).compile())["flops"]
    scan = jax.jit(lambda a: jax.lax.scan(lambda c, _: (c @ m, None), a, None,
                                          length=length)[0])
    return xla_cost(scan.lower(m).compile())["flops"] < 0.5 * length * one


def trip_counts(compiled: Any) -> set[int]:
    """The known trip counts of the while loops in a compiled program's HLO (empty when the
    text or the annotation is missing)."""
    try:
        text = compiled.as_text() or ""
    except Exception:  # noqa: BLE001 - backends without HLO text
        return set()
    return {int(v) for v in re.findall(r'known_trip_count"?\s*:\s*\{\s*"n"\s*:\s*"(\d+)"',
                                        text)}


def loop_corrected(round_cost: dict[str, float], body_cost: dict[str, float] | None,
                   steps: int, once: bool, loops: set[int]) -> tuple[dict[str, float], bool]:
    """The round's cost with its scan over `steps` counted `steps` times (module docstring).

    When XLA counts a loop body once (`once`, from `loops_counted_once`) and the compiled round
    still has a loop of `steps` trips (`loops`, from `trip_counts`; XLA may unroll a short one,
    whose count is then complete): round + (steps - 1) x body_cost, or steps x round when
    body_cost is None (the raw count standing in for the body). Else the round as counted.
    Returns (cost, whether it corrected).
    """
    if not (once and steps > 1 and steps in loops):
        return dict(round_cost), False
    body = round_cost if body_cost is None else body_cost
    return {k: round_cost[k] + (steps - 1) * body[k] for k in ("flops", "bytes")}, True


def mlp_analytic_flops(model: models_lib.MLP, input_shape: tuple[int, ...],
                       examples: int) -> dict[str, float]:
    """Matmul FLOPs of forward + backward over `examples`: 6 W - 2 W_1 per example (W weights,
    W_1 the first layer's: no gradient for the input), and the 6 P rule of thumb."""
    widths = (math.prod(input_shape), *model.hidden_sizes, model.num_classes)
    weights = [a * b for a, b in zip(widths[:-1], widths[1:])]
    params = sum(weights) + sum(widths[1:])
    return {"dense": float(examples * (6 * sum(weights) - 2 * weights[0])),
            "six_p": float(examples * 6 * params)}


# ----------------------------------------------------------------------------- the programs


def sgd_step(apply_fn: Callable, params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array,
             lr: jax.Array, momentum: jax.Array) -> tuple[Any, Any, jax.Array]:
    """One SGD-with-momentum step on a batch (mean cross-entropy); returns (params, opt_state,
    loss)."""
    def loss_fn(p):
        logits = apply_fn({"params": p}, xb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = make_optimizer(lr, momentum).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def vmapped_step(apply_fn: Callable, batch_size: int) -> Callable:
    """The round's scan body alone: one local step of every device, the simulator's own
    `make_local_update` with a one-step epoch (max_size = B), vmapped as the local phase is.

    Returns jitted f(params, opt_state, offsets, sizes, keys, lr, momentum, x, y) on
    [N, ...] params / opt_state, int32 [N] offsets / sizes, keys [N]; x [T, ...], y [T]
    shared. Its cost is one step's (batch gathers, loss, gradient, masked optimizer update)
    plus one B-sample shuffle per device.
    """
    one_step = make_local_update(apply_fn, max_size=batch_size, batch_size=batch_size,
                                 local_epochs=1)

    def run(params, opt_state, offsets, sizes, keys, lr, momentum, x, y):
        one = lambda p, o, off, sz, k: one_step(p, o, off, sz, k, lr, momentum, x, y)[:3]
        return jax.vmap(one)(params, opt_state, offsets, sizes, keys)

    return jax.jit(run)


def single_round(apply_fn: Callable, steps: int, batch: int) -> Callable:
    """The large-batch baseline: `steps` steps of one model over batches of `batch` rows of a
    fresh shuffle of x [T, ...] (wrapping around when steps x batch > T). Jitted, params and
    opt_state donated; returns (params, opt_state, mean loss)."""
    def run(params, opt_state, key, x, y, lr, momentum):
        order = jax.random.permutation(key, x.shape[0])
        order = jnp.resize(order, (steps, batch))

        def step(carry, rows):
            p, s, loss = sgd_step(apply_fn, *carry, x[rows], y[rows], lr, momentum)
            return (p, s), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, jnp.mean(losses)

    return jax.jit(run, donate_argnums=(0, 1))


@jax.jit
def first_model(params0: Any) -> tuple[Any, Any]:
    """(params0, a fresh optax.sgd momentum state for it), in one compiled call (flax and optax
    initialisers run op by op otherwise: seconds of small compiles)."""
    return params0, make_optimizer(0.0, 0.0).init(params0)


def synthetic_data(rows: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform float32 images [rows, *shape] in [0, 1) and int32 labels in 0..9."""
    r = np.random.default_rng(seed)
    return (r.random((rows, *shape), dtype=np.float32),
            r.integers(0, 10, rows).astype(np.int32))


# ----------------------------------------------------------------------------- one model


def time_round(compiled: Any, state: simulation.SimState, arrays: simulation.Arrays,
               hp: simulation.HParams, repeats: int) -> tuple[list[float], float]:
    """Seconds of `repeats` rounds of the compiled round after one warm-up (the state is
    donated each round), and the last round's training loss."""
    state, metrics = jax.block_until_ready(compiled(state, arrays, hp))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, arrays, hp))
        times.append(time.perf_counter() - t0)
    return times, float(metrics["train_loss"])


def time_single(compiled: Any, params: Any, opt_state: Any, key: jax.Array, data: tuple,
                repeats: int) -> tuple[list[float], float]:
    """As `time_round` for the large-batch model (a fresh shuffle key every round)."""
    params, opt_state, loss = jax.block_until_ready(compiled(params, opt_state, key, *data))
    times = []
    for i in range(repeats):
        k = jax.random.fold_in(key, i + 1)
        t0 = time.perf_counter()
        params, opt_state, loss = jax.block_until_ready(compiled(params, opt_state, k, *data))
        times.append(time.perf_counter() - t0)
    return times, float(loss)


def run_model(name: str, args: argparse.Namespace, throughput: float, bandwidth: float,
              once: bool) -> dict[str, Any]:
    """Round, single large-batch model and floor of one model (see the module docstring)."""
    n, b, s = args.devices, args.batch_size, args.samples_per_device
    steps = -(-s // b)
    shape = INPUT_SHAPE[name]
    model = models_lib.make_model(name, width_multiplier=args.width_multiplier)
    num_params = models_lib.param_count(model, shape)
    x, y = synthetic_data(n * s, shape, args.seed)
    parts = list(np.arange(n * s).reshape(n, s))
    adj = common.adjacency("complete", n, n - 1, args.seed)
    sim = simulation.Simulator(model=model, x=x, y=y, parts=parts, adj=adj, algorithm="p2pl",
                               sync_mode="none", local_epochs=1, batch_size=b, device_block=0,
                               local_buckets=1, diameter=0)
    hp = simulation.make_hparams(common.LEARNING_RATE, common.MOMENTUM)
    state = jax.block_until_ready(sim.init(args.seed))
    params0 = jax.jit(lambda p: jax.tree.map(lambda leaf: leaf[0], p))(state.params)

    # The round, compiled as Simulator.compile does, kept to read its analyses.
    t0 = time.perf_counter()
    lowered = jax.jit(sim.round_fn, donate_argnums=0).lower(state, sim.arrays, hp)
    compiled = lowered.compile()
    compile_round = time.perf_counter() - t0
    round_cost, memory = xla_cost(compiled), xla_memory(compiled)
    lowered_flops = xla_cost(lowered)["flops"]
    flops_source = "compiled"
    if round_cost["flops"] < 0.5 * lowered_flops:   # the backend did not count some calls
        round_cost["flops"], flops_source = lowered_flops, "lowered"
    loops = trip_counts(compiled)
    del lowered

    body_cost, compile_body = None, 0.0
    if args.exact_body:   # the scan body alone, for the exact loop correction
        t0 = time.perf_counter()
        body = vmapped_step(model.apply, b).lower(
            state.params, state.opt_state, sim.arrays.offsets, jnp.full((n,), b, jnp.int32),
            jax.random.split(jax.random.PRNGKey(0), n), hp.learning_rate, hp.momentum,
            sim.arrays.x, sim.arrays.y).compile()
        compile_body = time.perf_counter() - t0
        body_cost = xla_cost(body)
        del body
    cost, corrected = loop_corrected(round_cost, body_cost, steps, once, loops)
    round_times, round_loss = time_round(compiled, state, sim.arrays, hp, args.repeats)
    del state, compiled
    common.free()

    # (a) one model on batches of N x B, from device 0's initial parameters.
    params, opt_state = first_model(params0)
    del params0
    key = jax.random.PRNGKey(args.seed + 1)
    data = (sim.arrays.x, sim.arrays.y, hp.learning_rate, hp.momentum)
    t0 = time.perf_counter()
    single = single_round(model.apply, steps, n * b).lower(params, opt_state, key,
                                                           *data).compile()
    compile_single = time.perf_counter() - t0
    single_raw = xla_cost(single)
    single_times, single_loss = time_single(single, params, opt_state, key, data,
                                            args.repeats)
    backend = sim.backend
    del single, sim, data
    common.free()

    round_s, single_s = common.median(round_times), common.median(single_times)
    compute_s, memory_s = cost["flops"] / throughput, cost["bytes"] / bandwidth
    floor_s = max(compute_s, memory_s)
    peak, peak_what = common.peak_memory()
    out = {"model": name, "width_multiplier": args.width_multiplier, "input_shape": shape,
           "consensus_backend": backend,
           "params": num_params, "n": n, "batch_size": b, "samples_per_device": s,
           "steps": steps, "examples": n * steps * b,
           "round_s": round_s, "round_spread": common.spread(round_times),
           "single_s": single_s, "single_spread": common.spread(single_times),
           "ratio_to_single": round_s / single_s,
           "flops": cost["flops"], "bytes": cost["bytes"], "loop_corrected": corrected,
           "trip_counts": sorted(loops),
           "xla_round_flops_raw": round_cost["flops"], "xla_round_bytes_raw": round_cost["bytes"],
           "xla_round_flops_lowered": lowered_flops, "flops_source": flops_source,
           "xla_body_flops": body_cost["flops"] if body_cost else None,
           "xla_body_bytes": body_cost["bytes"] if body_cost else None,
           "xla_single_flops_raw": single_raw["flops"],
           "compute_floor_s": compute_s, "memory_floor_s": memory_s, "floor_s": floor_s,
           "bound": "compute" if compute_s >= memory_s else "memory",
           "ratio_to_floor": round_s / floor_s if floor_s > 0 else float("nan"),
           "gflops_per_s": cost["flops"] / round_s / 1e9,
           "single_gflops_per_s": cost["flops"] / single_s / 1e9,
           "compile_s": compile_round, "compile_body_s": compile_body,
           "compile_single_s": compile_single,
           "peak_bytes": memory["total_bytes"], "memory_analysis": memory,
           "process_peak_bytes": peak, "process_peak_what": peak_what,
           "round_loss": round_loss, "single_loss": single_loss}
    if name == "mlp":
        out["flop_check"] = {**mlp_analytic_flops(model, shape, n * steps * b),
                             "xla": cost["flops"]}
        out["flop_check"]["ratio"] = cost["flops"] / out["flop_check"]["dense"]
    return out


# ----------------------------------------------------------------------------- output, CLI


COLUMNS = ("model", "params", "N", "B", "steps", "round s", "single s", "round/single",
           "floor s", "round/floor", "GFLOP/s", "compile s", "peak MB")


def row_text(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["model"], r["error"]] + [""] * (len(COLUMNS) - 2)
    f = lambda v: f"{v:.3g}"
    return [r["model"], f"{r['params']:,}", str(r["n"]), str(r["batch_size"]), str(r["steps"]),
            f(r["round_s"]), f(r["single_s"]), f(r["ratio_to_single"]),
            f"{r['floor_s']:.3g} ({r['bound'][0]})", f(r["ratio_to_floor"]),
            f(r["gflops_per_s"]), f"{r['compile_s']:.3g}", f"{r['peak_bytes'] / MiB:.4g}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="",
                    help=f"comma separated, of {', '.join(models_lib.MODELS)}, or all; default: "
                         f"{','.join(CPU_MODELS)} on CPU, all on an accelerator")
    ap.add_argument("--devices", type=int, default=8, help="N, simulated devices")
    ap.add_argument("--batch_size", type=int, default=8, help="B, per device")
    ap.add_argument("--width_multiplier", type=float, default=0.25)
    ap.add_argument("--samples_per_device", type=int, default=16, help="S")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds (median)")
    ap.add_argument("--matmul_size", type=int, default=0,
                    help="throughput probe; 0: 2048 on CPU, 8192 on an accelerator")
    ap.add_argument("--copy_mib", type=int, default=0,
                    help="bandwidth probe; 0: 256 MiB on CPU, 1024 on an accelerator")
    ap.add_argument("--exact_body", action="store_true",
                    help="compile the scan body alone for the exact loop correction of the "
                         "FLOPs and bytes (a second compile per model; default: steps x raw)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: the mlp (784-50-50-10), N=2, B=512, S=1024, 3 repeats, "
                         "small probes")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.devices, args.batch_size = "mlp", 2, 512
        args.samples_per_device, args.width_multiplier, args.repeats = 1024, 0.25, 3
        args.matmul_size, args.copy_mib = 512, 32
    if not args.models:
        args.models = ",".join(CPU_MODELS if jax.default_backend() == "cpu" else DEFAULT_MODELS)
    if args.models == "all":
        args.models = ",".join(DEFAULT_MODELS)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in names:
        if m not in models_lib.MODELS:
            ap.error(f"--models: {m!r} is not one of {', '.join(models_lib.MODELS)}")
    args.models = ",".join(names)
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    info = common.machine_info()
    common.header("models: one vmapped round per model vs one large-batch model and its "
                  "roofline floor", info, args)
    on_cpu = jax.default_backend() == "cpu"
    size = args.matmul_size or (2048 if on_cpu else 8192)
    mm = matmul_throughput(size)
    nbytes = args.copy_mib * MiB if args.copy_mib else common.default_copy_bytes()
    bw = common.copy_bandwidth(nbytes)
    print(f"# matmul throughput: {mm['best_flops_per_s'] / 1e9:.4g} GFLOP/s fastest call, "
          f"{mm['flops_per_s'] / 1e9:.4g} median (float32 {size}^2, {mm['passes']} chained "
          f"products in one call, 5 calls: {mm['spread']} s)")
    print(f"# copy bandwidth: {bw['best_bytes_per_s'] / 1e9:.3g} GB/s fastest call, "
          f"{bw['bytes_per_s'] / 1e9:.3g} median ({bw['passes']} passes of x <- x + 1 on "
          f"{nbytes / MiB:.0f} MiB float32 in one call, 5 calls: {bw['spread']} s); the floor "
          f"uses the fastest calls")
    once = loops_counted_once()
    rule = "round + (steps - 1) x body" if args.exact_body else "steps x raw round"
    print(f"# XLA cost analysis counts a loop body {'once' if once else 'per iteration'} "
          f"(scan of 16 matmuls vs one): round FLOPs and bytes "
          f"{'taken as ' + rule if once else 'as counted'}")
    print(f"# N={args.devices} devices, B={args.batch_size}, S={args.samples_per_device} "
          f"samples/device, E=1, w={args.width_multiplier}, complete graph, device_block 0, "
          f"synthetic float32 images; single = one model, batch N x B, same steps; "
          f"repeats={args.repeats}")
    rows: list[dict[str, Any]] = []
    result = {"benchmark": "models", "machine": info, "args": vars(args), "matmul": mm,
              "copy_bandwidth": bw, "loops_counted_once": once, "rows": rows}
    for name in args.models.split(","):
        try:
            r = run_model(name, args, mm["best_flops_per_s"], bw["best_bytes_per_s"], once)
        except Exception as e:  # noqa: BLE001 - e.g. RESOURCE_EXHAUSTED: report, go on
            first = str(e).splitlines()[0][:120] if str(e) else ""
            r = {"model": name, "error": f"{type(e).__name__}: {first}"}
            traceback.print_exc(limit=2)
        rows.append(r)
        print("  " + " | ".join(f"{k}={v}" for k, v in zip(COLUMNS, row_text(r))), flush=True)
        if "error" not in r:
            cf = r["compute_floor_s"]
            print(f"#   {name}: {r['flops'] / 1e9:.4g} GFLOP, {r['bytes'] / 1e9:.4g} GB a round; "
                  f"compute floor {cf:.3g} s (round {r['round_s'] / cf:.3g}x, single "
                  f"{r['single_s'] / cf:.3g}x), memory floor {r['memory_floor_s']:.3g} s; "
                  f"compile single {r['compile_single_s']:.3g} s", flush=True)
        if "flop_check" in r:
            c = r["flop_check"]
            print(f"# flop check (mlp): XLA {c['xla'] / 1e9:.4g} GFLOP (loop-corrected: "
                  f"{r['loop_corrected']}; raw {r['xla_round_flops_raw'] / 1e9:.4g}) vs analytic "
                  f"{c['dense'] / 1e9:.4g} GFLOP (6P rule {c['six_p'] / 1e9:.4g}): "
                  f"ratio {c['ratio']:.3f}", flush=True)
        common.write_json(args.json, result)
        common.free()
    print()
    common.print_table(list(COLUMNS), [row_text(r) for r in rows])
    print("# round s: median whole round (local phase of all N devices + consensus); single s: "
          "one model, batch N x B, same steps; floor: max(XLA FLOPs / matmul throughput, XLA "
          "bytes / copy bandwidth), (c)ompute or (m)emory bound; GFLOP/s: round FLOPs / round s; "
          "compile s: the round; peak MB: the compiled round's argument + output + temp")
    common.write_json(args.json, result)
    return rows


if __name__ == "__main__":
    main()
