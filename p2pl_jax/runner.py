"""The top-level runner: the only code that reads a config.

`run(config, workdir)` loads data, partitions it, builds the graph and the simulator, runs the
rounds and writes
  workdir/config.json      the resolved config
  workdir/partition.json   per-device sample counts and label histograms
  workdir/metrics.jsonl    one JSON object per evaluated round
  workdir/summary.json     rounds_to_target, final accuracies, timings, versions
"""

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from p2pl_jax import (
    algorithms,
    buckets,
    checkpoint,
    compression,
    distributed,
    graphs,
    loop,
    memory,
    mixing,
    network,
    partition,
    recorder,
    schedules,
    sharding,
    simulation,
    stages,
    sync,
    wireless,
    writers,
)
from p2pl_jax import data as data_lib
from p2pl_jax.consensus import BACKENDS
from p2pl_jax.errors import ConfigError, check_choice, check_range
from p2pl_jax.local_update import COMPUTE_DTYPES
from p2pl_jax.metrics import make_evaluator
from p2pl_jax.models import MODELS, make_model
from p2pl_jax.recorder import DivergenceError  # noqa: F401 - experiments.train imports it here

CHECKPOINT_DIR = "checkpoints"
TOPOLOGIES = graphs.TOPOLOGIES + ("radio",)   # radio: wireless.radio_graph


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks every config field this runner reads; raises ConfigError naming the field."""
    check_choice("dataset", c.dataset, data_lib.DATASETS)
    check_choice("partition", c.partition, partition.SCHEMES)
    check_choice("model", c.model, MODELS)
    check_range("width_multiplier", c.width_multiplier, 0.0, float("inf"), lo_open=True,
                hi_open=True)
    check_choice("topology", c.topology, TOPOLOGIES)
    check_choice("mixing", c.mixing, ("auto",) + mixing.SCHEMES)
    check_choice("consensus_backend", c.consensus_backend, BACKENDS)
    check_choice("sync", c.sync, sync.SYNC_MODES)
    check_choice("link_failure_mode", c.link_failure_mode, network.LINK_MODES)
    check_choice("algorithm", c.algorithm, algorithms.ALGORITHMS)
    check_range("local_steps", c.local_steps, 0, integer=True)
    check_choice("compressor", c.compressor, compression.COMPRESSORS)
    check_range("compress_ratio", c.compress_ratio, 0.0, 1.0, lo_open=True)
    check_range("qsgd_bits", c.qsgd_bits, 1, 16, integer=True)
    check_range("consensus_step", c.consensus_step, 0.0, 1.0, lo_open=True)
    check_choice("momentum_after_consensus", c.momentum_after_consensus,
                 simulation.MOMENTUM_AFTER_CONSENSUS)
    check_range("num_devices", c.num_devices, 1, integer=True)
    check_range("rounds", c.rounds, 0, integer=True)
    check_range("local_epochs", c.local_epochs, 1, integer=True)
    check_range("batch_size", c.batch_size, 1, integer=True)
    check_range("learning_rate", c.learning_rate, 0.0, lo_open=True)
    check_range("momentum", c.momentum, 0.0, 1.0, hi_open=True)
    check_range("link_failure_prob", c.link_failure_prob, 0.0, 1.0)
    check_range("link_burst_prob", c.link_burst_prob, 0.0, 1.0)
    check_range("link_burst_failure_prob", c.link_burst_failure_prob, 0.0, 1.0)
    check_range("dropout_prob", c.dropout_prob, 0.0, 1.0)
    check_range("delay_rounds", c.delay_rounds, 0, integer=True)
    check_choice("delay_mode", c.delay_mode, network.DELAY_MODES)
    if c.time_varying:
        check_choice("topology (with time_varying=True)", c.topology, network.TIME_VARYING)
    if c.directed and c.topology != "edgelist":
        raise ConfigError(f"directed=True reads a directed edge list; allowed: "
                          f"topology=edgelist (or topology=exponential, always directed), "
                          f"not topology={c.topology}")
    compressing = [a for a in algorithms.ALGORITHMS if algorithms.get(a).compresses]
    if not algorithms.get(c.algorithm).compresses and c.compressor != "none":
        raise ConfigError(f"compressor={c.compressor} does not apply to algorithm="
                          f"{c.algorithm}; allowed: algorithm={', '.join(compressing)}, or "
                          f"compressor=none")
    algorithms.check_config(c)   # what the algorithm accepts: mixing, faults, graph, momentum
    check_range("eval_every", c.eval_every, 1, integer=True)
    check_range("divergence_loss_factor", c.divergence_loss_factor, 0.0)
    check_range("target_accuracy", c.target_accuracy, 0.0, 1.0)
    check_range("target_hold_rounds", c.target_hold_rounds, 1, integer=True)
    check_range("eval_device_chunk", c.eval_device_chunk, 1, integer=True)
    check_range("eval_example_chunk", c.eval_example_chunk, 1, integer=True)
    check_range("memory_limit_gb", c.memory_limit_gb, float("-inf"), float("inf"),
                lo_open=True, hi_open=True)
    check_range("seed", c.seed, 0, integer=True)
    check_range("device_block", c.device_block, -1, integer=True)
    lb = c.local_buckets
    if isinstance(lb, bool) or not isinstance(lb, int) or not (lb == -1 or lb >= 1):
        raise ConfigError(f"local_buckets={c.local_buckets!r} must be -1 (auto) or an integer "
                          ">= 1 (1 = one padded scan)")
    check_range("checkpoint_every", c.checkpoint_every, 0, integer=True)
    for field in ("progress", "tensorboard", "stop_at_target", "eval_after_local",
                  "eval_backfill", "allow_disconnected", "directed"):
        if not isinstance(c[field], bool):
            raise ConfigError(f"{field}={c[field]!r} must be a boolean (True or False)")
    if c.samples_per_device != -1:
        check_range("samples_per_device", c.samples_per_device, 1, integer=True)
    if not all(isinstance(h, int) and h >= 1 for h in c.hidden_sizes):
        raise ConfigError(f"hidden_sizes={tuple(c.hidden_sizes)!r} must be positive integers, "
                          "e.g. (200, 200)")
    _validate_training(c)
    _validate_skew_and_graph(c)
    _validate_channel(c)
    distributed.validate(c)


_RADIO_RANGES = {   # field: (lo, lo_open); every value finite
    "area_m": (0.0, True), "bandwidth_hz": (0.0, True), "path_loss_exponent": (0.0, True),
    "shadowing_std_db": (0.0, False), "round_deadline_s": (0.0, False),
    "rx_power_w": (0.0, False), "cpu_freq_hz": (0.0, True),
    "cpu_cycles_per_sample": (0.0, False), "cpu_kappa": (0.0, False),
    "tx_power_dbm": (None, False), "bs_tx_power_dbm": (None, False),
    "noise_density_dbm_hz": (None, False), "path_loss_ref_db": (None, False),
    "snr_threshold_db": (None, False), "radio_margin_db": (None, False)}


def _validate_channel(c: ml_collections.ConfigDict) -> None:
    """The channel's fields, and what it cannot be combined with."""
    check_choice("channel", c.channel, wireless.CHANNELS)
    check_choice("loss_correction", c.loss_correction, wireless.CORRECTIONS)
    check_choice("transmission", c.transmission, wireless.TRANSMISSIONS)
    check_choice("fading", c.fading, wireless.FADINGS)
    inf = float("inf")
    for field, (lo, lo_open) in _RADIO_RANGES.items():
        check_range(field, c[field], lo, inf, lo_open=lo_open, hi_open=True)
    if c.channel == "ideal":
        if c.loss_correction != "renormalize":
            raise ConfigError(f"loss_correction={c.loss_correction} divides by the success "
                              "probability of a wireless link; allowed: channel=wireless, or "
                              "loss_correction=renormalize")
        return
    algo = algorithms.get(c.algorithm)
    if algo.weights == "none":
        raise ConfigError(f"channel=wireless carries messages, and algorithm={c.algorithm} "
                          "sends none; allowed: a communicating algorithm, or channel=ideal")
    for field in ("link_failure_prob", "link_burst_prob"):
        if c[field] > 0:
            raise ConfigError(f"{field}={c[field]} draws Bernoulli link failures, and "
                              f"channel=wireless decides from the link budget which messages "
                              f"arrive; allowed: {field}=0.0 with channel=wireless, or "
                              "channel=ideal")
    if c.time_varying:
        raise ConfigError("time_varying=True redraws the positions every round (no mobility "
                          "model), and channel=wireless keeps them and their shadowing for the "
                          "run; allowed: time_varying=False with channel=wireless")
    if c.loss_correction == "inverse_probability" and not algo.uses_graph:
        raise ConfigError(f"loss_correction=inverse_probability re-weights the messages of a "
                          f"graph, and algorithm={c.algorithm} has none; allowed: "
                          "loss_correction=renormalize")
    if c.delay_rounds > 0 and c.round_deadline_s <= 0:
        raise ConfigError(f"delay_rounds={c.delay_rounds} with channel=wireless delays a message "
                          "by its air time in round deadlines; allowed: round_deadline_s > 0, or "
                          "delay_rounds=0")
    if c.delay_rounds > 0 and c.delay_mode != "fixed":
        raise ConfigError(f"delay_mode={c.delay_mode} draws the delays, and channel=wireless "
                          "takes them from the air time; allowed: delay_mode=fixed")


