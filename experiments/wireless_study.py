"""Wireless links, energy and time (issue #14): which algorithm, weights and power to pick, and
when a base station is cheaper.

  python -m experiments.wireless_study [--workdir=runs/wireless_study]
      [--out=docs/wireless_2026-12-02] [--powers=-10,0,10] [--rounds=20] [--target=0.93]
      [--seed=0] [--jobs=1] [--report_only]

100 devices with 600 IID MNIST images each (configs/mnist.py: MLP 784-200-200-10, B = 10, one
local epoch, SGD lr 0.05 momentum 0.9, max norm sync) in a 500 m square, channel=wireless with
the default link budget (docs/wireless.md), at each transmit power of --powers (dBm):
  p2pl with data_size and with metropolis weights, and push_sum (uniform column weights), each
  with loss_correction renormalize and inverse_probability, on the radio graph (graph_resample:
  the first connected one of the seeds seed + 1000 k);
  fedavg through the base station at the centre (same positions: the radio graph's).
Each run stops at the target (target_hold_rounds = 1: the first evaluated round at which every
device's model reaches --target on the 10,000 test images; evaluated every 3 rounds and, once
an evaluation meets the target, the rounds since the previous one (eval_backfill): exact to
the round)
or at --rounds. The report (OUT/README.md, OUT/results.json, OUT/accuracy_vs_energy.png) is
built from the copied run files (OUT/runs/NAME/) alone; --report_only rebuilds it. Runs are
reused when finished with the same config, resumed when unfinished (the CLI resumes).

Exit status: 0 done; 2 a user error; 3 a run failed (its log is WORKDIR/NAME.log), the report is
still written from what exists.
"""

from __future__ import annotations

import math
import os

import numpy as np
from absl import app, flags

from experiments import cli, studies
from p2pl_jax import plotting, wireless
from p2pl_jax.errors import ConfigError

DOCS = "docs/wireless_2026-12-02"
FIGURE = "accuracy_vs_energy.png"
# (name part, label, overrides) of the graph algorithms; fedavg is added per power.
SETTINGS = (
    ("p2pl_data_size", "P2PL data_size", {"algorithm": "p2pl", "mixing": "data_size"}),
    ("p2pl_metropolis", "P2PL metropolis", {"algorithm": "p2pl", "mixing": "metropolis"}),
    ("push_sum", "push-sum", {"algorithm": "push_sum", "mixing": "auto"}),
)
CORRECTIONS = ("renormalize", "inverse_probability")
COMMON = {"channel": "wireless", "topology": "radio", "graph_resample": True,
          "eval_every": 3, "eval_backfill": True, "target_hold_rounds": 1,
          "stop_at_target": True,
          "checkpoint_every": 10, "tensorboard": False, "progress": False}


def define_flags() -> None:
    """The command's flags (defined only when run as a program)."""
    global _WORKDIR, _OUT, _POWERS, _ROUNDS, _TARGET, _SEED, _JOBS, _REPORT_ONLY
    _WORKDIR = flags.DEFINE_string("workdir", "runs/wireless_study", "Where the runs go.")
    _OUT = flags.DEFINE_string("out", DOCS, "Report directory.")
    _POWERS = flags.DEFINE_list("powers", ["-10", "0", "10"], "Device transmit powers (dBm).")
    _ROUNDS = flags.DEFINE_integer("rounds", 20, "Round cap of every run.")
    _TARGET = flags.DEFINE_float("target", 0.93, "Target accuracy of every device.")
    _SEED = flags.DEFINE_integer("seed", 0, "The runs' seed.")
    _JOBS = flags.DEFINE_integer("jobs", 1, "Runs at the same time (one process each).")
    _REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Rebuild the report from OUT only.")


USAGE = ("python -m experiments.wireless_study [--workdir=DIR] [--out=DIR] [--powers=-10,0,10] "
         "[--rounds=20] [--target=0.93] [--seed=0] [--jobs=1] [--report_only]")
parse_flags = cli.flags_parser(USAGE)


def runs(powers, rounds: int, target: float, seed: int) -> dict[str, dict]:
    """{name: config overrides} of the study."""
    out = {}
    for p in powers:
        base = {**COMMON, "tx_power_dbm": float(p), "rounds": rounds,
                "target_accuracy": target, "seed": seed}
        for part, _, over in SETTINGS:
            for corr in CORRECTIONS:
                out[f"p{p:g}_{part}_{corr}"] = {**base, **over, "loss_correction": corr}
        out[f"p{p:g}_fedavg"] = {**base, "algorithm": "fedavg"}
    return out


