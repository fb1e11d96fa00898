"""A wireless channel for the messages, and the energy and time bill (docs/wireless.md).

`channel=ideal` is the Bernoulli link failures of network.py. `channel=wireless` decides
whether each message arrives from a link budget, drawn in the jitted round from the round key:

  positions  uniform in an area_m x area_m square (random_geometric: the graph's own points,
             scaled); the base station (fedavg) at the centre
  path loss  PL(d) = PL0 + 10 gamma log10(max(d, 1 m) / 1 m)   dB  (log-distance)
  shadowing  S ~ N(0, sigma^2) dB per undirected pair (and per device-to-station link), drawn
             once from the seed: the same in both directions and every round
  mean SNR   snr_bar = P g / (N0 B),  g = 10^(-(PL(d) + S) / 10)
  fading     Rayleigh: snr = snr_bar h, h ~ Exp(1), drawn per link per round; one draw per
             undirected link (reciprocal) with link_failure_mode=symmetric, one per direction
             with asymmetric (fading=none: h = 1)
  air time   t = bits / (B log2(1 + snr))   (the link's Shannon rate at this round's SNR)
  arrival    snr >= theta and t <= T (the round deadline; with delay_rounds = D > 0 a message
             with k T < t <= (k + 1) T, k <= D, arrives k rounds late through the delay buffer)

so a link delivers with probability q = exp(-theta_eff / snr_bar), theta_eff = max(theta,
2^(bits / (B T (D + 1))) - 1) (the SNR the deadline asks for). Channels are orthogonal (no
interference).

Transmission. broadcast: a device sends its message once, rateless-coded, to all its neighbours;
each neighbour decodes when it has heard enough (after its own t) and the sender stops at the
last acknowledgement, at t_max = bits / (B log2(1 + theta)) (by then every neighbour above the
threshold has decoded), or at the deadline, whichever comes first. unicast: a separate copy to
every neighbour, concurrently on orthogonal channels, each at power P. A receiver listens to a
message until it decodes it or its sender stops.

The bill of a round (per device n, online devices only):
  compute  samples_n x kappa C f^2 J and samples_n x C / f s (C: cycles per sample, f: clock)
  radio    P x (its air time) + P_rx x (its listening time)
  duration max over devices of (compute time + air time capped by the deadline)
FedAvg's devices send their model to the base station (uplink, at the device's power) and
listen to its broadcast (downlink, at bs_tx_power_dbm); the station's energy is counted apart.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from p2pl_jax.errors import ConfigError

CHANNELS = ("ideal", "wireless")
CORRECTIONS = ("renormalize", "inverse_probability")
TRANSMISSIONS = ("broadcast", "unicast")
FADINGS = ("rayleigh", "none")   # none: snr = snr_bar every round (q is 0 or 1)
REFERENCE_M = 1.0          # the reference distance of the path loss
SHADOW_CUTOFF_SIGMAS = 5.0  # the radio graph ignores shadowing gains above this many sigmas
_POSITIONS_TAG, _SHADOW_TAG, _STATION_TAG = 71, 72, 73


def db_to_linear(db):
    return 10.0 ** (np.asarray(db, np.float64) / 10.0)


@dataclasses.dataclass(frozen=True)
class Radio:
    """The link budget (config fields of the same names; docs/wireless.md gives the sources of
    the defaults). Static: part of the compiled round."""

    area_m: float = 500.0
    tx_power_dbm: float = 0.0
    bs_tx_power_dbm: float = 30.0
    noise_density_dbm_hz: float = -174.0
    bandwidth_hz: float = 1e6
    path_loss_exponent: float = 3.0
    path_loss_ref_db: float = 40.0
    shadowing_std_db: float = 4.0
    snr_threshold_db: float = 5.0
    radio_margin_db: float = 3.0
    round_deadline_s: float = 0.0     # 0: no deadline
    rx_power_w: float = 0.05

    @property
    def noise_dbm(self) -> float:
        """N0 B in dBm."""
        return self.noise_density_dbm_hz + 10.0 * math.log10(self.bandwidth_hz)

    @property
    def threshold(self) -> float:
        return float(db_to_linear(self.snr_threshold_db))

    @property
    def deadline(self) -> float:
        return self.round_deadline_s if self.round_deadline_s > 0 else math.inf

    def path_loss_db(self, d):
        d = np.maximum(np.asarray(d, np.float64), REFERENCE_M)
        return self.path_loss_ref_db + 10.0 * self.path_loss_exponent * np.log10(d / REFERENCE_M)

    def mean_snr_db(self, d, shadow_db, power_dbm: float | None = None):
        """The mean (no fading) SNR in dB at distance d with shadowing `shadow_db`."""
        p = self.tx_power_dbm if power_dbm is None else power_dbm
        return p - self.path_loss_db(d) - np.asarray(shadow_db, np.float64) - self.noise_dbm

    def range_m(self, snr_db: float, power_dbm: float | None = None) -> float:
        """The distance at which the mean SNR without shadowing is `snr_db`."""
        p = self.tx_power_dbm if power_dbm is None else power_dbm
        loss = p - self.noise_dbm - snr_db - self.path_loss_ref_db
        return REFERENCE_M * 10.0 ** (loss / (10.0 * self.path_loss_exponent))


@dataclasses.dataclass(frozen=True)
class Link:
    """What the jitted round needs of the channel (static): the bits of one message, the
    bandwidth, threshold, deadline window, powers, and the run's options."""

    bits: float
    bandwidth_hz: float
    threshold: float
    deadline: float            # T (inf: none)
    window: float              # T (D + 1): the latest a message may arrive
    tx_w: float
    rx_w: float
    bs_tx_w: float
    transmission: str = "broadcast"
    correction: str = "renormalize"
    reciprocal: bool = True
    fading: str = "rayleigh"

    @property
    def t_max(self) -> float:
        """The air time of a message at the threshold SNR (the longest a decodable one takes)."""
        return self.bits / (self.bandwidth_hz * math.log2(1.0 + self.threshold))

    @property
    def theta_eff(self) -> float:
        """The SNR a message needs to arrive: the threshold, or what the deadline asks."""
        need = self.bits / (self.bandwidth_hz * self.window)
        deadline_snr = math.inf if need > 1000 else 2.0 ** need - 1.0
        return max(self.threshold, deadline_snr)


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """What `simulation.Simulator` needs to put the channel in the round (host side): the link
    budget, the devices' positions [N, 2] (m), the seed of the shadowing, the radio graph's
    shadowing of its edges (or None: drawn for the graph's pairs), the options, and the local
    phase's cost model (cycles_per_sample 0: XLA's training FLOPs of one sample, one per cycle).
    """

    radio: Radio
    positions: np.ndarray
    seed: int
    shadow: dict | None = None
    transmission: str = "broadcast"
    correction: str = "renormalize"
    fading: str = "rayleigh"
    cycles_per_sample: float = 0.0
    cpu_freq_hz: float = 1e9
    cpu_kappa: float = 1e-28