def _validate_training(c: ml_collections.ConfigDict) -> None:
    """The local step's options and the learning-rate schedule."""
    for field in ("nesterov", "augment"):
        if not isinstance(c[field], bool):
            raise ConfigError(f"{field}={c[field]!r} must be a boolean (True or False)")
    check_range("weight_decay", c.weight_decay, 0.0)
    check_choice("compute_dtype", c.compute_dtype, tuple(COMPUTE_DTYPES))
    check_choice("lr_schedule", c.lr_schedule, schedules.SCHEDULES)
    check_range("lr_warmup_rounds", c.lr_warmup_rounds, 0, integer=True)
    check_range("lr_step_gamma", c.lr_step_gamma, 0.0, 1.0, lo_open=True)
    if c.nesterov and c.momentum == 0:
        raise ConfigError("nesterov=True needs momentum > 0 (Nesterov momentum with beta = 0 "
                          "is plain SGD); allowed: momentum in (0, 1), or nesterov=False")
    steps = tuple(c.lr_step_rounds)
    if c.lr_schedule != "step" and steps:
        raise ConfigError(f"lr_step_rounds={steps!r} applies to lr_schedule=step only, not "
                          f"lr_schedule={c.lr_schedule}; allowed: lr_step_rounds=()")
    ok = all(isinstance(m, int) and not isinstance(m, bool) for m in steps)
    if not ok or list(steps) != sorted(set(steps)) or any(
            not c.lr_warmup_rounds <= m < max(c.rounds, 1) for m in steps):
        raise ConfigError(f"lr_step_rounds={steps!r} must be increasing integers in "
                          f"[lr_warmup_rounds, rounds) = [{c.lr_warmup_rounds}, {c.rounds}), "
                          "e.g. (50, 75) for rounds=100; () = rounds / 2 and 3 rounds / 4")
    if c.lr_schedule != "constant" and c.lr_warmup_rounds >= c.rounds > 0:
        raise ConfigError(f"lr_warmup_rounds={c.lr_warmup_rounds} leaves no round of "
                          f"lr_schedule={c.lr_schedule} within rounds={c.rounds}; allowed: "
                          f"lr_warmup_rounds < rounds")