def describe(config: dict) -> tuple[str, str]:
    """(setting label, correction) of a run's config."""
    if config.get("algorithm") == "fedavg":
        return "FedAvg (base station)", "-"
    for _, label, over in SETTINGS:
        if all(config.get(k) == v for k, v in over.items()):
            return label, config.get("loss_correction", "")
    return str(config.get("algorithm")), config.get("loss_correction", "")


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def push_sum_weights(config: dict, graph_seed: int) -> tuple[float, float]:
    """(min, max) of push-sum's stationary weights w (the Perron vector of the uniform
    column-stochastic P on the run's radio graph, rebuilt from its config, scaled to sum to N):
    a device at z = x / w takes steps 1 / w times larger in z than in x."""
    from configs import mnist
    from p2pl_jax import runner

    c = mnist.get_config()
    for k, v in config.items():
        if k in c:
            c[k] = v
    n = int(c.num_devices)
    adj, _ = wireless.radio_graph(wireless.positions(n, c.area_m, graph_seed), runner.radio(c),
                                  graph_seed)
    a = adj.toarray().astype(np.float64)
    p = (a + np.eye(n)) / (a.sum(axis=1) + 1.0)[None, :]
    vals, vecs = np.linalg.eig(p)
    v = np.abs(np.real(vecs[:, np.argmax(np.real(vals))]))
    v = v / v.sum() * n
    return float(v.min()), float(v.max())


def _worst_fell(m: dict) -> tuple[float, int, int] | None:
    """(drop, round of the best worst-device accuracy, last round) when the worst device ends
    more than 10 points below its best evaluated round while the device mean ends higher."""
    worst, mean, rounds = (list(m.get(k, [])) for k in ("acc_min", "acc_mean", "round"))
    if len(worst) < 2:
        return None
    best = int(np.argmax(worst))
    if worst[best] - worst[-1] > 0.10 and mean[-1] > mean[best]:
        return float(worst[best] - worst[-1]), int(rounds[best]), int(rounds[-1])
    return None


def analyse(loaded: dict[str, plotting.Run]) -> dict:
    """One row per run, from its config, summary and metrics."""
    rows = {}
    for name, run in loaded.items():
        cfg, summ = run.config, studies.read_json(os.path.join(run.path, "summary.json")) or {}
        label, corr = describe(cfg)
        wl = summ.get("wireless") or {}
        rounds = summ.get("rounds_run") or 0
        m = run.metrics
        rows[name] = {
            "power_dbm": cfg.get("tx_power_dbm"), "setting": label, "correction": corr,
            "rounds_to_target": summ.get("rounds_to_target"), "rounds_run": rounds,
            "energy_to_target_j": summ.get("energy_to_target_j"),
            "energy_max_device_to_target_j": summ.get("energy_max_device_to_target_j"),
            "sim_time_to_target_s": summ.get("sim_time_to_target_s"),
            "bytes_to_target": summ.get("bytes_to_target"),
            "station_energy_to_target_j": summ.get("energy_station_to_target_j"),
            "energy_per_round_j": (summ["energy_total_j"] / rounds
                                   if rounds and summ.get("energy_total_j") else None),
            "compute_share": (wl["compute_j_total"] / (summ["energy_total_j"] / rounds)
                              if rounds and summ.get("energy_total_j") and
                              wl.get("compute_j_total") is not None else None),
            "final_acc_min": summ.get("final_acc_min"),
            "final_acc_mean": summ.get("final_acc_mean"),
            "edges": summ.get("num_edges"), "diameter": summ.get("diameter"),
            "link_success_mean": wl.get("link_success_mean"),
            "links_up_mean": _mean(m.get("links_up", [])),
            "weights_clipped_mean": _mean(m.get("weights_clipped", [])),
            "worst_fell": _worst_fell(m),
            "consensus_distance_first_last": (
                [float(m["consensus_distance"][0]), float(m["consensus_distance"][-1])]
                if len(m.get("consensus_distance", [])) else None),
            "push_sum_weight_range": (push_sum_weights(cfg, summ["graph_seed"])
                                      if cfg.get("algorithm") == "push_sum"
                                      and cfg.get("topology") == "radio"
                                      and summ.get("graph_seed") is not None else None),
            "jax_version": summ.get("jax_version"), "backend": summ.get("backend")}
    return {"rows": rows}


