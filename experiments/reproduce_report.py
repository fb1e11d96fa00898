"""The outputs of experiments.reproduce: results.csv (`write_csv`), the figures
(`claim_figures`, `partition_figures`) and report.md (`write_report`)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from configs import reproduce as spec
from experiments.reproduce_verdicts import _mean
from p2pl_jax import algorithms, plotting

# ----------------------------------------------------------------------------- outputs

_CSV_FIELDS = ("setting", "seed", "status", "algorithm", "topology", "mixing", "partition",
               "sync", "link_failure_prob", "num_devices", "samples_per_device", "rounds",
               "eval_every", "target_accuracy", "rounds_to_target",
               "rounds_to_target_resolution", "target_hold_rounds", "rounds_to_stable_target",
               "rounds_to_stable_target_reason", "final_acc_min",
               "final_acc_mean", "final_acc_max", "rounds_run", "diameter", "spectral_gap",
               "slem", "num_edges", "wall_time_s", "compile_time_s", "eval_time_s", "backend",
               "workdir")


def write_csv(path: str, records: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        w.writeheader()
        for r in records:
            row = {k: r.get(k, r["config"].get(k)) for k in _CSV_FIELDS}
            row["status"] = r["status"].splitlines()[0] if r["status"] else ""
            w.writerow(row)


def claim_figures(claim: spec.Claim, stats: dict, figdir: str, target: float) -> list[str]:
    """Accuracy-vs-round and rounds-to-target figures of one claim; returns file names."""
    names = []
    groups = [(stats[n].label, [plotting.load_run(w) for w in stats[n].workdirs])
              for n in claim.settings if stats[n].workdirs]
    if groups:
        acc = f"claim{claim.number}_accuracy.png"
        plotting.plot_runs(groups, os.path.join(figdir, acc), target=target,
                           title=f"Claim {claim.number}: {claim.title}")
        names.append(acc)
    entries = [{"label": stats[n].label, "rounds": stats[n].rounds}
               for n in claim.settings if stats[n].ran]
    if entries and claim.number != 8:
        bars = f"claim{claim.number}_rounds.png"
        cap = max(stats[n].cap for n in claim.settings if stats[n].ran)
        res = "/".join(str(r) for r in sorted({stats[n].resolution for n in claim.settings
                                                if stats[n].ran}))
        plotting.plot_rounds_to_target(entries, os.path.join(figdir, bars), cap=cap,
                                       target=target,
                                       title=f"Claim {claim.number}: rounds to target "
                                             f"(resolution {res} rounds)")
        names.append(bars)
    return names


def partition_figures(stats: dict, figdir: str) -> list[tuple[int, str, str]]:
    """Heat maps of seed 0's partition for each kind of split used; returns
    (claim number, caption, file name) triples."""
    out = []
    for claim, name, caption in ((5, "complete", "IID, equal sizes"),
                                 (5, "shards2", "2 label shards"),
                                 (5, "dirichlet0.5", "Dirichlet(0.5)"),
                                 (7, "rgg_skew_data_size", "log-normal size skew")):
        s = stats.get(name)
        if s is None or not s.workdirs:
            continue
        src = os.path.join(s.workdirs[0], "partition.json")
        if os.path.exists(src):
            fname = f"partition_{name}.png"
            plotting.plot_partition(src, os.path.join(figdir, fname),
                                    title=f"{caption}: samples per device and class shares")
            out.append((claim, caption, fname))
    return out


def _settings_table(claim: spec.Claim, stats: dict) -> list[str]:
    lines = ["| setting | seeds reached | rounds to target (mean ± std) | rounds to stable "
             "target (mean ± std) | final acc min / mean | diameter | spectral gap | eval every "
             "(= resolution) | wall time / run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in claim.settings:
        s = stats[n]
        if not s.ran:
            lines.append(f"| {s.label} | – | not run | not run | – | – | – | – | – |")
            continue
        d, g = _mean(s.diameter), _mean(s.spectral_gap)
        if not algorithms.get(s.algorithm).uses_graph:   # FedAvg, local: no graph
            d = g = None
        lines.append(
            f"| {s.label} | {s.reached}/{s.n} | {s.rounds_text()} | {s.stable_text()} | "
            f"{s.acc_text()} | "
            f"{'–' if d is None else f'{d:.3g}'} | {'–' if g is None else f'{g:.3g}'} | "
            f"{s.eval_every} | {np.mean(s.wall):.0f} s |")
    return lines


def write_report(path: str, claims: Sequence[spec.Claim], stats: dict, verdicts: dict,
                 figures: dict, partitions: list, header: dict) -> None:
    L = ["# Reproducing the P2PL claims", ""]
    L.append(f"Generated by `{header['command']}` on {header['date']}.")
    L.append("")
    L.append(f"Scale: {header['scale']}. Rounds-to-target = the first evaluated round at "
             f"which **every** device's test accuracy is ≥ {header['target']:.0%}; its "
             f"resolution is eval_every (exact where every round is evaluated; elsewhere a "
             f"crossing that dips back below before the next evaluation is not seen, and with "
             f"eval_backfill the rounds of the window closed by the first evaluation at the "
             f"target are evaluated to find the first of them at it). Rounds-to-stable-target = "
             f"the first round from which every device stays ≥ the target for "
             f"{header['hold']} rounds, every one of them evaluated (exact where every round is "
             f"evaluated, or with eval_backfill when the hold is at least eval_every rounds). "
             f"Both are mean ± std over the seeds that reached them; the verdicts use "
             f"rounds-to-target. Final accuracies are at the last evaluated round (a run stops "
             f"when the hold is complete). Machine: {header['machine']}.")
    L.append("")
    if header.get("quick"):
        L += ["> **--quick**: a tiny pipeline check (8 devices, 3 rounds, lowered target). "
              "The verdicts below say nothing about the paper.", ""]
    L += ["## Summary", "", "| claim | verdict | evidence |", "| --- | --- | --- |"]
    for c in claims:
        v, why = verdicts[c.number]
        L.append(f"| {c.number}. {c.title} | **{v}** | {why.split('. ')[0].rstrip('.')} |")
    L.append("")
    for c in claims:
        v, why = verdicts[c.number]
        L += [f"## Claim {c.number}: {c.title}", "", f"> {c.statement}", ""]
        L += _settings_table(c, stats)
        L.append("")
        errors = [e for n in c.settings for e in stats[n].errors]
        if errors:
            L += ["Failed runs:", ""] + [f"- {e}" for e in errors] + [""]
        L += [f"**Verdict: {v}.** {why}", ""]
        for fig in figures.get(c.number, []):
            L += [f"![claim {c.number}](figures/{fig})", ""]
        for claim_number, caption, fig in partitions:
            if claim_number == c.number:
                L += [f"Partition, {caption} (seed 0):", "", f"![{caption}](figures/{fig})", ""]
    L += ["## Verdict rules", "",
          "Computed in `experiments/reproduce.py` (`verdict_1` … `verdict_8`) from the "
          "numbers above; a seed that never reached the target counts as cap + 1 rounds when "
          "settings are compared.", "",
          "1. reproduced if P2PL on the complete graph brings every device to the target in "
          "every seed (partly: some seeds).",
          "2. reproduced if |rounds(P2PL complete) − rounds(FedAvg)| ≤ max(20% of FedAvg, 1).",
          "3. reproduced if every sparse graph reaches the target in every seed, no sparse graph "
          "is faster than the complete one and rounds never decrease as the diameter grows "
          "(partly: ordered but some not reached, or all reached but not ordered).",
          "4. reproduced if 30% and 50% link failures (random geometric) and 50% (complete) "
          "still reach the target in every seed (partly: some).",
          "5. reproduced if 2-shard and Dirichlet(0.5) partitions reach the target in every "
          "seed (partly: some).",
          "6. reproduced if max norm sync needs fewer rounds (mean over seeds) than sync=none "
          "on the random geometric graph.",
          "7. reproduced if under skewed sizes data_size needs fewer rounds than metropolis and "
          "under equal sizes the two differ by ≤ max(20%, the rounds-to-target resolution) "
          "(partly: one of the two).",
          "8. reproduced if local-only ends ≥ 2 points below the target and gains < 1 point "
          "over the last 25% of rounds (partly: one of the two).", "",
          "With equal sizes `data_size` weights equal `uniform` weights exactly "
          "(w_nm = 1/(d_n+1)), so claim 7 runs `uniform` only under skew.", ""]
    with open(path, "w") as f:
        f.write("\n".join(L))