def lr_schedule(c: ml_collections.ConfigDict) -> schedules.LRSchedule:
    """The config's learning-rate schedule over its `rounds`."""
    return schedules.LRSchedule(kind=c.lr_schedule, rounds=max(int(c.rounds), 1),
                                warmup_rounds=int(c.lr_warmup_rounds),
                                step_rounds=tuple(int(m) for m in c.lr_step_rounds),
                                step_gamma=float(c.lr_step_gamma))


def _validate_skew_and_graph(c: ml_collections.ConfigDict) -> None:
    """skew_fractions, graph_resample, and data_size_mh's need for two-way links."""
    if not isinstance(c.graph_resample, bool):
        raise ConfigError(f"graph_resample={c.graph_resample!r} must be a boolean (True or "
                          "False)")
    random = graphs.RANDOM_TOPOLOGIES + ("radio",)
    if c.graph_resample and c.topology not in random:
        raise ConfigError(f"graph_resample=True redraws a random graph until it is connected; "
                          f"topology={c.topology} is not random; allowed: topology="
                          f"{', '.join(random)}, or graph_resample=False")
    if c.graph_resample and c.allow_disconnected:
        raise ConfigError("graph_resample=True draws until the graph is connected, "
                          "allow_disconnected=True keeps a disconnected one; allowed: one of "
                          "them")
    failures = c.link_failure_prob > 0 or c.link_burst_prob > 0 or c.channel == "wireless"
    one_way = ("directed=True" if c.directed else
               "topology=exponential" if c.topology in graphs.DIRECTED else
               "link_failure_mode=asymmetric" if failures and c.link_failure_mode == "asymmetric"
               else "")
    if c.mixing in mixing.NEEDS_UNDIRECTED and one_way:
        raise ConfigError(f"mixing={c.mixing} (Metropolis-Hastings towards the data shares) "
                          f"needs two-way links to be reversible, but {one_way} gives one-way "
                          f"links; allowed: an undirected graph with link_failure_mode="
                          f"symmetric, or mixing=data_size")
    if isinstance(c.skew_fractions, (list, tuple)) and len(c.skew_fractions) == 0:
        return
    partition.check_group_fractions(c.skew_fractions, c.num_devices)
    if c.partition != "skew":
        raise ConfigError(f"skew_fractions={tuple(c.skew_fractions)!r} gives the sizes of "
                          f"partition=skew, not partition={c.partition}; allowed: "
                          "partition=skew, or skew_fractions=()")
    if c.skew_top_fraction > 0:
        raise ConfigError(f"skew_fractions={tuple(c.skew_fractions)!r} and skew_top_fraction="
                          f"{c.skew_top_fraction} both give the sizes; allowed: one of them "
                          "(skew_top_fraction=0.0, or skew_fractions=())")