def _fmt(x, spec: str = ".3g", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def finding(res: dict, target: float, cap: int) -> list[str]:
    """The finding in words, computed from the rows."""
    rows = res["rows"]
    powers = sorted({r["power_dbm"] for r in rows.values()})
    out = []
    for p in powers:
        at = {n: r for n, r in rows.items() if r["power_dbm"] == p}
        p2p = {n: r for n, r in at.items() if r["setting"] != "FedAvg (base station)"}
        fed = next((r for r in at.values() if r["setting"] == "FedAvg (base station)"), None)
        done = {n: r for n, r in p2p.items() if r["energy_to_target_j"] is not None}
        text = f"- **{p:g} dBm**: "
        if done:
            best = min(done.values(), key=lambda r: r["energy_to_target_j"])
            fastest = min(done.values(), key=lambda r: r["sim_time_to_target_s"])
            text += (f"the cheapest peer-to-peer setting is {best['setting']} with "
                     f"{best['correction']} ({best['rounds_to_target']} rounds, "
                     f"{best['energy_to_target_j']:.4g} J over all devices, "
                     f"{best['sim_time_to_target_s']:.4g} s simulated)")
            if fastest is not best:
                text += (f"; the fastest is {fastest['setting']} with {fastest['correction']} "
                         f"({fastest['sim_time_to_target_s']:.4g} s)")
            text += f"; {len(done)} of {len(p2p)} peer-to-peer runs reached {target:.0%}"
        else:
            top = max(p2p.values(), key=lambda r: r["final_acc_min"] or 0.0)
            text += (f"no peer-to-peer run reached {target:.0%} on every device in {cap} rounds; "
                     f"the best final worst device is {top['setting']} with "
                     f"{top['correction']} ({_fmt(top['final_acc_min'], '.4f')}) on a graph of "
                     f"diameter {_fmt(top['diameter'], 'd')}")
        if fed is not None and fed["energy_to_target_j"] is not None:
            text += (f". FedAvg through the base station: {fed['rounds_to_target']} rounds, "
                     f"{fed['energy_to_target_j']:.4g} J of the devices' energy (the station's "
                     f"{_fmt(fed['station_energy_to_target_j'], '.4g')} J apart), "
                     f"{fed['sim_time_to_target_s']:.4g} s")
            if done:
                ratio = best["energy_to_target_j"] / fed["energy_to_target_j"]
                text += (f": the base station costs the devices {ratio:.3g}x less energy than "
                         f"the cheapest peer-to-peer setting" if ratio > 1 else
                         f": peer-to-peer costs the devices {1 / ratio:.3g}x less energy")
        elif fed is not None:
            text += (f". FedAvg through the base station did not reach {target:.0%} in "
                     f"{fed['rounds_run']} rounds (final worst device "
                     f"{_fmt(fed['final_acc_min'], '.4f')}; mean uplink success "
                     f"{_fmt(fed['links_up_mean'], '.2f')})")
        out.append(text + ".")
    pairs = []
    for p in powers:
        for _, label, _ in SETTINGS:
            r0 = next((r for r in rows.values() if r["power_dbm"] == p and
                       r["setting"] == label and r["correction"] == "renormalize"), None)
            r1 = next((r for r in rows.values() if r["power_dbm"] == p and
                       r["setting"] == label and r["correction"] == "inverse_probability"),
                      None)
            if r0 and r1:
                pairs.append((p, label, r0, r1))
    better = [x for x in pairs if (x[3]["rounds_to_target"] or cap + 1)
              < (x[2]["rounds_to_target"] or cap + 1)]
    worse = [x for x in pairs if (x[3]["rounds_to_target"] or cap + 1)
             > (x[2]["rounds_to_target"] or cap + 1)]
    p2p_done = [r for r in rows.values() if r["setting"] != "FedAvg (base station)"
                and r["energy_to_target_j"] is not None]
    if p2p_done:
        cheap = min(p2p_done, key=lambda r: r["energy_to_target_j"])
        quick = min(p2p_done, key=lambda r: r["sim_time_to_target_s"])
        out.append(f"- Over all powers the cheapest peer-to-peer run is {cheap['setting']} with "
                   f"{cheap['correction']} at {cheap['power_dbm']:g} dBm "
                   f"({cheap['energy_to_target_j']:.4g} J), the fastest in simulated time "
                   f"{quick['setting']} with {quick['correction']} at {quick['power_dbm']:g} dBm "
                   f"({quick['sim_time_to_target_s']:.4g} s).")
    shares = sorted((r["power_dbm"], r["setting"], r["compute_share"], r["energy_per_round_j"])
                    for r in rows.values() if r["compute_share"] is not None)
    if shares:
        by_power = {}
        for p, label, share, per_round in shares:
            kind = "base station" if label.startswith("FedAvg") else "peer-to-peer"
            by_power.setdefault((p, kind), (share, per_round))
        out.append("- Where the energy goes: the local phase's compute is "
                   + "; ".join(f"{100 * share:.1f}% of a {kind} round's {per_round:.3g} J at "
                               f"{p:g} dBm" for (p, kind), (share, per_round)
                               in sorted(by_power.items()))
                   + ". The rest is the radio, mostly listening: a device receives every "
                   "neighbour's whole model, so a peer-to-peer round costs in proportion to the "
                   "radio graph's degree, which grows with the power.")
    fell = sorted((r["power_dbm"], r["setting"], r["correction"], r["worst_fell"],
                   r["consensus_distance_first_last"], r["push_sum_weight_range"])
                  for r in rows.values() if r["worst_fell"])
    for p, label, corr, (drop, best, last), cd, wr in fell:
        text = (f"- {p:g} dBm {label} ({corr}): the worst device fell {100 * drop:.0f} points from "
                f"round {best} to round {last} while the device mean rose")
        if cd:
            text += f"; the consensus distance went from {cd[0]:.3g} to {cd[1]:.3g}"
        if wr:
            text += (f". Push-sum's stationary weights on this graph range from {wr[0]:.2f} to "
                     f"{wr[1]:.2f}: a device at z = x / w steps up to {1 / wr[0]:.1f}x farther "
                     "in z than its learning rate (SGP applies the step to x). That the "
                     "low-weight devices overshoot is the likely cause; no run here tests it")
        out.append(text + ".")
    out.append(f"- Inverse-probability weights took fewer rounds than renormalisation in "
               f"{len(better)} of {len(pairs)} (power, setting) pairs and more in {len(worse)}"
               + (" (" + "; ".join(f"{p:g} dBm {label}: {_fmt(a['rounds_to_target'], 'd')} vs "
                                   f"{_fmt(b['rounds_to_target'], 'd')}"
                                   for p, label, a, b in pairs) + ", renormalize vs inverse)"
                  if pairs else "") + ".")
    return out


def plot(loaded: dict[str, plotting.Run], res: dict, out_png: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    powers = sorted({r["power_dbm"] for r in res["rows"].values()})
    fig, axes = plt.subplots(1, max(len(powers), 1), figsize=(5 * max(len(powers), 1), 4.2),
                             sharey=True, layout="constrained", squeeze=False)
    for ax, p in zip(axes[0], powers):
        for name, run in sorted(loaded.items()):
            row = res["rows"][name]
            if row["power_dbm"] != p or "energy_cum_j" not in run.metrics:
                continue
            ls = "--" if row["correction"] == "inverse_probability" else "-"
            ax.plot(run.metrics["energy_cum_j"], run.metrics["acc_min"], ls=ls, marker="o",
                    ms=2.5, label=f"{row['setting']} {row['correction']}".replace(" -", ""))
        ax.axhline(target, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{p:g} dBm")
        ax.set_xlabel("energy of all devices (J, cumulative)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("worst device's test accuracy")
    axes[0][0].set_ylim(0.5, 1.0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _table(res: dict) -> list[str]:
    cols = ("power dBm", "setting", "correction", "rounds to target",
            "energy to target J (all devices)", "busiest device J", "sim. time to target s",
            "MB to target", "J per round", "final acc min / mean", "edges / diameter",
            "link success (mean q)", "weights clipped")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    order = sorted(res["rows"].values(), key=lambda r: (r["power_dbm"], r["setting"],
                                                        r["correction"]))
    for r in order:
        mb = None if r["bytes_to_target"] is None else r["bytes_to_target"] / 1e6
        cells = (f"{r['power_dbm']:g}", r["setting"], r["correction"],
                 _fmt(r["rounds_to_target"], "d", f"not in {r['rounds_run']}"),
                 _fmt(r["energy_to_target_j"], ".4g"),
                 _fmt(r["energy_max_device_to_target_j"], ".4g"),
                 _fmt(r["sim_time_to_target_s"], ".4g"), _fmt(mb, ",.0f"),
                 _fmt(r["energy_per_round_j"], ".4g"),
                 f"{_fmt(r['final_acc_min'], '.4f')} / {_fmt(r['final_acc_mean'], '.4f')}",
                 f"{_fmt(r['edges'], 'd')} / {_fmt(r['diameter'], 'd')}",
                 _fmt(r["link_success_mean"], ".2f"), _fmt(r["weights_clipped_mean"], ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(out: str) -> dict:
    loaded = studies.load_runs(out)
    if not loaded:
        raise ConfigError(f"{out}/runs/ holds no run (metrics.jsonl); run the study first")
    study = studies.read_json(os.path.join(out, "study.json")) or {}
    res = analyse(loaded)
    any_cfg = next(iter(loaded.values())).config
    # The cap of the runs that stopped at it (a run that reached the target at a lower cap is
    # reused when the cap is raised: the cap only matters to the runs that did not reach it).
    target = any_cfg.get("target_accuracy")
    cap = max(r.config.get("rounds", 0) for r in loaded.values())
    res["finding"] = finding(res, target, cap)
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write(studies.strict(res))
    plot(loaded, res, os.path.join(out, FIGURE), target)
    mach = study.get("machine", {})
    versions = sorted({str(r["jax_version"]) for r in res["rows"].values() if r["jax_version"]})
    lines = [
        "# Wireless links, energy and time: 100 devices in a 500 m square (issue #14)",
        "",
        "Written by `experiments/wireless_study.py` from the run files in `runs/`; rebuild with "
        f"`python -m experiments.wireless_study --report_only --out={out}`.",
        "",
        f"Command: `{study.get('command', '?')}`  ",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores; JAX "
        f"{', '.join(versions) or '?'}, backend {next(iter(res['rows'].values()))['backend']}; "
        f"{study.get('date', '?')}.",
        "",
        "## Protocol (reduced, CPU)",
        "",
        f"- {any_cfg.get('num_devices')} devices × {any_cfg.get('samples_per_device')} IID MNIST "
        f"images, MLP 784-200-200-10, B {any_cfg.get('batch_size')}, one local epoch, SGD lr "
        f"{any_cfg.get('learning_rate')} momentum {any_cfg.get('momentum')} (the paper's, not "
        "tuned), max norm sync.",
        f"- channel=wireless, area {any_cfg.get('area_m'):g} m, the default link budget "
        f"(docs/wireless.md): bandwidth {any_cfg.get('bandwidth_hz'):g} Hz, path-loss exponent "
        f"{any_cfg.get('path_loss_exponent')}, {any_cfg.get('path_loss_ref_db')} dB at 1 m, "
        f"shadowing σ {any_cfg.get('shadowing_std_db')} dB, threshold "
        f"{any_cfg.get('snr_threshold_db')} dB, radio-graph margin "
        f"{any_cfg.get('radio_margin_db')} dB, no deadline, broadcast, receive power "
        f"{any_cfg.get('rx_power_w')} W; the base station at the centre at "
        f"{any_cfg.get('bs_tx_power_dbm')} dBm.",
        "- The radio graph at each power (graph_resample: the first connected graph of the seeds "
        "seed + 1000 k; its positions and shadowing also place FedAvg's devices).",
        f"- **Target**: every device's model at ≥ {target:.0%} on the 10,000 test images, "
        f"evaluated every {any_cfg.get('eval_every')} rounds and, once an evaluation meets the "
        "target, the rounds since the previous one (eval_backfill; exact to the round), the "
        "first such round "
        f"(target_hold_rounds = 1); round cap {cap} (a run that reached the target under a lower "
        "cap is reused when the cap is raised: the cap only matters to runs that do not reach "
        "it). Energy and simulated time to target: the cumulative bill through that round.",
        f"- **Reduced** from the issue's protocol: target {target:.0%} instead of 97%, a "
        f"{cap}-round cap, one seed ({any_cfg.get('seed')}), learning rates not tuned. The full "
        "protocol is issue #16's.",
        "",
        "## Results",
        "",
        *_table(res),
        "",
        f"![accuracy against energy]({FIGURE})",
        "",
        "## Finding",
        "",
        *res["finding"],
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))
    return res


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}\nUsage: {USAGE}", cli.EXIT_USER_ERROR)
    out, failed = _OUT.value, []
    if not _REPORT_ONLY.value:
        try:
            powers = [float(p) for p in _POWERS.value]
        except ValueError:
            cli.fail(f"--powers={','.join(_POWERS.value)} must be numbers (dBm)",
                     cli.EXIT_USER_ERROR)
        if _ROUNDS.value < 1 or _JOBS.value < 1 or not 0 < _TARGET.value <= 1:
            cli.fail("--rounds and --jobs must be >= 1 and --target in (0, 1]",
                     cli.EXIT_USER_ERROR)
        plan = runs(powers, _ROUNDS.value, _TARGET.value, _SEED.value)
        commands, plans, failed = studies.run_all(_WORKDIR.value, plan, _JOBS.value)
        os.makedirs(out, exist_ok=True)
        studies.copy_runs(_WORKDIR.value, out, plan)
        studies.write_study(out, "experiments.wireless_study", commands, plans)
    studies.report_and_exit(out, write_report, failed, _WORKDIR.value)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
