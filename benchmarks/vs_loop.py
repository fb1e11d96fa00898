"""The vectorized round against the same round written as a per-device Python loop.

    python -m benchmarks.vs_loop [--n=100] [--loop-devices=100] [--repeats=3] [--torch=auto]
        [--backend=auto] [--topology=random --degree=4] [--samples=600] [--json=FILE]

Three implementations of one P2PL round (every device: one local epoch of SGD with momentum on
its own data, B = 10; then consensus theta_n <- sum_m w_nm theta_m over its closed neighbourhood,
data-size weights; momentum kept):

  vectorized  Simulator.step: one jitted program for all devices (vmap / lax.map + lax.scan);
  jax loop    research-code style: per-device parameters as separate pytrees, a Python loop
              over devices and batches calling one jitted SGD-momentum step (optax.sgd) per
              device per batch, consensus a Python-level weighted sum of the neighbours' pytrees;
  torch loop  the same with one nn.Module and torch.optim.SGD(momentum) per device (on cuda
              when available), when torch is importable.

All three start from the Simulator's initial parameters and see the same batches: the order is
p2pl_jax.local_update.batch_order with the Simulator's keys (p2pl_jax.rng), computed before the
loops are timed. The data sits on the device for all three (the loops index it per batch).

Precision: every jax program here runs float32 matmuls at "highest" precision by default (true
fp32, as torch does); `--precision=default` lets a GPU use TF32 instead, and the check below then
fails (max |diff| ~0.3 at N = 100 on an H200) for a reason that is not a bug.

Why the tolerance holds only for the jax loop: when a ReLU pre-activation lands within rounding
(~1e-7) of 0, implementations that round differently take different gradients there; SGD with
momentum (lr 0.05, beta 0.9) then grows that jump ~1.2x per step. Measured torch vs jax on CPU,
N = 20: 6e-8 up to step 18, 3e-5 at step 19, 0.07 at step 60. XLA's per-device and vmapped
programs round (almost) identically, so the jax loop stays within ~1e-6; torch usually matches
for short local phases (--samples=100) and is reported, not required, to match.

Correctness: after the first round the jax loop's parameters must equal the vectorized round's
within 1e-4 (max absolute difference), printed as "match: True/False"; torch is checked the same
way ("torch match"). With --loop-devices M < N the loops run devices 0..M-1 only: their local
epochs are compared with the vectorized local phase, and their consensus (receivers 0..M-1, the
other devices' parameters taken from the vectorized local phase) with the vectorized round. Loop
round times are then extrapolated linearly (x N / M), and the output says so.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from p2pl_jax import data as data_lib
from p2pl_jax import rng
from p2pl_jax.local_update import batch_order

# torch may share the GPU with jax: do not let jax grab 75% of it when its backend starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

TOLERANCE = 1e-4


# ----------------------------------------------------------------------------- shared inputs


def batch_orders(sim, root: jax.Array, rounds: int, m: int, batch: int,
                 epochs: int) -> list[tuple[np.ndarray, ...]]:
    """Per round r < rounds: (idx, valid) numpy [M, E, steps, B] for devices 0..M-1, exactly as
    the Simulator's local phase draws them (local_update.batch_order, rng keys)."""
    n = sim.num_devices
    sizes = sim.arrays.sizes[:m]
    max_size = int(np.max(np.asarray(sim.arrays.sizes)))
    order = jax.jit(jax.vmap(lambda k, size: batch_order(k, size, max_size, batch)))
    out = []
    for r in range(rounds):
        keys = rng.local_keys(rng.round_key(root, jnp.asarray(r, jnp.int32)), n)[:m]
        per_epoch = [order(jax.vmap(lambda k, e=e: jax.random.fold_in(k, e))(keys), sizes)
                     for e in range(epochs)]
        out.append(tuple(np.stack([np.asarray(p[i]) for p in per_epoch], axis=1)
                         for i in range(2)))
    return out