def resolve_device_block(device_block: int) -> int:
    """-1 (auto): blocks of 2 devices on CPU (measured fastest on 2 cores, see README),
    all devices vmapped at once (0) on GPU/TPU."""
    if device_block != -1:
        return device_block
    return 2 if jax.default_backend() == "cpu" else 0


def _partition(c, ds: data_lib.Dataset, num_devices: int) -> list[np.ndarray]:
    fractions = None
    groups = tuple(c.skew_fractions) if c.partition == "skew" and c.skew_fractions else None
    if c.partition == "skew" and c.skew_top_fraction > 0:
        check_range("skew_top_fraction", c.skew_top_fraction, 0.0, 1.0, hi_open=True)
        fractions = partition.one_device_fraction(num_devices, c.skew_top_fraction)
    return partition.partition(
        ds.y_train, num_devices, c.partition, np.random.default_rng(c.seed),
        samples_per_device=None if c.samples_per_device == -1 else c.samples_per_device,
        shards_per_device=c.shards_per_device, dirichlet_alpha=c.dirichlet_alpha,
        skew_sigma=c.skew_sigma, skew_fractions=fractions, skew_groups=groups,
        min_size=c.min_samples_per_device)


def _graph(c, num_devices: int):
    """The config's graph; graph.graph["seed"] is the seed it was drawn with (c.seed, or with
    graph_resample the first seed + 1000 k giving a connected graph, graphs.resampled_graph)."""
    kw = dict(radius=c.graph_radius, p=c.graph_p, k=c.graph_k, m=c.graph_m,
              degree=c.graph_degree, grid_rows=None if c.graph_rows == -1 else c.graph_rows,
              edgelist_path=c.edgelist_path or None, directed=c.directed)
    if c.topology == "radio":
        return _radio_graph(c, num_devices)
    if c.graph_resample:
        g, seed = graphs.resampled_graph(c.topology, num_devices, seed=c.seed, **kw)
    else:
        g, seed = graphs.make_graph(c.topology, num_devices, seed=c.seed,
                                    allow_disconnected=c.allow_disconnected, **kw), c.seed
    g.graph["seed"] = seed
    return g