def make_link(radio: Radio, message_bytes: int, *, max_delay: int = 0,
              transmission: str = "broadcast", correction: str = "renormalize",
              reciprocal: bool = True, fading: str = "rayleigh") -> Link:
    deadline = radio.deadline
    return Link(bits=8.0 * message_bytes, bandwidth_hz=radio.bandwidth_hz,
                threshold=radio.threshold, deadline=deadline,
                window=deadline * (max_delay + 1), tx_w=float(db_to_linear(radio.tx_power_dbm)
                                                             * 1e-3),
                rx_w=radio.rx_power_w, bs_tx_w=float(db_to_linear(radio.bs_tx_power_dbm) * 1e-3),
                transmission=transmission, correction=correction, reciprocal=reciprocal,
                fading=fading)


def success_probability(mean_snr, theta_eff: float, fading: str = "rayleigh"):
    """q = exp(-theta_eff / snr_bar): P(snr_bar h >= theta_eff), h ~ Exp(1) (Rayleigh); without
    fading 1 where snr_bar >= theta_eff, else 0."""
    mean_snr = np.asarray(mean_snr, np.float64)
    if fading == "none":
        return (mean_snr >= theta_eff).astype(np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(mean_snr > 0, np.exp(-theta_eff / np.where(mean_snr > 0, mean_snr, 1.0)),
                        0.0)


# ----------------------------------------------------------------------------- host set-up

def positions(num_devices: int, area_m: float, seed: int) -> np.ndarray:
    """float64 [N, 2]: devices uniform in the area_m square (from the run's seed)."""
    rng = np.random.default_rng([seed, _POSITIONS_TAG])
    return rng.uniform(0.0, area_m, (num_devices, 2))


def pair_shadowing(pairs: np.ndarray, std_db: float, seed: int) -> np.ndarray:
    """float64 [E]: shadowing of the undirected pairs [E, 2] (i < j), drawn in the order of the
    sorted pairs from the seed: fixed for the run, the same in both directions."""
    rng = np.random.default_rng([seed, _SHADOW_TAG])
    draws = rng.standard_normal(len(pairs)) * std_db
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    out = np.empty(len(pairs))
    out[order] = draws
    return out


def radio_graph(pos: np.ndarray, radio: Radio, seed: int) -> tuple[sp.csr_array, dict]:
    """The radio graph: the pairs whose mean SNR (path loss and the pair's shadowing, no
    fading) is at least snr_threshold_db + radio_margin_db. Candidate pairs come from a k-d tree
    within the range where a shadowing gain of SHADOW_CUTOFF_SIGMAS sigmas could clear it.
    Returns (bool CSR adjacency, {(i, j): shadowing dB} of its edges)."""
    need = radio.snr_threshold_db + radio.radio_margin_db
    reach = radio.range_m(need - SHADOW_CUTOFF_SIGMAS * radio.shadowing_std_db)
    n = len(pos)
    pairs = np.array(sorted(cKDTree(pos).query_pairs(reach)), np.int64).reshape(-1, 2)
    shadow = pair_shadowing(pairs, radio.shadowing_std_db, seed)
    d = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
    keep = radio.mean_snr_db(d, shadow) >= need
    if n > 1 and not keep.any():
        d_min = float(d.min()) if len(d) else float(np.min(
            np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(n) * 1e30))
        raise ConfigError(
            f"topology=radio: no pair of devices can talk: the closest pair ({d_min:.1f} m) has a "
            f"mean SNR of {float(radio.mean_snr_db(d_min, 0.0)):.1f} dB (tx_power_dbm="
            f"{radio.tx_power_dbm} - path loss {float(radio.path_loss_db(d_min)):.1f} dB - noise "
            f"{radio.noise_dbm:.1f} dBm) without shadowing, below snr_threshold_db + "
            f"radio_margin_db = {need} dB; allowed: a higher tx_power_dbm, a smaller area_m, a "
            f"lower snr_threshold_db or radio_margin_db")
    pairs, shadow = pairs[keep], shadow[keep]
    recv = np.concatenate([pairs[:, 0], pairs[:, 1]])
    send = np.concatenate([pairs[:, 1], pairs[:, 0]])
    adj = sp.csr_array((np.ones(len(recv), bool), (recv, send)), shape=(n, n))
    adj.sort_indices()
    return adj, {(int(i), int(j)): float(s) for (i, j), s in zip(pairs, shadow)}


def link_tables(idx: np.ndarray, valid: np.ndarray, pos: np.ndarray, radio: Radio, seed: int,
                shadow: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean SNR [N, K] linear, shadowing dB [N, K]) of the neighbour-list entries n <- idx[n, k]
    (0 on self and padding). `shadow`: the radio graph's {(i, j): dB}; otherwise drawn for the
    graph's pairs (pair_shadowing)."""
    n, k = idx.shape
    me = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    real = valid & (idx != me)
    lo, hi = np.minimum(me, idx)[real], np.maximum(me, idx)[real]
    keys = lo * n + hi
    uniq, inverse = np.unique(keys, return_inverse=True)
    pairs = np.stack([uniq // n, uniq % n], axis=1)
    if shadow is None:
        s_pair = pair_shadowing(pairs, radio.shadowing_std_db, seed)
    else:
        s_pair = np.array([shadow.get((int(a), int(b)), 0.0) for a, b in pairs])
    s = np.zeros(idx.shape)
    s[real] = s_pair[inverse]
    d = np.linalg.norm(pos[me] - pos[idx], axis=-1)
    snr = np.where(real, db_to_linear(radio.mean_snr_db(d, s)), 0.0)
    return snr, s


def station_tables(pos: np.ndarray, radio: Radio, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uplink, downlink) mean SNR [N] (linear) of every device's link to the base station at
    the centre of the area (one shadowing draw per device, both directions)."""
    rng = np.random.default_rng([seed, _STATION_TAG])
    s = rng.standard_normal(len(pos)) * radio.shadowing_std_db
    d = np.linalg.norm(pos - radio.area_m / 2.0, axis=1)
    up = db_to_linear(radio.mean_snr_db(d, s))
    down = db_to_linear(radio.mean_snr_db(d, s, radio.bs_tx_power_dbm))
    return up, down


def check_budget(mean_snr: np.ndarray, link: Link, radio: Radio, what: str) -> None:
    """ConfigError with the link budget when no link of `mean_snr` (> 0 entries) can deliver."""
    live = mean_snr[mean_snr > 0]
    if live.size == 0:
        return
    best_db = float(10 * np.log10(live.max()))
    if success_probability(live.max(), link.theta_eff, link.fading) > 1e-9:
        return
    need = 10 * math.log10(link.theta_eff) if link.theta_eff < math.inf else math.inf
    why = (f"snr_threshold_db={radio.snr_threshold_db}" if link.theta_eff == link.threshold
           else f"round_deadline_s={radio.round_deadline_s} for a {link.bits:.0f}-bit message, "
                f"which needs {need:.1f} dB")
    raise ConfigError(
        f"channel=wireless: every {what} fails: the best has a mean SNR of {best_db:.1f} dB "
        f"(tx_power_dbm={radio.tx_power_dbm}, path_loss_ref_db={radio.path_loss_ref_db}, "
        f"path_loss_exponent={radio.path_loss_exponent}, noise {radio.noise_dbm:.1f} dBm in "
        f"bandwidth_hz={radio.bandwidth_hz}), against {why}; allowed: a higher tx_power_dbm, "
        f"a smaller area_m, a lower snr_threshold_db, a longer round_deadline_s or a wider "
        f"bandwidth_hz")


def training_flops_per_sample(model, input_shape: tuple) -> float:
    """XLA's FLOP count of one sample's forward and backward pass (cross-entropy loss)."""
    from p2pl_jax.models import init_params

    params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), input_shape))
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def loss(p, x):
        logits = model.apply({"params": p}, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])

    cost = jax.jit(jax.grad(loss)).lower(params, x).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


# ----------------------------------------------------------------------------- in the round

def _fading(key: jax.Array, shape: tuple, edge_id: jax.Array | None, num_edges: int,
            reciprocal: bool, fading: str = "rayleigh") -> jax.Array:
    """h ~ Exp(1) per entry: one draw per undirected edge (reciprocal) or per entry; 1 without
    fading."""
    if fading == "none":
        return jnp.ones(shape, jnp.float32)
    if reciprocal and edge_id is not None:
        return jax.random.exponential(key, (max(num_edges, 1),))[jnp.maximum(edge_id, 0)]
    return jax.random.exponential(key, shape)


def air_time(link: Link, snr: jax.Array) -> jax.Array:
    """bits / (B log2(1 + snr)) s (inf at snr 0)."""
    rate = link.bandwidth_hz * jnp.log2(1.0 + snr)
    return jnp.where(rate > 0, link.bits / jnp.where(rate > 0, rate, 1.0), jnp.inf)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One round's channel: arrive bool [N, K] (self column True), delays int32 [N, K] or None,
    and per device tx_time, rx_time [N] (s, radio on: what energy is billed for) and busy_time
    [N] (s from its first to its last bit on the air: the round's duration; unicast copies go
    concurrently, so this is the longest copy, not their sum)."""

    arrive: jax.Array
    delays: jax.Array | None
    tx_time: jax.Array
    rx_time: jax.Array
    busy_time: jax.Array


def graph_round(key: jax.Array, link: Link, mean_snr: jax.Array, idx: jax.Array,
                offered: jax.Array, edge_id: jax.Array, num_edges: int, listening: jax.Array,
                max_delay: int = 0) -> Outcome:
    """The channel of one round on the neighbour lists.

    offered [N, K]: the entries n <- idx[n, k] on which a message is sent (online sender, the
    round's graph); listening [N]: the receivers that are online. A message arrives when it is
    offered, its receiver listens, snr >= threshold and its air time fits the window.
    """
    n = idx.shape[0]
    is_self = jnp.arange(idx.shape[1])[None, :] == 0
    h = _fading(key, idx.shape, edge_id, num_edges, link.reciprocal, link.fading)
    snr = mean_snr * h
    t = air_time(link, snr)
    sent = offered & ~is_self
    heard = sent & listening[:, None]
    arrive = heard & (snr >= link.threshold) & (t <= link.window)
    delays = None
    if max_delay:
        late = jnp.ceil(t / link.deadline) - 1.0
        delays = jnp.where(arrive, jnp.clip(late, 0, max_delay), 0).astype(jnp.int32)
    decode = jnp.minimum(t, min(link.t_max, link.window))
    # A transmission (the broadcast, or one unicast copy) lasts until its receiver decodes it,
    # or until t_max or the window: an offline receiver never acknowledges.
    until = jnp.where(heard, decode, jnp.where(sent, min(link.t_max, link.window), 0.0))
    until = until.astype(jnp.float32)
    busy = jnp.zeros((n,), jnp.float32).at[idx].max(until)
    if link.transmission == "broadcast":   # one transmission: the sender stops at the last
        tx = busy
        listen = jnp.where(heard, jnp.minimum(decode, tx[idx]), 0.0)
    else:   # one copy per neighbour, concurrently: energy for each
        tx = jnp.zeros((n,), jnp.float32).at[idx].add(until)
        listen = jnp.where(heard, decode, 0.0)
    return Outcome(arrive=arrive | is_self, delays=delays, tx_time=tx,
                   rx_time=jnp.sum(listen, axis=1), busy_time=busy)


def station_round(key: jax.Array, link: Link, up_snr: jax.Array, down_snr: jax.Array,
                  online: jax.Array):
    """FedAvg's base-station links: (uploaded, downloaded bool [N], tx_time, rx_time [N],
    station air time []). The station broadcasts once (as a device does)."""
    k_up, k_down = jax.random.split(key)
    h_up = _fading(k_up, up_snr.shape, None, 0, False, link.fading)
    h_down = h_up if link.reciprocal else _fading(k_down, down_snr.shape, None, 0, False,
                                                  link.fading)
    cap = min(link.t_max, link.deadline)
    t_up = air_time(link, up_snr * h_up)
    uploaded = online & (up_snr * h_up >= link.threshold) & (t_up <= link.deadline)
    tx = jnp.where(online, jnp.minimum(t_up, cap), 0.0)
    t_down = air_time(link, down_snr * h_down)
    downloaded = online & (down_snr * h_down >= link.threshold) & (t_down <= link.deadline)
    station = jnp.max(jnp.where(online, jnp.minimum(t_down, cap), 0.0))
    rx = jnp.where(online, jnp.minimum(jnp.minimum(t_down, cap), station), 0.0)
    return uploaded, downloaded, tx, rx, station


def inverse_probability_weights(kind: str, base: jax.Array, idx: jax.Array, arrive: jax.Array,
                                q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(weights [N, K], clipped bool [N]) with each arrived neighbour's static weight divided by
    its link's success probability q, the self weight absorbing the rest: E[W] = the static W
    when no clip is needed. When the scaled weights sum to S > 1 (the self weight would be
    negative) they are scaled by 1 / S and the self weight is 0, so W stays stochastic with
    nonnegative entries.

    kind "row": a receiver's weights over what it received (rows sum to 1); "column": a
    sender's split over what it delivered (push-sum; columns sum to 1, sums over idx).
    """
    n = idx.shape[0]
    is_self = jnp.arange(idx.shape[1])[None, :] == 0
    nb = arrive & ~is_self
    scaled = jnp.where(nb, base / jnp.where(q > 0, q, 1.0), 0.0)
    if kind == "column":
        total = jnp.zeros((n,), scaled.dtype).at[idx].add(scaled)
    else:
        total = jnp.sum(scaled, axis=1)
    clipped = total > 1.0
    shrink = jnp.where(clipped, 1.0 / jnp.where(clipped, total, 1.0), 1.0)
    own = jnp.where(clipped, 0.0, 1.0 - total)
    w = scaled * (shrink[idx] if kind == "column" else shrink[:, None])
    return jnp.where(is_self, own[:, None], w).astype(jnp.float32), clipped


def bill(link: Link, tx_time: jax.Array, rx_time: jax.Array, compute_j: jax.Array,
         compute_s: jax.Array, online: jax.Array, extra_s=0.0,
         busy_time: jax.Array | None = None) -> dict:
    """The round's energy per device [N] (J) and its simulated duration [] (s): the slowest
    device's compute plus its time on the air (`busy_time`, default tx_time) capped by the
    deadline, plus `extra_s` (the station's broadcast for fedavg)."""
    on_air = tx_time if busy_time is None else busy_time
    energy = jnp.where(online, compute_j, 0.0) + link.tx_w * tx_time + link.rx_w * rx_time
    busy = jnp.where(online, compute_s + jnp.minimum(on_air, link.deadline), 0.0)
    return {"energy": energy.astype(jnp.float32),
            "duration": (jnp.max(busy) + extra_s).astype(jnp.float32),
            "air": jnp.sum(tx_time).astype(jnp.float32)}
