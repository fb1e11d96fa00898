"""Statistics and verdicts for experiments.reproduce: `Stat` (one setting over its seeds),
`make_stat`, and `verdict_1` .. `verdict_8` (VERDICT_FNS), each computed from the numbers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from configs import reproduce as spec
from p2pl_jax import plotting

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not run")


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class Stat:
    """One setting over its seeds. rounds: rounds_to_target per finished seed (None = not
    reached within the cap); stable: rounds_to_stable_target per finished seed (None = no hold
    of `hold` rounds completed; MISSING = a run written before it was recorded)."""

    name: str
    label: str
    algorithm: str
    rounds: list
    cap: int
    eval_every: int
    final_min: list
    final_mean: list
    diameter: list
    spectral_gap: list
    wall: list
    errors: list
    curves: list        # per finished seed: (rounds array, acc_mean array) from metrics.jsonl
    workdirs: list
    resolution: int = 1  # of rounds-to-target: eval_every (1 = every round evaluated: exact)
    stable: list = dataclasses.field(default_factory=list)
    hold: int = 0        # target_hold_rounds
    stable_reasons: list = dataclasses.field(default_factory=list)   # why a seed's is None

    @property
    def n(self) -> int:
        return len(self.rounds)

    @property
    def reached(self) -> int:
        return sum(r is not None for r in self.rounds)

    @property
    def ran(self) -> bool:
        return self.n > 0

    @property
    def all_reached(self) -> bool:
        return self.n > 0 and self.reached == self.n

    def mean_rounds(self) -> float:
        vals = [r for r in self.rounds if r is not None]
        return float(np.mean(vals)) if vals else math.inf

    def std_rounds(self) -> float:
        vals = [r for r in self.rounds if r is not None]
        return float(np.std(vals)) if len(vals) > 1 else 0.0

    def censored(self) -> float:
        """Mean rounds with a seed that did not reach counted as cap + 1 (a lower bound);
        inf when no seed reached."""
        if not self.reached:
            return math.inf
        return float(np.mean([r if r is not None else self.cap + 1 for r in self.rounds]))

    def rounds_text(self) -> str:
        if not self.ran:
            return "not run"
        if not self.reached:
            return f"not reached in {self.cap} rounds"
        text = f"{self.mean_rounds():.1f} ± {self.std_rounds():.1f}"
        if self.reached < self.n:
            text += f" ({self.reached}/{self.n} seeds; the rest not reached in {self.cap})"
        return text

    def stable_text(self) -> str:
        """Rounds-to-stable-target as mean ± std over the seeds that held the target."""
        if not self.ran:
            return "not run"
        known = [r for r in self.stable if r is not MISSING]
        if not known:
            return "not recorded (runs older than rounds_to_stable_target: rerun them)"
        held = [r for r in known if r is not None]
        if not held:
            return f"not held for {self.hold} rounds in {self.cap}"
        text = f"{np.mean(held):.1f} ± {np.std(held) if len(held) > 1 else 0.0:.1f}"
        if len(held) < len(self.stable):
            text += f" ({len(held)}/{len(self.stable)} seeds)"
        return text

    def acc_text(self) -> str:
        if not self.ran:
            return "–"
        return f"{np.mean(self.final_min):.4f} / {np.mean(self.final_mean):.4f}"


def _load_curve(workdir: str):
    try:
        run_ = plotting.load_run(workdir)
    except FileNotFoundError:
        return None
    return run_.metrics["round"], run_.metrics["acc_mean"]


MISSING = "missing"   # Stat.stable of a run written before rounds_to_stable_target existed


def make_stat(setting: spec.Setting, records: list[dict]) -> Stat:
    ok = [r for r in records if r["status"] == "ok"]
    cap = records[0]["config"]["rounds"] if records else 0
    ev = records[0]["config"]["eval_every"] if records else 1
    hold = records[0]["config"].get("target_hold_rounds", 0) if records else 0
    return Stat(
        name=setting.name, label=setting.label,
        algorithm=records[0]["config"]["algorithm"] if records else "",
        rounds=[r["rounds_to_target"] for r in ok],
        cap=cap, eval_every=ev,
        final_min=[r["final_acc_min"] or 0.0 for r in ok],
        final_mean=[r["final_acc_mean"] or 0.0 for r in ok],
        diameter=[r.get("diameter") for r in ok], spectral_gap=[r.get("spectral_gap")
                                                               for r in ok],
        wall=[r.get("wall_time_s", 0.0) for r in ok],
        errors=[f"seed {r['seed']}: {r['status']}" for r in records
                if r["status"] not in ("ok", "missing")],
        curves=[c for c in (_load_curve(r["workdir"]) for r in ok) if c is not None],
        workdirs=[r["workdir"] for r in ok], resolution=ev,
        stable=[r.get("rounds_to_stable_target", MISSING) for r in ok], hold=hold,
        stable_reasons=[f"seed {r['seed']}: {r['rounds_to_stable_target_reason']}" for r in ok
                        if r.get("rounds_to_stable_target_reason")])


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------- verdicts
# Each takes {setting name: Stat} and returns (verdict, one-paragraph reason from the numbers).


def _missing(stats: dict, names: Sequence[str]) -> list[str]:
    return [n for n in names if not stats[n].ran]


def _rounds(s: Stat) -> str:
    return f"{s.label}: {s.rounds_text()}"


def verdict_1(st: dict, target: float) -> tuple[str, str]:
    p, f, c = st["complete"], st["fedavg"], st["centralized"]
    if not p.ran:
        return "not run", "P2PL on the complete graph has not been run."
    refs = "; ".join(f"{s.label} final accuracy {np.mean(s.final_mean):.4f} "
                     f"({s.rounds_text()})" for s in (f, c) if s.ran)
    if p.all_reached:
        seeds = f"all {p.n} seeds" if p.n > 1 else "the one seed run"
        return "reproduced", (f"P2PL (complete graph) brought every device to ≥ {target:.0%} in "
                              f"{seeds} after {p.rounds_text()} rounds. {refs}.")
    if p.reached:
        return "partly reproduced", (f"every device reached {target:.0%} in only {p.reached} of "
                                     f"{p.n} seeds. {refs}.")
    return "not reproduced", (f"no seed brought every device to {target:.0%} within {p.cap} "
                              f"rounds (final min / mean accuracy {p.acc_text()}). {refs}.")


def verdict_2(st: dict, target: float, tolerance: float = 0.2) -> tuple[str, str]:
    p, f = st["complete"], st["fedavg"]
    if _missing(st, ["complete", "fedavg"]):
        return "not run", "needs both P2PL complete and FedAvg."
    if not p.reached or not f.reached:
        return "not reproduced", (f"cannot compare rounds: {_rounds(p)}; {_rounds(f)}.")
    mp, mf = p.censored(), f.censored()
    allowed = max(tolerance * mf, 1.0)
    diff = mp - mf
    text = (f"P2PL {mp:.1f} vs FedAvg {mf:.1f} rounds (mean over seeds), difference "
            f"{diff:+.1f} ({diff / mf:+.0%}); allowed ±{allowed:.1f} "
            f"(max({tolerance:.0%} of FedAvg, 1 round)).")
    if abs(diff) <= allowed:
        if p.all_reached and f.all_reached:
            return "reproduced", text
        return "partly reproduced", text + " Not every seed reached the target."
    return "not reproduced", text


def _monotone(values: Sequence[float]) -> bool:
    return all(b >= a for a, b in zip(values, values[1:]))


def verdict_3(st: dict, target: float) -> tuple[str, str]:
    sparse = ["rgg", "torus", "cycle"]
    if _missing(st, ["complete", *sparse]):
        return "not run", f"missing settings: {', '.join(_missing(st, ['complete', *sparse]))}."
    graphs = sorted(["complete", *sparse], key=lambda n: _mean(st[n].diameter) or 0)
    table = ", ".join(
        f"{st[n].label} (diameter {_mean(st[n].diameter):.3g}, spectral gap "
        f"{_mean(st[n].spectral_gap) or 0:.3g}): {st[n].rounds_text()}" for n in graphs)
    order = [st[n].censored() for n in graphs]
    monotone = _monotone(order) and order[-1] > order[0]
    all_reached = all(st[n].all_reached for n in sparse)
    some = [n for n in sparse if st[n].reached]
    slower = all(st[n].censored() >= st["complete"].censored() for n in sparse)
    if not some:
        return "not reproduced", f"no sparse graph reached {target:.0%}. {table}."
    trend = ("rounds do not decrease as the diameter grows" if monotone else
             "rounds are not ordered by diameter")
    if all_reached and monotone and slower:
        return "reproduced", f"every sparse graph reached {target:.0%}; {trend}. {table}."
    if some and (monotone or all_reached):
        missing = [st[n].label for n in sparse if not st[n].all_reached]
        extra = (f" Not reached in every seed: {', '.join(missing)}." if missing else "")
        return "partly reproduced", f"{trend}.{extra} {table}."
    return "not reproduced", f"{trend}. {table}."


def _converges(st: dict, references: dict[str, str], what: str,
               target: float) -> tuple[str, str]:
    """references: {setting: the setting it is compared with (same graph, ideal conditions)}."""
    names = list(references)
    if _missing(st, names):
        return "not run", f"missing settings: {', '.join(_missing(st, names))}."
    slow = []
    for n in names:
        s, ref = st[n], st[references[n]]
        if s.reached and ref.ran and ref.reached:
            slow.append(f"{s.label}: {s.rounds_text()} rounds "
                        f"(×{s.censored() / ref.censored():.2f} of {ref.label})")
        else:
            slow.append(f"{s.label}: {s.rounds_text()}, final min / mean accuracy "
                        f"{s.acc_text()}")
    detail = "; ".join(slow)
    if all(st[n].all_reached for n in names):
        return "reproduced", f"every {what} setting reached {target:.0%} in every seed. {detail}."
    if any(st[n].reached for n in names):
        return "partly reproduced", f"only some {what} settings / seeds reached {target:.0%}. " \
            f"{detail}."
    return "not reproduced", f"no {what} setting reached {target:.0%}. {detail}."


def verdict_4(st: dict, target: float) -> tuple[str, str]:
    return _converges(st, {"rgg_fail0.3": "rgg", "rgg_fail0.5": "rgg",
                           "complete_fail0.5": "complete"}, "link-failure", target)


def verdict_5(st: dict, target: float) -> tuple[str, str]:
    return _converges(st, {"shards2": "complete", "dirichlet0.5": "complete"}, "non-IID",
                      target)


def verdict_6(st: dict, target: float) -> tuple[str, str]:
    names = ["rgg", "rgg_sync_none", "rgg_sync_shared"]
    if _missing(st, names[:2]):
        return "not run", "needs RGG with sync=max_norm and sync=none."
    m, n, o = st["rgg"], st["rgg_sync_none"], st["rgg_sync_shared"]
    text = "; ".join(_rounds(s) for s in (m, n, o) if s.ran)
    if m.reached or n.reached:
        cm, cn = m.censored(), n.censored()
        if cm < cn:
            return "reproduced", (f"max norm sync needs fewer rounds than independent inits "
                                  f"({cm:.1f} vs {'not reached' if math.isinf(cn) else f'{cn:.1f}'}"
                                  f", unreached seeds counted as cap + 1). {text}.")
        return "not reproduced", (f"max norm sync does not need fewer rounds than independent "
                                  f"inits ({cm:.1f} vs {cn:.1f}). {text}.")
    fm, fn = np.mean(m.final_min), np.mean(n.final_min)
    if fm > fn:
        return "partly reproduced", (f"neither reached {target:.0%}; max norm ends with a higher "
                                     f"minimum accuracy ({fm:.4f} vs {fn:.4f}). {text}.")
    return "not reproduced", (f"neither reached {target:.0%} and max norm does not end higher "
                              f"({fm:.4f} vs {fn:.4f}). {text}.")


def verdict_7(st: dict, target: float, tolerance: float = 0.2) -> tuple[str, str]:
    names = ["rgg", "rgg_metropolis", "rgg_skew_data_size", "rgg_skew_metropolis"]
    if _missing(st, names):
        return "not run", f"missing settings: {', '.join(_missing(st, names))}."
    eq_d, eq_m = st["rgg"], st["rgg_metropolis"]
    sk_d, sk_m, sk_u = st["rgg_skew_data_size"], st["rgg_skew_metropolis"], st["rgg_skew_uniform"]
    faster = sk_d.reached > 0 and sk_d.censored() < sk_m.censored()
    if eq_d.reached and eq_m.reached:
        allowed = max(tolerance * eq_m.censored(), float(eq_m.resolution))
        similar = abs(eq_d.censored() - eq_m.censored()) <= allowed
        eq_text = (f"equal sizes: data_size {eq_d.censored():.1f} vs metropolis "
                   f"{eq_m.censored():.1f} rounds (similar if within ±{allowed:.1f})")
    else:
        similar = False
        eq_text = f"equal sizes: {_rounds(eq_d)}; {_rounds(eq_m)}"
    sk_text = "; ".join(_rounds(s) for s in (sk_d, sk_m, sk_u) if s.ran)
    text = (f"skewed sizes: data_size {'faster' if faster else 'not faster'} than metropolis "
            f"({sk_text}); {eq_text}.")
    if faster and similar:
        return "reproduced", text
    if faster or similar:
        return "partly reproduced", text
    return "not reproduced", text


def verdict_8(st: dict, target: float, margin: float = 0.02,
              flat: float = 0.01) -> tuple[str, str]:
    s = st["local"]
    if not s.ran:
        return "not run", "local-only has not been run."
    final = float(np.mean(s.final_mean))
    gains = []
    for rounds, acc in s.curves:
        if len(rounds) < 2:
            continue
        late = np.flatnonzero(rounds >= 0.75 * rounds[-1])
        first = late[0] if len(late) >= 2 else len(rounds) - 2   # at least two evaluations
        gains.append(float(acc[-1] - acc[first]))
    gain = float(np.mean(gains)) if gains else math.nan
    below = final < target - margin
    is_flat = bool(gains) and gain < flat
    text = (f"final mean accuracy {final:.4f} (paper: about 0.87), "
            f"{'below' if below else 'not clearly below'} the {target:.0%} target "
            f"(margin {margin:.0%}); gain over the last 25% of rounds "
            f"{gain * 100:+.2f} points ({'flat' if is_flat else 'still rising'}: threshold "
            f"{flat * 100:.0f} point).")
    if below and is_flat:
        return "reproduced", text
    if below or is_flat:
        return "partly reproduced", text
    return "not reproduced", text


VERDICT_FNS: dict[int, Callable] = {1: verdict_1, 2: verdict_2, 3: verdict_3, 4: verdict_4,
                                    5: verdict_5, 6: verdict_6, 7: verdict_7, 8: verdict_8}