def radio(c: ml_collections.ConfigDict) -> wireless.Radio:
    """The config's link budget."""
    return wireless.Radio(**{f.name: float(c[f.name])
                             for f in dataclasses.fields(wireless.Radio)})


def _radio_graph(c: ml_collections.ConfigDict, num_devices: int):
    """topology=radio: who hears whom (wireless.radio_graph), positions and shadowing drawn
    from the graph seed (with graph_resample the first seed + 1000 k whose graph is connected)."""
    import networkx as nx

    budget = radio(c)
    tries = graphs.MAX_RESAMPLES if c.graph_resample else 1

    def build(seed: int) -> nx.Graph:
        pos = wireless.positions(num_devices, budget.area_m, seed)
        _, shadow = wireless.radio_graph(pos, budget, seed)
        g = nx.Graph()
        g.add_nodes_from(range(num_devices))
        g.add_edges_from(shadow)
        g.graph.update(seed=seed, positions=pos, shadow=shadow)
        return g

    g, _, comps = graphs.first_connected(build, c.seed, tries)
    if comps == 1 or (c.allow_disconnected and not c.graph_resample):
        return g
    again = (f"for all {tries} graph seeds seed + {graphs.RESAMPLE_STRIDE} k"
             if c.graph_resample else "")
    reach = budget.range_m(budget.snr_threshold_db + budget.radio_margin_db)
    raise ConfigError(
        f"topology=radio with num_devices={num_devices} in area_m={budget.area_m} gave a "
        f"disconnected graph {again}({comps} components; the range without shadowing is "
        f"{reach:.0f} m at tx_power_dbm={budget.tx_power_dbm}). Try a higher tx_power_dbm, a "
        f"smaller area_m or radio_margin_db, graph_resample=True, or allow_disconnected=True")


def channel_setup(c: ml_collections.ConfigDict, graph) -> wireless.Setup:
    """channel=wireless: the link budget, the positions (the radio or random geometric graph's,
    scaled to the area; otherwise uniform from the seed) and the cost model."""
    budget = radio(c)
    n = c.num_devices
    pos = graph.graph.get("positions") if graph is not None else None
    if pos is None:
        pos = wireless.positions(n, budget.area_m, c.seed)
    elif c.topology == "random_geometric":   # the unit square's points
        pos = np.asarray(pos) * budget.area_m
    seed = graph.graph.get("seed", c.seed) if graph is not None else c.seed
    return wireless.Setup(radio=budget, positions=np.asarray(pos), seed=int(seed),
                          shadow=graph.graph.get("shadow") if graph is not None else None,
                          transmission=c.transmission, correction=c.loss_correction,
                          fading=c.fading,
                          cycles_per_sample=float(c.cpu_cycles_per_sample),
                          cpu_freq_hz=float(c.cpu_freq_hz), cpu_kappa=float(c.cpu_kappa))