def neighbours(sim, m: int) -> list[tuple[list[int], list[float]]]:
    """Receivers 0..M-1: (senders, weights) of the static graph, self first."""
    idx, valid = np.asarray(sim.arrays.idx), np.asarray(sim.arrays.valid)
    w = np.asarray(sim.arrays.weights)
    return [([int(j) for j in idx[n][valid[n]]], [float(v) for v in w[n][valid[n]]])
            for n in range(m)]


def device_slice(tree, n: int):
    return jax.tree.map(lambda leaf: leaf[n], tree)


def max_diff(a_list, b_tree_np) -> float:
    """max |a_n - b[n]| over devices n < len(a_list) and leaves."""
    worst = 0.0
    for n, a in enumerate(a_list):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(device_slice(b_tree_np, n))):
            worst = max(worst, float(np.max(np.abs(np.asarray(x) - y))))
    return worst


def worst_device(a_list, b_tree_np) -> str:
    """Where the largest difference sits: device, leaf, and how many entries differ > 1e-4."""
    best = (-1.0, "")
    for n, a in enumerate(a_list):
        paths = jax.tree_util.tree_leaves_with_path(device_slice(b_tree_np, n))
        for x, (path, y) in zip(jax.tree.leaves(a), paths):
            d = np.abs(np.asarray(x) - y)
            if d.max() > best[0]:
                best = (float(d.max()), f"device {n} {jax.tree_util.keystr(path)}: "
                        f"{int((d > TOLERANCE).sum())} of {d.size} entries > {TOLERANCE:g}")
    return best[1]


# ----------------------------------------------------------------------------- jax loop


class JaxLoop:
    """Per-device pytrees, one jitted optax SGD-momentum step per device per batch."""

    def __init__(self, model, init_np, m: int, x_dev, y_dev, nbrs, outside):
        self.tx = optax.sgd(common.LEARNING_RATE, momentum=common.MOMENTUM)
        tx = self.tx

        def loss_fn(p, xb, yb):
            logits = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        @jax.jit
        def sgd_step(p, o, x, y, rows):
            loss, g = jax.value_and_grad(loss_fn)(p, x[rows], y[rows])
            updates, o = tx.update(g, o, p)
            return optax.apply_updates(p, updates), o, loss

        self.sgd_step = sgd_step
        self.params = [jax.tree.map(jnp.asarray, device_slice(init_np, n)) for n in range(m)]
        self.opt = [tx.init(p) for p in self.params]
        self.x, self.y, self.nbrs, self.outside = x_dev, y_dev, nbrs, outside

    def params_np(self) -> list:
        return [jax.tree.map(np.asarray, p) for p in self.params]

    def round(self, order) -> list:
        """One round (local epochs, then consensus); returns the local (pre-consensus) params."""
        idx, valid = order
        for n in range(len(self.params)):
            p, o = self.params[n], self.opt[n]
            for e in range(idx.shape[1]):
                for s in range(idx.shape[2]):
                    rows = idx[n, e, s][valid[n, e, s]]
                    if rows.size:   # a device whose data is exhausted sits idle
                        p, o, _ = self.sgd_step(p, o, self.x[n], self.y[n], rows)
            self.params[n], self.opt[n] = p, o
        local = list(self.params)
        get = lambda j: local[j] if j < len(local) else self.outside[j]
        self.params = [
            jax.tree.map(lambda *leaves, ws=ws: sum(w * leaf for w, leaf in zip(ws, leaves)),
                         *[get(j) for j in js])
            for js, ws in self.nbrs]
        jax.block_until_ready(self.params)
        return local


# ----------------------------------------------------------------------------- torch loop