def build(c: ml_collections.ConfigDict) -> tuple[simulation.Simulator, data_lib.Dataset, dict]:
    """Data, partition, graph and simulator for a validated config; also host-side info
    (setup_time_s: the seconds this took)."""
    t_start = time.perf_counter()
    ds = data_lib.load_dataset(c.dataset, c.data_dir or None)
    parts = _partition(c, ds, c.num_devices)
    stats = partition.partition_stats(ds.y_train, parts, ds.num_classes)
    graph = None
    if algorithms.get(c.algorithm).pooled_data:   # one model on the union of the data
        parts = [np.concatenate(parts)]
        adj = np.zeros((1, 1), bool)
        graph_seed = None
    else:
        graph = _graph(c, c.num_devices)
        adj, graph_seed = graphs.sparse_adjacency(graph), graph.graph["seed"]
    model = make_model(c.model, hidden_sizes=c.hidden_sizes, num_classes=ds.num_classes,
                       width_multiplier=c.width_multiplier)
    uses_graph = algorithms.get(c.algorithm).weights in ("row", "column")
    # fedavg, local and centralized never use the graph: no diameter, no edges in the summary
    diameter = simulation.graph_diameter(adj) if uses_graph else None
    sim = simulation.Simulator(
        model=model, x=ds.x_train, y=ds.y_train, parts=parts, adj=adj,
        algorithm=c.algorithm, mixing_scheme=c.mixing, sync_mode=c.sync,
        backend=c.consensus_backend, link_failures=c.link_failure_prob > 0,
        link_mode=c.link_failure_mode, link_bursts=c.link_burst_prob > 0,
        dropouts=c.dropout_prob > 0, time_varying=c.topology if c.time_varying else "",
        max_delay=c.delay_rounds, delay_mode=c.delay_mode,
        momentum_after_consensus=c.momentum_after_consensus,
        local_epochs=c.local_epochs, batch_size=c.batch_size, local_steps=c.local_steps,
        compressor=c.compressor, compress_ratio=c.compress_ratio, qsgd_bits=c.qsgd_bits,
        device_block=resolve_device_block(c.device_block), diameter=diameter,
        local_buckets=c.local_buckets, normalisation=ds.normalisation, nesterov=c.nesterov,
        augment=c.augment, compute_dtype=c.compute_dtype, lr_schedule=lr_schedule(c),
        channel=channel_setup(c, graph) if c.channel == "wireless" else None)
    if distributed.active():   # every process must build this same simulation
        csr = graphs.as_sparse(adj)
        distributed.check_same({
            "config": distributed.digest(np.frombuffer(json.dumps(
                checkpoint.fingerprint(c.to_dict()), sort_keys=True).encode(), np.uint8)),
            "data": distributed.digest(ds.x_train, ds.y_train, ds.x_test, ds.y_test),
            "partition": distributed.digest(*parts),
            "graph": distributed.digest(csr.indptr, csr.indices)})
    if c.shard:   # with distributed=True, run() joined the processes: the mesh spans them
        sim.shard(sharding.make_mesh())
    info: dict[str, Any] = {"partition": stats, "diameter": sim.diameter,
                            "consensus_backend": sim.backend, "data_source": ds.source,
                            "num_edges": graphs.num_edges(adj) if uses_graph else None,
                            "algorithm": sim.algorithm, "mixing": sim.spec.scheme,
                            "graph_seed": graph_seed if uses_graph else None,
                            "message_bytes": sim.message_bytes,
                            **local_phase_info(sim, c),
                            "loss_limit": recorder.loss_limit(c.divergence_loss_factor,
                                                              ds.num_classes)}
    if sim.spec.link is not None:
        info["wireless"] = channel_info(sim)
    if sim.mixing_weights is not None:   # dense eigenvalues of the dense W while cheap
        w = (sim.mixing_matrix if sim.num_devices <= mixing.SPECTRUM_DENSE_MAX_N
             else sim.mixing_weights)
        info.update({k: float(v) for k, v in mixing.spectral_info(w).items()})
    info["setup_time_s"] = time.perf_counter() - t_start
    return sim, ds, info


def channel_info(sim: simulation.Simulator) -> dict:
    """summary.json's `wireless`: the link budget's consequences for this run."""
    link, ch = sim.spec.link, distributed.host(sim.arrays.channel)
    out = {"message_bits": link.bits, "air_time_at_threshold_s": link.t_max,
           "snr_needed_db": 10 * float(np.log10(link.theta_eff)) if np.isfinite(
               link.theta_eff) else None,
           "cycles_per_sample": sim.cycles_per_sample,
           "compute_s_max": float(np.max(ch["compute_s"])),
           "compute_j_total": float(np.sum(ch["compute_j"]))}
    mean = ch["snr"] if "snr" in ch else ch["up"]
    mean = np.asarray(mean, np.float64)
    live = mean[mean > 0]
    q = wireless.success_probability(live, link.theta_eff, link.fading)
    out.update(links=int(live.size), link_success_mean=float(q.mean()) if q.size else None,
               link_success_min=float(q.min()) if q.size else None,
               mean_snr_db_median=float(np.median(10 * np.log10(live))) if live.size else None)
    return out


def local_phase_info(sim: simulation.Simulator, c: ml_collections.ConfigDict) -> dict:
    """The local phase's layout for summary.json: its scans (buckets.py) and device-steps per
    round (epochs mode): what the data asks for, one padded scan, and the scans run."""
    sizes = distributed.host(sim.arrays.sizes)
    scans = [[b.count, b.max_size] for b in sim.buckets] or [[len(sizes), int(sizes.max())]]
    out = {"local_scans": scans}
    if not c.local_steps:
        needed, padded, run = buckets.device_steps(sizes, sim.buckets, batch_size=c.batch_size,
                                                   local_epochs=c.local_epochs)
        out["device_steps"] = {"needed": needed, "padded": padded, "run": run}
    return out


def hparams(c: ml_collections.ConfigDict) -> simulation.HParams:
    """The config's array-valued hyperparameters (one compiled round serves any value)."""
    return simulation.make_hparams(
        c.learning_rate, c.momentum, c.link_failure_prob, dropout_prob=c.dropout_prob,
        link_burst_prob=c.link_burst_prob, link_burst_failure_prob=c.link_burst_failure_prob,
        graph_radius=c.graph_radius, graph_p=c.graph_p, consensus_step=c.consensus_step,
        weight_decay=c.weight_decay)


def check_workdir(workdir: str, *subdirs: str) -> bool:
    """Creates `workdir` if needed and checks that it and its `subdirs` (where they exist) are
    writable folders; returns whether it created `workdir`. Raises ConfigError naming the path
    (a file in the way, a dangling symbolic link, no permission, a read-only disk) before any
    work is done, so a run never fails at its first checkpoint after hours of training."""
    if os.path.islink(workdir) and not os.path.exists(workdir):
        raise ConfigError(f"workdir={workdir!r} is a symbolic link to "
                          f"{os.readlink(workdir)!r}, which does not exist; create that folder "
                          "or pass another --workdir")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir={workdir!r} is a file, not a folder; pass a folder (it is "
                          "created if missing)")
    created = not os.path.exists(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")   # one per process
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"workdir={workdir!r} is not a writable directory: {e}") from e
    for sub in subdirs:
        path = os.path.join(workdir, sub)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"{path} is a file; it must be the folder of the run's "
                              f"checkpoints: move it away or use a new --workdir")
        if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{path} (the checkpoints folder) is not writable")
    return created