class TorchLoop:
    """One nn.Module and torch.optim.SGD(momentum) per device."""

    def __init__(self, torch, device: str, hidden, init_np, m: int, x_np, y_np, nbrs,
                 outside_np):
        self.torch, self.device = torch, device
        nn = torch.nn
        widths = (784, *hidden, 10)
        self.models, self.opts = [], []
        for n in range(m):
            layers: list[Any] = [nn.Flatten()]
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(nn.Linear(a, b))
                if i < len(widths) - 2:
                    layers.append(nn.ReLU())
            model = nn.Sequential(*layers).to(device)
            with torch.no_grad():
                for p, v in zip(model.parameters(), self.flat(device_slice(init_np, n))):
                    p.copy_(v)
            self.models.append(model)
            self.opts.append(torch.optim.SGD(model.parameters(), lr=common.LEARNING_RATE,
                                             momentum=common.MOMENTUM))
        self.x = [torch.from_numpy(np.array(a, np.float32)).to(device) for a in x_np]
        self.y = [torch.from_numpy(np.asarray(a, np.int64)).to(device) for a in y_np]
        self.nbrs = nbrs
        self.outside = {j: self.flat(t) for j, t in outside_np.items()}

    def flat(self, params_np) -> list:
        """Flax {Dense_i: {kernel [in, out], bias}} -> torch [weight [out, in], bias, ...]."""
        out = []
        for i in range(len(params_np)):
            layer = params_np[f"Dense_{i}"]
            out += [np.asarray(layer["kernel"]).T, np.asarray(layer["bias"])]
        return [self.torch.from_numpy(np.array(a, np.float32)).to(self.device) for a in out]

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def round(self, order) -> list:
        """One round; returns the local (pre-consensus) params as flax-layout numpy trees."""
        torch, functional = self.torch, self.torch.nn.functional
        idx, valid = order
        for n, (model, opt) in enumerate(zip(self.models, self.opts)):
            for e in range(idx.shape[1]):
                for s in range(idx.shape[2]):
                    rows = idx[n, e, s][valid[n, e, s]]
                    if not rows.size:
                        continue
                    rows_t = torch.from_numpy(rows.astype(np.int64)).to(self.device)
                    loss = functional.cross_entropy(model(self.x[n][rows_t]), self.y[n][rows_t])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            local = [[p.detach().clone() for p in model.parameters()] for model in self.models]
            get = lambda j: local[j] if j < len(local) else self.outside[j]
            for model, (js, ws) in zip(self.models, self.nbrs):
                sources = [get(j) for j in js]
                for i, p in enumerate(model.parameters()):
                    p.copy_(sum(w * src[i] for w, src in zip(ws, sources)))
        self.sync()
        return local

    def as_flax(self, tensors) -> dict:
        layers = {}
        for i in range(len(tensors) // 2):
            # copies: on CPU .numpy() is a view of parameters that later rounds overwrite
            layers[f"Dense_{i}"] = {"kernel": tensors[2 * i].detach().cpu().numpy().T.copy(),
                                    "bias": tensors[2 * i + 1].detach().cpu().numpy().copy()}
        return layers

    def params_flax(self) -> list[dict]:
        return [self.as_flax(list(m.parameters())) for m in self.models]


# ----------------------------------------------------------------------------- driver


def time_loop(loop, orders, repeats: int, snapshot) -> tuple[list, Any, float, list[float]]:
    """Round 0 (its time includes compilation / warm-up), then `repeats` timed rounds.

    Returns (round 0 local params, snapshot() right after round 0, round 0 seconds, times).
    """
    t0 = time.perf_counter()
    local = loop.round(orders[0])
    first = time.perf_counter() - t0
    after = snapshot()
    times = []
    for r in range(1, repeats + 1):
        t0 = time.perf_counter()
        loop.round(orders[r])
        times.append(time.perf_counter() - t0)
    return local, after, first, times


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="devices")
    ap.add_argument("--loop-devices", type=int, default=100,
                    help="devices the loops run (the rest is extrapolated linearly)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per implementation")
    ap.add_argument("--samples", type=int, default=600, help="samples per device")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--hidden", default="200,200", help="MLP hidden widths")
    ap.add_argument("--backend", default="auto", choices=("auto", "dense", "gather"),
                    help="consensus backend of the vectorized round")
    ap.add_argument("--topology", default="random",
                    help="random (degree <= --degree), complete, or a p2pl_jax.graphs name")
    ap.add_argument("--degree", type=int, default=4)
    ap.add_argument("--device-block", type=int, default=-1,
                    help="-1: the runner's auto rule (2 on CPU, 0 on GPU/TPU)")
    ap.add_argument("--torch", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--torch-device", default="auto", help="auto: cuda when available, else cpu")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch.set_num_threads on CPU (0: torch's default; with B = 10 more "
                         "threads only add spin-waiting: 10x slower on a busy 2-core machine)")
    ap.add_argument("--data", choices=("auto", "mnist", "random"), default="auto")
    ap.add_argument("--precision", choices=("highest", "default"), default="highest",
                    help="jax float32 matmul precision for all three jax programs (highest = "
                         "true fp32, as torch's default; 'default' lets a GPU use TF32, and "
                         "then the loops drift from the vectorized round beyond 1e-4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: N=4 on a cycle, MLP 784-16-10, 20 samples, 1 repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.loop_devices, args.samples, args.repeats = 4, 4, 20, 1
        args.hidden, args.degree = "16", 2   # a 4-cycle: not complete, so the dense backend
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.precision != "default":
        jax.config.update("jax_default_matmul_precision", args.precision)
    torch = None if args.torch == "off" else common.optional_torch()
    if args.torch == "on" and torch is None:
        raise SystemExit("--torch=on but torch is not importable")
    info = common.machine_info(with_torch=args.torch != "off")
    common.header("vs_loop: vectorized round vs per-device Python loops", info, args)
    hidden = common.parse_hidden(args.hidden)
    s = common.build(args.n, samples=args.samples, batch_size=args.batch_size,
                     local_epochs=args.local_epochs, backend=args.backend,
                     topology=args.topology, degree=args.degree,
                     device_block=args.device_block, data=args.data, seed=args.seed,
                     hidden_sizes=hidden)
    sim, n = s.sim, args.n
    m = max(1, min(args.loop_devices, n))
    print(f"# N={n}, MLP {common.mlp_name(hidden)} (P={s.num_params}), {s.steps} steps/device "
          f"of B={s.batch_size}, topology {s.topology} (K={s.max_neighbours}), vectorized "
          f"backend {sim.backend}, device_block={sim.spec.device_block}; data: {s.data_source}")
    tf32 = torch is not None and torch.backends.cuda.matmul.allow_tf32
    print(f"# jax matmul precision: {args.precision}; torch allow_tf32: {tf32}")
    hp = common.hparams()
    state = jax.block_until_ready(sim.init(args.seed))
    init_np = jax.tree.map(np.asarray, state.params)
    orders = batch_orders(sim, state.rng, args.repeats + 1, m, s.batch_size, s.local_epochs)
    nbrs = neighbours(sim, m)

    # Vectorized: round 0 with the local params (for the check), then the timed rounds.
    compile_s = sim.compile(state, hp)
    state, _, local_params = sim.step(state, hp, return_local=True)
    vec_local = jax.tree.map(np.asarray, local_params)
    vec_round = jax.tree.map(np.asarray, state.params)
    del local_params
    state, _ = jax.block_until_ready(sim.step(state, hp))   # warm-up
    vec_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(sim.step(state, hp))
        vec_times.append(time.perf_counter() - t0)
    vec_s = common.median(vec_times)
    del state
    common.free()

    outside_ids = sorted({j for js, _ in nbrs for j in js if j >= m})
    offsets, sizes = np.asarray(sim.arrays.offsets), np.asarray(sim.arrays.sizes)
    # the loops train on the images as the model sees them (the simulator decodes per batch)
    x_dev = [data_lib.decode(np.asarray(sim.arrays.x[offsets[i]:offsets[i] + sizes[i]]),
                             sim.normalisation) for i in range(m)]
    y_dev = [sim.arrays.y[offsets[i]:offsets[i] + sizes[i]] for i in range(m)]
    scale = n / m
    note = "" if m == n else f" (timed {m} of {n} devices x all steps, x{scale:.3g})"
    results: dict[str, Any] = {}

    jloop = JaxLoop(sim.model, init_np, m, x_dev, y_dev, nbrs,
                    {j: jax.tree.map(jnp.asarray, device_slice(vec_local, j))
                     for j in outside_ids})
    jlocal0, jround0, jfirst, jtimes = time_loop(jloop, orders, args.repeats, jloop.params_np)
    d_local = max_diff(jlocal0, vec_local)
    d_round = max_diff(jround0, vec_round)
    match = bool(d_local <= TOLERANCE and d_round <= TOLERANCE)
    results["jax_loop"] = {"round_s": common.median(jtimes) * scale,
                           "measured_s": common.median(jtimes),
                           "spread": common.spread([t * scale for t in jtimes]),
                           "first_round_s": jfirst, "devices_timed": m, "note": note,
                           "max_diff_local": d_local, "max_diff_round": d_round,
                           "worst_local": worst_device(jlocal0, vec_local)}
    del jloop
    common.free()

    tmatch = None
    if torch is not None:
        dev = args.torch_device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev == "cpu" and args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        print(f"# torch loop on {dev}, {torch.get_num_threads()} CPU thread(s)")
        tloop = TorchLoop(torch, dev, hidden, init_np, m,
                          [np.asarray(a) for a in x_dev], [np.asarray(a) for a in y_dev], nbrs,
                          {j: device_slice(vec_local, j) for j in outside_ids})
        tlocal0, tround0, tfirst, ttimes = time_loop(tloop, orders, args.repeats,
                                                     tloop.params_flax)
        tlocal0 = [tloop.as_flax(t) for t in tlocal0]
        td_local = max_diff(tlocal0, vec_local)
        td_round = max_diff(tround0, vec_round)
        tmatch = bool(td_local <= TOLERANCE and td_round <= TOLERANCE)
        results["torch_loop"] = {"round_s": common.median(ttimes) * scale,
                                 "measured_s": common.median(ttimes),
                                 "spread": common.spread([t * scale for t in ttimes]),
                                 "first_round_s": tfirst,
                                 "devices_timed": m, "device": dev,
                                 "note": note + f" (torch on {dev})",
                                 "max_diff_local": td_local, "max_diff_round": td_round,
                                 "worst_local": worst_device(tlocal0, vec_local)}
        del tloop

    steps = n * s.steps
    print()
    table = [["vectorized", f"{vec_s:.4g}", common.spread(vec_times),
              f"{compile_s:.3g} (compile)", "1", f"{steps / vec_s:.4g}", ""]]
    for name, r in results.items():
        r["ratio"] = r["round_s"] / vec_s
        table.append([name.replace("_", " "), f"{r['round_s']:.4g}", r["spread"],
                      f"{r['first_round_s']:.4g}", f"{r['ratio']:.3g}",
                      f"{steps / r['round_s']:.4g}", r["note"].strip()])
    common.print_table(["implementation", "round s", "(min-max)", "first s", "x vectorized",
                        "dev-steps/s", "note"], table)
    print(f"# loops' 'first s' is round 0 (includes jit compile / warm-up); 'round s' median of "
          f"{args.repeats}; vectorized compile timed apart")
    print(f"jax loop vs vectorized after round 0: max|diff| local {d_local:.3g}, "
          f"after consensus {d_round:.3g} (tolerance {TOLERANCE:g})")
    if not match:
        print(f"# largest local difference: {results['jax_loop']['worst_local']}")
    print(f"match: {match}")
    if tmatch is not None:
        tr = results["torch_loop"]
        print(f"torch loop vs vectorized after round 0: max|diff| local "
              f"{tr['max_diff_local']:.3g}, after consensus {tr['max_diff_round']:.3g}")
        if not tmatch:
            print(f"# largest local difference: {tr['worst_local']}")
        print(f"torch match: {tmatch}")
    elif args.torch != "off":
        print("# torch loop: skipped (torch not importable)")
    out = {"benchmark": "vs_loop", "machine": info, "args": vars(args), "n": n,
           "vectorized_s": vec_s, "vectorized_spread": common.spread(vec_times),
           "vectorized_compile_s": compile_s, "vectorized_backend": sim.backend,
           "match": match, "torch_match": tmatch, "jax_loop": results.get("jax_loop"),
           "torch_loop": results.get("torch_loop")}
    common.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