def remove_if_empty(workdir: str) -> None:
    """Removes a workdir this run created when a user error left it empty."""
    try:
        os.rmdir(workdir)
    except OSError:
        pass


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs one simulation described by config `c`, writing its outputs to `workdir`.

    Resumes from the newest checkpoint in `workdir/checkpoints` when there is one (written by
    the same config up to RESUMABLE_FIELDS; anything else is a ConfigError naming the fields).
    Raises ConfigError for user errors, DivergenceError when training diverges, and re-raises
    KeyboardInterrupt after checkpointing the last completed round.
    """
    validate(c)
    distributed.initialize(c)   # before anything touches a JAX backend (orbax does)
    writers.set_primary(distributed.is_primary())
    created = check_workdir(workdir, CHECKPOINT_DIR)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
    try:
        return _run(c, workdir, ckpt)
    except ConfigError:
        if created:
            remove_if_empty(workdir)
        raise
    finally:
        ckpt.close()


def _run(c: ml_collections.ConfigDict, workdir: str, ckpt: checkpoint.Checkpointer) -> dict:
    fingerprint = checkpoint.fingerprint(c.to_dict())
    if distributed.active():   # every process must see the same checkpoints (before orbax,
        distributed.check_same(  # whose restore is a collective)
            {"the checkpoints folder": distributed.digest(np.asarray(ckpt.steps_on_disk()))},
            hint=f"Every process must see the same workdir: put {workdir} on a filesystem "
                 "shared by every host", what="do not see the same checkpoints")
    restored = ckpt.restore() if ckpt.exists() else None
    if restored is not None:
        loop.check_resumable(restored.meta, fingerprint, c.rounds, ckpt.directory)
    stages.reached("data")
    sim, ds, info = build(c)
    # written once the data, graph and simulator are built: a user error leaves no stray files
    writers.write_json(os.path.join(workdir, "config.json"), c.to_dict())
    writers.write_json(os.path.join(workdir, "partition.json"), info.pop("partition"))
    logging.info("devices=%d algorithm=%s topology=%s (diameter %s, %s edges) backend=%s "
                 "data=%s", sim.num_devices, c.algorithm, c.topology, info["diameter"],
                 info["num_edges"], sim.backend, info["data_source"])

    t_init = time.perf_counter()
    hp = hparams(c)
    evaluate = make_evaluator(sim.apply, jnp.asarray(ds.x_test),
                              jnp.asarray(ds.y_test, jnp.int32),
                              device_chunk=c.eval_device_chunk,
                              example_chunk=c.eval_example_chunk)
    state = jax.block_until_ready(sim.init(c.seed))
    # setup_time_s: build + initialisation (with max norm sync, its compile included);
    # wall_time_s starts after it (compile of the round, rounds, evaluation, checkpoints).
    info["setup_time_s"] += time.perf_counter() - t_init
    t0 = time.perf_counter()
    stages.reached("compile")
    compile_time = sim.compile(state, hp, return_local=c.eval_after_local)
    compile_time += evaluate.compile(sim.eval_params(state))
    try:   # XLA's figures against the memory the run may use (docs/memory.md), before round 1
        info["memory"] = memory.check_run(c, sim, evaluate, state)
    except ConfigError:
        if restored is None:   # leave what an error during set-up leaves: nothing
            for name in ("config.json", "partition.json"):
                os.remove(os.path.join(workdir, name))
        raise

    # A run is the loop's one member; its hooks (evaluation, finite checks, progress, stop
    # requests, checkpoints) are those of a sweep group (p2pl_jax/loop.py).
    member = loop.Member(name=workdir, config=c, workdir=workdir, info=info,
                         message_bytes=sim.message_bytes, loss_limit=info["loss_limit"])
    (summary,) = loop.Loop(loop.RunProgram(sim, hp), [member], evaluate, ckpt, fingerprint,
                           stacked=False).run(state, restored, t0=t0, compile_time=compile_time)
    if member.error is not None:
        raise member.error
    return summary
