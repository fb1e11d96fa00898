"""The wireless channel (wireless.py) and its place in the round (simulation.py), each checked
against a numpy / Python-loop reference that does not reuse the code it checks.

Fading is reproduced from the key as `wireless._fading` draws it (jax.random.exponential on the
same key and shape); everything downstream of the draw is recomputed here in float64. Compiles
are the cost (threefry above all), so every graph_round / bill / station_round case runs in one
compiled program on lists of one shape with one key (the `channel` fixture), and the two
simulators that step rounds are module fixtures.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from p2pl_jax import graphs, rng, simulation, wireless
from p2pl_jax.models import make_model

BITS, BW = 8e4, 1e6           # a message of 0.08 s at 1 bit/s/Hz
THETA = 10 ** (5.0 / 10)      # the 5 dB threshold
T_MAX = BITS / (BW * math.log2(1 + THETA))   # the air time at the threshold, 0.0389 s
TX_W, RX_W, BS_W = 1e-3, 0.05, 2e-3
COMPUTE_J, COMPUTE_S = np.array([0.01, 0.02, 0.03]), np.array([0.004, 0.002, 0.001])


def _link(deadline=math.inf, max_delay=0, reciprocal=False, transmission="broadcast",
          fading="rayleigh"):
    return wireless.Link(bits=BITS, bandwidth_hz=BW, threshold=THETA, deadline=deadline,
                         window=deadline * (max_delay + 1), tx_w=TX_W, rx_w=RX_W, bs_tx_w=BS_W,
                         transmission=transmission, reciprocal=reciprocal, fading=fading)


def _complete_lists(n):
    return simulation.graph_lists(graphs.sparse_adjacency(nx.complete_graph(n)))


def _air_time(snr, bits=BITS, bw=BW):
    """bits / (B log2(1 + snr)) in float64 (inf at snr 0)."""
    snr = np.asarray(snr, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(snr > 0, bits / (bw * np.log2(1.0 + snr)), np.inf)


def _snr(mean, h):
    """The round's SNR as the round computes it (float32 product), then float64."""
    return (np.asarray(mean, np.float32) * np.asarray(h, np.float32)).astype(np.float64)


def _reverse(idx):
    """rev[n, k] = the column of n in the list of idx[n, k] (Python loop)."""
    rev = np.zeros_like(idx)
    for n in range(idx.shape[0]):
        for k in range(1, idx.shape[1]):
            rev[n, k] = list(idx[idx[n, k]]).index(n)
    return rev


def _tx_rx_reference(idx, offered, listening, t, t_max, window, transmission):
    """Python loops: each sender's air time and each receiver's listening time. broadcast: the
    sender stops at its last receiver's decode time min(t, t_max, window) (an offline receiver
    never acknowledges: min(t_max, window)); unicast: the sum of its copies' times."""
    n, k = idx.shape
    cap = min(t_max, window)
    tx, rx = np.zeros(n), np.zeros(n)
    for m in range(n):
        times = [min(t[r, j], cap) if listening[r] else cap
                 for r in range(n) for j in range(1, k) if idx[r, j] == m and offered[r, j]]
        if times:
            tx[m] = max(times) if transmission == "broadcast" else sum(times)
    for r in range(n):
        for j in range(1, k):
            if listening[r] and offered[r, j]:
                rx[r] += min(t[r, j], cap, tx[idx[r, j]])
    return tx, rx


def _bill_reference(tx, rx, compute_j, compute_s, online, deadline, tx_w=TX_W, rx_w=RX_W,
                    extra_s=0.0, on_air=None):
    """energy = compute (online) + P_tx tx + P_rx rx; duration = max(compute + min(on air, T)),
    on air = tx (broadcast) or the longest copy (unicast: the copies go concurrently)."""
    on_air = tx if on_air is None else on_air
    energy = np.where(online, compute_j, 0.0) + tx_w * tx + rx_w * rx
    busy = np.where(online, compute_s + np.minimum(on_air, deadline), 0.0)
    return energy, busy.max() + extra_s


# Every graph_round case below runs on lists of one shape [ROWS, WIDTH] with EDGES edges and the
# same key, so the whole battery draws (and compiles) one Rayleigh draw per entry and one per
# edge: threefry dominates the compile time.
ROWS, WIDTH, EDGES = 60000, 5, 60000
KEY_SEED = 0


class Copies:
    """R disjoint copies of a tiny graph's lists (device i of copy c is c n + i, edge e of copy
    c is c E + e), padded to [ROWS, WIDTH] (idle devices and padding columns that repeat the
    device, as graphs.neighbour_lists pads): one round on the union draws R independent rounds
    of the tiny graph. `split` views the union's arrays as [R, n, K]."""

    def __init__(self, lists, copies):
        n, k = lists.idx.shape
        assert copies * n <= ROWS and copies * lists.num_edges <= EDGES and k <= WIDTH
        self.lists, self.n, self.k, self.copies = lists, n, k, copies
        shift = np.arange(copies)[:, None, None]
        self.idx = self._pad((lists.idx[None] + n * shift).reshape(-1, k), None)
        edge = np.where(lists.edge_id[None] >= 0, lists.edge_id[None]
                        + lists.num_edges * shift, -1)
        self.edge_id = self._pad(edge.reshape(-1, k), -1)

    def _pad(self, a, fill):
        """[R n, k] -> [ROWS, WIDTH] or [R n] -> [ROWS], the rest `fill` (None: the row index,
        as neighbour_lists pads)."""
        out = np.zeros((ROWS, WIDTH) if a.ndim == 2 else (ROWS,), a.dtype)
        if fill is None:
            out += (np.arange(ROWS)[:, None] if a.ndim == 2 else np.arange(ROWS)).astype(a.dtype)
        else:
            out[...] = fill
        out[tuple(slice(0, m) for m in a.shape)] = a
        return out

    def per_copy(self, a, ndim):
        """A table of the tiny graph (ndim dimensions) for every copy: [R, ...]."""
        a = np.asarray(a)
        return a if a.ndim > ndim else np.broadcast_to(a, (self.copies, *a.shape))

    def table(self, a, ndim, fill):
        """The union's [ROWS, WIDTH] / [ROWS] table of a tiny graph's table (or one per copy)."""
        a = self.per_copy(a, ndim)
        return self._pad(a.reshape(-1, *a.shape[2:]), fill)

    def split(self, a):
        a = np.asarray(a)[:self.copies * self.n]
        a = a[:, :self.k] if a.ndim == 2 else a
        return a.reshape(self.copies, self.n, *a.shape[1:])


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One graph_round on the copies of a tiny graph: mean [n, K], offered [n, K] and listening
    [n] for every copy, or offered and listening per copy ([R, n, K], [R, n])."""

    link: wireless.Link
    copies: Copies
    mean: np.ndarray
    offered: np.ndarray
    listening: np.ndarray
    max_delay: int = 0
    bill: bool = False


def _mean_table(db):
    """Linear mean SNR from dB on the non-self columns (0 on self)."""
    db = np.asarray(db, np.float64)
    return np.where(np.arange(db.shape[1]) > 0, 10 ** (db / 10), 0.0)


Q_MEAN = _mean_table([[0, -2, 3], [0, 6, 9], [0, 12, 16]])
PAIR_DB = np.array([[0, 4, 8, 12], [4, 0, 6, 10], [8, 6, 0, 14], [12, 10, 14, 0]], float)
BILL_MEAN = _mean_table([[0, 2, 7], [0, 4, 11], [0, 6, 9]])
DEADLINE_OFFERED = np.ones((5, 5), bool)
DEADLINE_OFFERED[0, 2] = False
DEADLINE_LISTENING = np.array([True, True, True, False, True])
STATION_UP = 10 ** (np.array([3.0, 8.0, 12.0]) / 10)
STATION_DOWN = 10 ** (np.array([6.0, 10.0, 2.0]) / 10)
STATION_ONLINE = np.array([True, True, False])
STATION_CASES = {"station-reciprocal": (True, math.inf),      # capped at t_max
                 "station-independent": (False, 0.03)}    # capped at the deadline < t_max
STATION_ROUNDS = 60


def _graph_cases():
    l3, l4, l5 = _complete_lists(3), _complete_lists(4), _complete_lists(5)
    q, sym, five, bill = Copies(l3, 20000), Copies(l4, 300), Copies(l5, 200), Copies(l3, 64)
    ones = lambda n: np.ones(n, bool)
    idx5 = l5.idx
    cases = {
        "q-inf": Case(_link(), q, Q_MEAN, l3.valid, ones(3)),
        "q-deadline": Case(_link(0.02), q, Q_MEAN, l3.valid, ones(3)),
        "q-window": Case(_link(0.01, 1, True), q, Q_MEAN, l3.valid, ones(3), max_delay=1),
        "no-fading": Case(_link(0.02, fading="none"), Copies(l3, 2), Q_MEAN, l3.valid, ones(3)),
        "deadline": Case(_link(0.03), five, _mean_table(3.0 * idx5 + 2.0 * np.arange(5)[:, None]),
                         DEADLINE_OFFERED, DEADLINE_LISTENING),
        "delays": Case(_link(0.01, 2), five,
                       _mean_table(8.0 + 3.0 * idx5 + 2.0 * np.arange(5)[:, None]), l5.valid,
                       ones(5), max_delay=2),
    }
    sym_mean = np.take_along_axis(10 ** (PAIR_DB / 10), l4.idx, axis=1) * (np.arange(4) > 0)
    for reciprocal in (True, False):
        cases[f"sym-{reciprocal}"] = Case(_link(0.04, reciprocal=reciprocal), sym, sym_mean,
                                          l4.valid, ones(4))
    part = np.array([True, True, False])
    for name, deadline, reciprocal, online in (("broadcast-inf", math.inf, False, part),
                                               ("broadcast-0.03", 0.03, True, part)):
        cases["bill-" + name] = Case(_link(deadline, reciprocal=reciprocal), bill, BILL_MEAN,
                                     l3.valid & online[l3.idx], online, bill=True)
    # unicast: copies 0..63 all online, copies 64..127 with device 2 offline
    online = np.repeat(np.stack([ones(3), part]), 64, axis=0)
    cases["bill-unicast"] = Case(_link(0.05, transmission="unicast"), Copies(l3, 128),
                                 BILL_MEAN, l3.valid & online[:, l3.idx], online, bill=True)
    return cases


@pytest.fixture(scope="module")
def channel():
    """{case name: numpy outputs} of every graph_round case (arrive, delays, tx, rx [R, n, ...],
    the fading h [R, n, K] as _fading draws it: jax.random.exponential on the same key and
    shape, and, for bill cases, wireless.bill of every copy) and of station_round over
    STATION_ROUNDS keys, from one compiled program."""
    cases = _graph_cases()
    inputs = {name: dict(mean=jnp.asarray(c.copies.table(c.mean, 2, 0.0), jnp.float32),
                         idx=jnp.asarray(c.copies.idx), edge_id=jnp.asarray(c.copies.edge_id),
                         offered=jnp.asarray(c.copies.table(c.offered, 2, False)),
                         listening=jnp.asarray(c.copies.table(c.listening, 1, False)))
              for name, c in cases.items()}

    def stations(seed):
        key = jax.random.PRNGKey(seed)
        k_up, k_down = jax.random.split(key)
        up, down = (jnp.asarray(a, jnp.float32) for a in (STATION_UP, STATION_DOWN))
        got = {name: wireless.station_round(key, _link(deadline, reciprocal=reciprocal), up,
                                            down, jnp.asarray(STATION_ONLINE))
               for name, (reciprocal, deadline) in STATION_CASES.items()}
        return got, (jax.random.exponential(k_up, (3,)), jax.random.exponential(k_down, (3,)))

    def run(inputs):
        key = jax.random.PRNGKey(KEY_SEED)
        out = {"h-entry": jax.random.exponential(key, (ROWS, WIDTH)),
               "h-edge": jax.random.exponential(key, (EDGES,))}
        for name, c in cases.items():
            a = inputs[name]
            r = wireless.graph_round(key, c.link, a["mean"], a["idx"], a["offered"],
                                     a["edge_id"], EDGES, a["listening"], c.max_delay)
            out[name] = dict(arrive=r.arrive, delays=r.delays, tx=r.tx_time, rx=r.rx_time)
            if c.bill:
                rows, shape = c.copies.copies * c.copies.n, (c.copies.copies, c.copies.n)
                cut = lambda v, rows=rows, shape=shape: v[:rows].reshape(shape)
                out[name]["bill"] = jax.vmap(lambda tx, rx, on, busy, c=c: wireless.bill(
                    c.link, tx, rx, jnp.asarray(COMPUTE_J, jnp.float32),
                    jnp.asarray(COMPUTE_S, jnp.float32), on, busy_time=busy))(
                    cut(r.tx_time), cut(r.rx_time), cut(a["listening"]), cut(r.busy_time))
        out["stations"] = jax.lax.map(stations, jnp.arange(STATION_ROUNDS))
        return out

    out = jax.tree.map(np.asarray, jax.jit(run)(inputs))
    h_entry, h_edge = (np.asarray(out.pop(k), np.float64) for k in ("h-entry", "h-edge"))
    got, fading = out.pop("stations")
    for name in STATION_CASES:
        out[name] = (got[name], fading)
    for name, c in cases.items():
        res = out[name]
        h = h_edge[np.maximum(c.copies.edge_id, 0)] if c.link.reciprocal else h_entry
        res["h"] = c.copies.split(np.ones_like(h) if c.link.fading == "none" else h)
        for field in ("arrive", "delays", "tx", "rx"):
            if res.get(field) is not None:
                res[field] = c.copies.split(res[field])
        res["case"] = c
    return out


# ----------------------------------------------------------------------------- 1. q formula

@pytest.mark.parametrize("name", ["q-inf",          # theta_eff = theta
                                  "q-deadline",     # T = 0.02 asks 2^(0.08 / 0.02) - 1 = 15
                                  "q-window"])      # T (D + 1) = 0.02, one draw per edge
def test_success_rate_matches_formula(channel, name):
    """Over 20000 rounds every link delivers with q = exp(-theta_eff / snr_bar), theta_eff =
    max(theta, 2^(bits / (B T (D + 1))) - 1), within 4 binomial sigmas."""
    res = channel[name]
    link, rounds = res["case"].link, res["case"].copies.copies
    deadline, max_delay = link.deadline, res["case"].max_delay
    need = BITS / (BW * deadline * (max_delay + 1))
    theta_eff = max(THETA, 2.0 ** need - 1.0)
    q = np.exp(-theta_eff / Q_MEAN[:, 1:])
    rate = res["arrive"][:, :, 1:].mean(axis=0)
    bound = 4 * np.sqrt(q * (1 - q) / rounds) + 1.0 / rounds
    np.testing.assert_array_less(np.abs(rate - q), bound)
    assert res["arrive"][:, :, 0].all()   # a device always has its own model
    if deadline < math.inf:   # the deadline matters: far from the no-deadline rate
        assert theta_eff == pytest.approx(15.0)
        no_deadline = np.exp(-THETA / Q_MEAN[:, 1:])
        assert np.all(np.abs(rate - no_deadline)[1:] > 10 * bound[1:])


def test_no_fading_is_deterministic(channel):
    """fading=none: h = 1, so a link arrives iff snr_bar >= theta_eff (q is 0 or 1), in every
    round, with the air times of snr_bar."""
    res = channel["no-fading"]
    theta_eff = max(THETA, 2.0 ** (BITS / (BW * 0.02)) - 1.0)
    want = Q_MEAN >= theta_eff
    want[:, 0] = True
    assert 0 < want[:, 1:].mean() < 1
    idx, t = _complete_lists(3).idx, _air_time(Q_MEAN)
    tx, rx = _tx_rx_reference(idx, idx >= 0, np.ones(3, bool), t, T_MAX, 0.02, "broadcast")
    for r in range(2):
        np.testing.assert_array_equal(res["arrive"][r], want)
        np.testing.assert_allclose(res["tx"][r], tx, rtol=1e-5)
        np.testing.assert_allclose(res["rx"][r], rx, rtol=1e-5)


# ----------------------------------------------------------------------------- 2. reciprocity

def test_reciprocal_fading_is_symmetric(channel):
    """reciprocal=True: n <- m arrives iff m <- n in every draw (threshold and deadline);
    reciprocal=False: not in many draws."""
    idx = _complete_lists(4).idx
    rev = _reverse(idx)
    for reciprocal in (True, False):
        arrive = channel[f"sym-{reciprocal}"]["arrive"]
        back = np.zeros_like(arrive)
        for n in range(4):
            for k in range(1, 4):
                back[:, n, k] = arrive[:, idx[n, k], rev[n, k]]
        assert 0.2 < arrive[:, :, 1:].mean() < 0.8
        if reciprocal:
            np.testing.assert_array_equal(arrive[:, :, 1:], back[:, :, 1:])
        else:
            assert (arrive != back)[:, :, 1:].any(axis=(1, 2)).mean() > 0.3


# ----------------------------------------------------------------------------- 3. shadowing

RADIO = wireless.Radio(area_m=200.0, shadowing_std_db=4.0)


def _mean_snr_db(radio, d, s, power_dbm):
    """P - PL0 - 10 gamma log10(max(d, 1 m)) - S - (N0 + 10 log10 B), by hand."""
    noise = radio.noise_density_dbm_hz + 10 * math.log10(radio.bandwidth_hz)
    return (power_dbm - radio.path_loss_ref_db
            - 10 * radio.path_loss_exponent * math.log10(max(d, 1.0)) - s - noise)


def test_link_tables_fixed_symmetric_and_by_hand():
    """link_tables: the same for the same seed, symmetric, and the link budget of the docstring
    (with the shadowing it returns; one pair closer than the 1 m reference distance)."""
    pos = np.array([[0.0, 0.0], [0.3, 0.4], [30.0, 40.0], [100.0, 0.0]])
    lists = _complete_lists(4)
    idx, rev = lists.idx, _reverse(lists.idx)
    snr, s = wireless.link_tables(lists.idx, lists.valid, pos, RADIO, seed=5)
    snr2, s2 = wireless.link_tables(lists.idx, lists.valid, pos, RADIO, seed=5)
    np.testing.assert_array_equal(snr, snr2)
    np.testing.assert_array_equal(s, s2)
    _, s_other = wireless.link_tables(lists.idx, lists.valid, pos, RADIO, seed=6)
    assert not np.allclose(s[:, 1:], s_other[:, 1:])
    assert np.all(snr[:, 0] == 0) and np.all(s[:, 0] == 0)
    assert np.all(s[:, 1:] != 0)
    for n in range(4):
        for k in range(1, 4):
            m = idx[n, k]
            assert s[n, k] == s[m, rev[n, k]] and snr[n, k] == snr[m, rev[n, k]]
            d = float(np.hypot(*(pos[n] - pos[m])))
            want = 10 ** (_mean_snr_db(RADIO, d, s[n, k], RADIO.tx_power_dbm) / 10)
            np.testing.assert_allclose(snr[n, k], want, rtol=1e-12)
    # a radio graph's shadowing dict is used as given, in both directions (missing pairs: 0)
    given = {(0, 1): 2.5, (1, 3): -3.0}
    _, s_given = wireless.link_tables(lists.idx, lists.valid, pos, RADIO, seed=5, shadow=given)
    for n in range(4):
        for k in range(1, 4):
            pair = (min(n, idx[n, k]), max(n, idx[n, k]))
            assert s_given[n, k] == given.get(pair, 0.0)


# ----------------------------------------------------------------------------- 4. deadline

def test_deadline_drops_exactly_the_long_messages(channel):
    """arrive == offered & listening & (snr >= theta) & (t <= T), entry by entry, with the
    fading reproduced from the key; an unoffered entry and an offline receiver never arrive."""
    res = channel["deadline"]
    case = res["case"]
    snr = _snr(case.mean, res["h"])
    t = _air_time(snr)
    base = case.offered & case.listening[:, None] & (np.arange(5) > 0)
    want = base & (snr >= THETA) & (t <= 0.03)
    want[:, :, 0] = True
    np.testing.assert_array_equal(res["arrive"], want)
    assert res["delays"] is None
    assert (base & (snr < THETA)).sum() > 50                    # lost below the threshold
    assert (base & (snr >= THETA) & (t > 0.03)).sum() > 50      # lost to the deadline alone
    assert (~base & (snr >= THETA) & (t <= 0.03))[:, :, 1:].sum() > 50   # not sent / heard


def test_delays_are_whole_rounds_late(channel):
    """max_delay D: delays == ceil(t / T) - 1 for what arrived; t > (D + 1) T is lost."""
    res = channel["delays"]
    deadline, max_delay = 0.01, 2
    snr = _snr(res["case"].mean, res["h"])
    t = _air_time(snr)
    nb = np.arange(5) > 0
    want = nb & (snr >= THETA) & (t <= deadline * (max_delay + 1))
    np.testing.assert_array_equal(res["arrive"][:, :, 1:], want[:, :, 1:])
    late = np.ceil(t / deadline) - 1
    np.testing.assert_array_equal(res["delays"][want], late[want])
    assert np.all(res["delays"][~want] == 0)
    assert {0, 1, 2} <= set(np.unique(late[want]).tolist())    # every delay occurs
    assert (nb & (snr >= THETA) & (t > deadline * (max_delay + 1))).sum() > 20   # lost


# ----------------------------------------------------------------------------- 5. bill

def _check_bill(res, copies=None):
    """graph_round's tx and rx times and bill's energy, duration and air time of every copy
    (or of `copies`) against the loop references."""
    case = res["case"]
    idx, link = case.copies.lists.idx, case.link
    offered, online = case.copies.per_copy(case.offered, 2), case.copies.per_copy(
        case.listening, 1)
    t = _air_time(_snr(case.mean, res["h"]))
    capped = []
    for r in copies or range(case.copies.copies):
        want_tx, want_rx = _tx_rx_reference(idx, offered[r], online[r], t[r], T_MAX,
                                            link.deadline, link.transmission)
        np.testing.assert_allclose(res["tx"][r], want_tx, rtol=1e-5)
        np.testing.assert_allclose(res["rx"][r], want_rx, rtol=1e-5)
        longest, _ = _tx_rx_reference(idx, offered[r], online[r], t[r], T_MAX, link.deadline,
                                      "broadcast")   # the longest transmission of a sender
        energy, duration = _bill_reference(want_tx, want_rx, COMPUTE_J, COMPUTE_S, online[r],
                                           link.deadline, on_air=longest)
        np.testing.assert_allclose(res["bill"]["energy"][r], energy, rtol=1e-5)
        np.testing.assert_allclose(res["bill"]["duration"][r], duration, rtol=1e-5)
        np.testing.assert_allclose(res["bill"]["air"][r], want_tx.sum(), rtol=1e-5)
        capped.append(t[r][offered[r] & (np.arange(3) > 0)] > min(T_MAX, link.deadline))
    assert 0 < np.mean(capped) < 1   # some messages hit the cap, some do not


@pytest.mark.parametrize("name", ["bill-broadcast-inf",     # capped at t_max
                                  "bill-broadcast-0.03",    # capped at the deadline < t_max
                                  # copies sum above the deadline; the duration takes the
                                  # longest copy (concurrent on orthogonal channels)
                                  "bill-unicast"])
def test_air_time_and_energy_add_up(channel, name):
    """3 devices: the broadcast sender stops at its last receiver's decode time (capped at
    t_max = bits / (B log2(1 + theta)) and the window; an offline receiver never acknowledges),
    unicast sums its copies; energy = compute + P_tx tx + P_rx rx and duration = max(compute +
    min(longest transmission, T)), against loops over senders and receivers."""
    res = channel[name]
    if res["case"].link.transmission == "broadcast":
        _check_bill(res)
        assert not res["case"].listening[2]
        assert res["tx"][:, 2].max() == 0 and res["rx"][:, 2].max() == 0   # offline: silent
    else:   # the copies with every device online
        _check_bill(res, range(64))
        assert (res["tx"][:64] > res["case"].link.deadline).any()


def test_unicast_copy_to_offline_receiver_is_not_acknowledged(channel):
    """unicast with device 2 offline: the copies sent to it last until t_max or the window."""
    _check_bill(channel["bill-unicast"], range(64, 128))


def test_station_round_against_numpy(channel):
    """FedAvg's base-station links on 3 devices (one offline): uploads, downloads, device air
    and listening times and the station's broadcast time, with and without reciprocal draws."""
    for name, (reciprocal, deadline) in STATION_CASES.items():
        (uploaded_, downloaded_, tx_, rx_, station_), (h_up, h_down) = channel[name]
        h_down = h_up if reciprocal else h_down
        cap = min(T_MAX, deadline)
        online = STATION_ONLINE
        snr_up, snr_down = _snr(STATION_UP, h_up), _snr(STATION_DOWN, h_down)
        t_up, t_down = _air_time(snr_up), _air_time(snr_down)
        uploaded = online & (snr_up >= THETA) & (t_up <= deadline)
        downloaded = online & (snr_down >= THETA) & (t_down <= deadline)
        tx = np.where(online, np.minimum(t_up, cap), 0.0)
        station = np.where(online, np.minimum(t_down, cap), 0.0).max(axis=1)
        rx = np.where(online, np.minimum(np.minimum(t_down, cap), station[:, None]), 0.0)
        np.testing.assert_array_equal(uploaded_, uploaded)
        np.testing.assert_array_equal(downloaded_, downloaded)
        np.testing.assert_allclose(tx_, tx, rtol=1e-5)
        np.testing.assert_allclose(rx_, rx, rtol=1e-5)
        np.testing.assert_allclose(station_, station, rtol=1e-5)
        for got in (uploaded, downloaded):   # both outcomes of both online links occurred
            assert 0 < got[:, 0].mean() < 1 and 0 < got[:, 1].mean() < 1
        assert not (uploaded | downloaded)[:, 2].any()


# ----------------------------------------------------------------------------- 6. weights

def _inverse_probability_reference(kind, base, idx, arrive, q):
    """Per-device loop: scale the arrived neighbours' weights by 1 / q; the self weight takes
    the rest, or, when they sum to S > 1, scale them by 1 / S and give the self weight 0. row:
    a receiver's row; column: a sender's entries (over idx)."""
    n, k = idx.shape
    w = np.zeros((n, k))
    for d in range(n):
        mine = [(r, j) for r in range(n) for j in range(1, k)
                if arrive[r, j] and (r == d if kind == "row" else idx[r, j] == d)]
        total = sum(base[r, j] / q[r, j] for r, j in mine)
        shrink = 1.0 / total if total > 1 else 1.0
        for r, j in mine:
            w[r, j] = base[r, j] / q[r, j] * shrink
        w[d, 0] = 1.0 - total * shrink
    return w


@pytest.mark.parametrize("kind", ["row", "column"])
def test_inverse_probability_weights(kind):
    """inverse_probability_weights against a per-device loop, with a clipped device (scaled
    weights summing above 1) and an unclipped one; stochastic with nonnegative entries."""
    lists = _complete_lists(4)
    idx = lists.idx
    sizes = np.array([5.0, 10.0, 20.0, 40.0])
    base = sizes[idx] / sizes[idx].sum(axis=1, keepdims=True)   # data-size rows
    if kind == "column":   # sender m splits as row m: entry (n, k) with idx[n, k] = m
        base = np.array([[base[idx[n, k], list(idx[idx[n, k]]).index(n)] if k else base[n, 0]
                          for k in range(4)] for n in range(4)])
    q = np.array([[1.0, 0.9, 0.3, 0.2], [1.0, 0.95, 0.9, 0.85], [1.0, 0.5, 0.4, 0.9],
                  [1.0, 0.3, 0.6, 0.7]])
    arrive = np.array([[1, 1, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1], [1, 0, 1, 0]], bool)
    w, clipped = jax.jit(wireless.inverse_probability_weights, static_argnums=0)(
        kind, jnp.asarray(base, jnp.float32), jnp.asarray(idx), jnp.asarray(arrive),
        jnp.asarray(q, jnp.float32))
    want = _inverse_probability_reference(kind, base, idx, arrive, q)
    np.testing.assert_allclose(np.asarray(w), want, atol=1e-6)
    w = np.asarray(w, np.float64)
    assert np.all(w >= 0) and np.all(w[~arrive] == 0)
    sums = w.sum(axis=1) if kind == "row" else np.bincount(idx.ravel(), w.ravel(), minlength=4)
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)
    clipped = np.asarray(clipped)
    assert clipped.any() and not clipped.all()
    own = w[:, 0]
    assert np.all(own[clipped] == 0.0)
    assert np.all(own[~clipped] > 0)


# ----------------------------------------------------------------------------- 7. simulator

N = 5
SIZES = np.array([6, 8, 10, 12, 14])
CYCLES, FREQ, KAPPA = 2e4, 1e9, 1e-28
ROUNDS = 3


def _data():
    gen = np.random.default_rng(0)
    x = gen.integers(0, 255, (SIZES.sum(), 28, 28, 1), dtype=np.uint8)
    y = gen.integers(0, 10, SIZES.sum())
    ends = np.cumsum(SIZES)
    return x, y, [np.arange(e - s, e) for s, e in zip(SIZES, ends)]


def _simulator(algorithm, channel, **kw):
    x, y, parts = _data()
    return simulation.Simulator(
        model=make_model("mlp", hidden_sizes=(8,), num_classes=10), x=x, y=y, parts=parts,
        adj=graphs.sparse_adjacency(nx.complete_graph(N)), algorithm=algorithm,
        sync_mode="none", local_buckets=1, channel=channel, **kw)


def _setup(radio, seed):
    return wireless.Setup(radio=radio, positions=wireless.positions(N, radio.area_m, seed),
                          seed=seed, cycles_per_sample=CYCLES, cpu_freq_hz=FREQ,
                          cpu_kappa=KAPPA)


def _np_tree(tree):
    return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def _initial_state(sim, seed):
    """A state before round 1 without compiling the initialisation (its structure from
    eval_shape): independent random models per device, zero momentum and counters."""
    shapes = jax.eval_shape(sim.init_state, rng.root_key(seed))
    state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    leaves, tree = jax.tree.flatten(state.params)
    gen = np.random.default_rng(seed)
    params = [jnp.asarray(gen.normal(0.0, 0.1, leaf.shape), leaf.dtype) for leaf in leaves]
    return state.replace(params=jax.tree.unflatten(tree, params), rng=rng.root_key(seed))


def _run(sim, rounds, draws, seed=0):
    """Steps `sim` (return_local) and records per round the local models, the new parameters,
    the metrics, the counters and `draws(channel key)` (one jit: the round's channel)."""
    state, hp = _initial_state(sim, seed), simulation.make_hparams(0.05, 0.9)
    of_round = jax.jit(lambda root, r: draws(rng.channel_key(rng.round_key(root, r))))
    record = []
    for _ in range(rounds):
        channel = jax.tree.map(np.asarray, of_round(state.rng, state.round))
        state, metrics, local = sim.step(state, hp, return_local=True)
        record.append(dict(channel=channel, local=_np_tree(local), params=_np_tree(state.params),
                           metrics={k: float(v) for k, v in metrics.items()},
                           comm={k: np.asarray(v) for k, v in state.comm.items()}))
    return record


def _bits(record):
    """The bits of one message: 32 per parameter of one device's model."""
    return 32.0 * sum(leaf[0].size for leaf in record[0]["local"])


P2PL_RADIO = wireless.Radio(area_m=300.0, round_deadline_s=0.08)


@pytest.fixture(scope="module")
def p2pl_run():
    """p2pl, channel=wireless, 5 devices, complete graph: ROUNDS rounds, with each round's
    graph_round arrivals and fading draws (one per undirected edge: link_mode=symmetric)."""
    sim = _simulator("p2pl", _setup(P2PL_RADIO, seed=3))
    snr_before = np.asarray(sim.arrays.channel["snr"]).copy()
    a, spec = sim.arrays, sim.spec

    def draws(key):
        out = wireless.graph_round(key, spec.link, a.channel["snr"], a.idx, a.valid, a.edge_id,
                                   spec.num_edges, jnp.ones((N,), bool))
        return out.arrive, jax.random.exponential(key, (spec.num_edges,))

    return sim, snr_before, _run(sim, ROUNDS, draws)


def test_simulator_channel_tables(p2pl_run):
    """Arrays.channel: the mean SNR of every entry by hand from the positions (and the shadowing
    link_tables draws), unchanged by the rounds, and the local phase's cost per device."""
    sim, snr_before, _ = p2pl_run
    idx = np.asarray(sim.arrays.idx)
    np.testing.assert_array_equal(sim.positions, wireless.positions(N, 300.0, 3))
    _, shadow = wireless.link_tables(idx, np.asarray(sim.arrays.valid), sim.positions,
                                     P2PL_RADIO, 3)
    want = np.zeros(idx.shape)
    for n in range(N):
        for k in range(1, idx.shape[1]):
            d = float(np.hypot(*(sim.positions[n] - sim.positions[idx[n, k]])))
            want[n, k] = 10 ** (_mean_snr_db(P2PL_RADIO, d, shadow[n, k], 0.0) / 10)
    np.testing.assert_allclose(snr_before, want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(sim.arrays.channel["snr"]), snr_before)
    np.testing.assert_allclose(sim.arrays.channel["compute_s"], SIZES * CYCLES / FREQ, rtol=1e-6)
    np.testing.assert_allclose(sim.arrays.channel["compute_j"],
                               SIZES * CYCLES * KAPPA * FREQ ** 2, rtol=1e-6)


def test_simulator_success_probability_table():
    """loss_correction=inverse_probability: Arrays.channel["q"] is exp(-theta_eff / snr_bar)
    of every entry, theta_eff from the message size, the deadline and max_delay (the
    Simulator is built, its round never compiled)."""
    radio = wireless.Radio(area_m=300.0, round_deadline_s=0.03)
    setup = dataclasses.replace(_setup(radio, seed=3), correction="inverse_probability")
    sim = _simulator("p2pl", setup, max_delay=1)
    snr = np.asarray(sim.arrays.channel["snr"], np.float64)
    bits = 32.0 * sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(
        sim.init_state, rng.root_key(0)).params)) / N
    theta_eff = max(THETA, 2.0 ** (bits / (BW * 0.03 * 2)) - 1.0)
    assert theta_eff > 2 * THETA
    with np.errstate(divide="ignore"):
        want = np.where(snr > 0, np.exp(-theta_eff / snr), 0.0)
    np.testing.assert_allclose(np.asarray(sim.arrays.channel["q"]), want, rtol=1e-5, atol=1e-30)
    assert 0.05 < want[:, 1:].mean() < 0.95


def test_simulator_p2pl_mixing_and_bill(p2pl_run):
    """p2pl with channel=wireless: x_new[n] = sum_k w[n, k] x_local[idx[n, k]] with the data-size
    weights renormalised over what arrived (graph_round on the round's channel key, and the
    same from the fading draws by hand); the arrivals differ across rounds while the mean SNR
    stays; counters, energy and time against numpy, cumulative in state.comm."""
    sim, _, record = p2pl_run
    idx, valid = np.asarray(sim.arrays.idx), np.asarray(sim.arrays.valid)
    edge_id, nb = np.asarray(sim.arrays.edge_id), np.arange(idx.shape[1]) > 0
    bits, deadline = _bits(record), P2PL_RADIO.round_deadline_s
    t_max = bits / (BW * math.log2(1 + THETA))
    compute_j, compute_s = SIZES * CYCLES * KAPPA * FREQ ** 2, SIZES * CYCLES / FREQ
    patterns, energy_total, time_total, delivered = [], np.zeros(N), 0.0, np.zeros(N)
    ones = np.ones(N, bool)
    for rec in record:
        arrive, h_edges = rec["channel"]
        arrived = arrive & valid
        patterns.append(arrived)
        # the arrivals from the fading itself: snr >= theta and t <= T
        snr = _snr(sim.arrays.channel["snr"], np.asarray(h_edges, np.float64)[np.maximum(
            edge_id, 0)])
        t = _air_time(snr, bits=bits)
        np.testing.assert_array_equal(arrived[:, 1:], ((snr >= THETA) & (t <= deadline))[:, 1:])
        for local, new in zip(rec["local"], rec["params"]):
            ref = np.zeros_like(local)
            for n in range(N):
                members = [n] + [idx[n, k] for k in range(1, idx.shape[1]) if arrived[n, k]]
                total = SIZES[members].sum()
                ref[n] = sum(SIZES[m] / total * local[m] for m in members)
            np.testing.assert_allclose(new, ref, rtol=2e-5, atol=2e-6)
        tx, rx = _tx_rx_reference(idx, valid, ones, t, t_max, deadline, "broadcast")
        energy, duration = _bill_reference(tx, rx, compute_j, compute_s, ones, deadline,
                                           tx_w=1e-3, rx_w=P2PL_RADIO.rx_power_w)
        m = rec["metrics"]
        np.testing.assert_allclose(m["energy_j"], energy.sum(), rtol=1e-5)
        np.testing.assert_allclose(m["energy_max_device_j"], energy.max(), rtol=1e-5)
        np.testing.assert_allclose(m["sim_time_s"], duration, rtol=1e-5)
        np.testing.assert_allclose(m["air_time_s"], tx.sum(), rtol=1e-5)
        n_arrived = arrived[:, 1:].sum()
        assert m["messages_delivered"] == n_arrived and m["messages_sent"] == N * (N - 1)
        np.testing.assert_allclose(m["links_up"], n_arrived / (N * (N - 1)), rtol=1e-6)
        assert "weights_clipped" not in m and "energy_station_j" not in m
        energy_total, time_total = energy_total + energy, time_total + duration
        delivered += np.bincount(idx[arrived & nb], minlength=N)
        c = rec["comm"]
        np.testing.assert_allclose(c["energy"], energy_total, rtol=1e-5)
        np.testing.assert_allclose(c["time"], time_total, rtol=1e-5)
        np.testing.assert_array_equal(c["delivered"], delivered)
        assert c["server"] == 0 and c["server_delivered"] == 0 and c["station"] == 0
    assert any(not np.array_equal(patterns[0], p) for p in patterns[1:])
    assert all(0 < p[:, 1:].mean() < 1 for p in patterns)
    assert t_max > deadline   # the deadline, not t_max, caps the air time here
    assert set(record[-1]["comm"]) == {"sent", "delivered", "server", "energy", "time", "air",
                                       "station", "server_delivered"}


FEDAVG_RADIO = wireless.Radio(area_m=300.0, bs_tx_power_dbm=3.0, round_deadline_s=0.08)


@pytest.fixture(scope="module")
def fedavg_run():
    """fedavg, channel=wireless (independent up and down draws: link_mode=asymmetric): ROUNDS
    rounds, with each round's uplink and downlink fading draws."""
    sim = _simulator("fedavg", _setup(FEDAVG_RADIO, seed=1), link_mode="asymmetric")

    def draws(key):
        k_up, k_down = jax.random.split(key)
        return jax.random.exponential(k_up, (N,)), jax.random.exponential(k_down, (N,))

    return sim, _run(sim, ROUNDS, draws, seed=2)


def test_simulator_fedavg_station(fedavg_run):
    """fedavg with channel=wireless: the server averages the uploaded devices' models with
    their data-size weights; a device that missed the broadcast keeps its local model; the
    counters, the devices' and the station's energy and the round's time against numpy."""
    sim, record = fedavg_run
    ch, bits, deadline = sim.arrays.channel, _bits(record), FEDAVG_RADIO.round_deadline_s
    cap = min(bits / (BW * math.log2(1 + THETA)), deadline)
    # one shadowing draw per device serves both directions of its link to the station (at the
    # centre): the shadowing read back from the uplink and the downlink tables is the same
    d = np.hypot(*(sim.positions - 150.0).T)
    shadow = [np.array([_mean_snr_db(FEDAVG_RADIO, d[n], 0.0, power) for n in range(N)])
              - 10 * np.log10(np.asarray(table, np.float64))
              for table, power in ((ch["up"], 0.0), (ch["down"], 3.0))]
    np.testing.assert_allclose(shadow[0], shadow[1], atol=1e-4)
    assert np.all(np.abs(shadow[0]) < 5 * FEDAVG_RADIO.shadowing_std_db)
    compute_j, compute_s = SIZES * CYCLES * KAPPA * FREQ ** 2, SIZES * CYCLES / FREQ
    ones, delivered, got_model = np.ones(N, bool), np.zeros(N, int), 0
    energy_total, time_total, station_total = np.zeros(N), 0.0, 0.0
    seen_miss_up = seen_miss_down = False
    for rec in record:
        h_up, h_down = (np.asarray(h, np.float64) for h in rec["channel"])
        t_up = _air_time(_snr(ch["up"], h_up), bits)
        t_down = _air_time(_snr(ch["down"], h_down), bits)
        uploaded = (_snr(ch["up"], h_up) >= THETA) & (t_up <= deadline)
        downloaded = (_snr(ch["down"], h_down) >= THETA) & (t_down <= deadline)
        seen_miss_up |= bool(uploaded.any() and not uploaded.all())
        seen_miss_down |= bool(uploaded.any() and not downloaded.all())
        for local, new in zip(rec["local"], rec["params"]):
            avg = sum(SIZES[m] * local[m] for m in range(N) if uploaded[m])
            avg = avg / max(SIZES[uploaded].sum(), 1)
            for n in range(N):
                ref = avg if (downloaded[n] and uploaded.any()) else local[n]
                np.testing.assert_allclose(new[n], ref, rtol=2e-5, atol=2e-6)
        station = np.minimum(t_down, cap).max()
        m = rec["metrics"]
        bs_w = 10 ** (FEDAVG_RADIO.bs_tx_power_dbm / 10) * 1e-3
        np.testing.assert_allclose(m["energy_station_j"], bs_w * station, rtol=1e-5)
        tx, rx = np.minimum(t_up, cap), np.minimum(t_down, cap)
        energy, duration = _bill_reference(tx, rx, compute_j, compute_s, ones, deadline,
                                           tx_w=1e-3, rx_w=FEDAVG_RADIO.rx_power_w,
                                           extra_s=station)
        np.testing.assert_allclose(m["energy_j"], energy.sum(), rtol=1e-5)
        np.testing.assert_allclose(m["energy_max_device_j"], energy.max(), rtol=1e-5)
        np.testing.assert_allclose(m["sim_time_s"], duration, rtol=1e-5)
        np.testing.assert_allclose(m["air_time_s"], tx.sum(), rtol=1e-5)
        assert m["messages_delivered"] == uploaded.sum() + downloaded.sum()
        delivered, got_model = delivered + uploaded, got_model + downloaded.sum()
        energy_total, time_total = energy_total + energy, time_total + duration
        station_total += bs_w * station
        c = rec["comm"]
        np.testing.assert_array_equal(c["delivered"], delivered)
        assert c["server_delivered"] == got_model
        np.testing.assert_allclose(c["energy"], energy_total, rtol=1e-5)
        np.testing.assert_allclose(c["time"], time_total, rtol=1e-5)
        np.testing.assert_allclose(c["station"], station_total, rtol=1e-5)
    assert seen_miss_up and seen_miss_down
    c = record[-1]["comm"]
    assert np.all(c["sent"] == ROUNDS) and c["server"] == N * ROUNDS


def test_simulator_push_sum_inverse_probability_with_dropouts():
    """push_sum, channel=wireless, loss_correction=inverse_probability, dropouts 0.15 and
    per-direction fading: x+ = P (x + local - z), w+ = P w, with P the uniform column weights
    of the static graph (1/5 on the complete graph of 5), each message that arrived (its
    sender and receiver online, graph_round on the round's channel key) divided by its link's
    q = exp(-theta_eff / snr_bar) from numpy, and the sender keeping the rest (loop
    reference). Devices go offline, links fail, and senders clip, all within 8 rounds."""
    setup = dataclasses.replace(_setup(P2PL_RADIO, seed=5), correction="inverse_probability")
    sim = _simulator("push_sum", setup, dropouts=True, link_mode="asymmetric")
    a, spec = sim.arrays, sim.spec
    idx, valid = np.asarray(a.idx), np.asarray(a.valid)
    bits = 32.0 * sum(int(np.prod(leaf.shape[1:])) for leaf in jax.tree.leaves(
        jax.eval_shape(sim.init_state, rng.root_key(0)).params)) + 32.0   # x and w
    theta_eff = max(THETA, 2.0 ** (bits / (BW * P2PL_RADIO.round_deadline_s)) - 1.0)
    q = np.where(np.asarray(a.channel["snr"]) > 0,
                 np.exp(-theta_eff / np.maximum(np.asarray(a.channel["snr"], np.float64),
                                                1e-30)), 0.0)
    base = np.full(idx.shape, 1.0 / N)

    def draws(root, r):
        key = rng.round_key(root, r)
        alive = jax.random.uniform(jax.random.fold_in(key, 5), (N,)) >= 0.15   # rng's DROP tag
        out = wireless.graph_round(rng.channel_key(key), spec.link, a.channel["snr"], a.idx,
                                   a.valid & alive[a.idx], a.edge_id, spec.num_edges, alive)
        return alive, out.arrive

    of_round = jax.jit(draws)
    state = _initial_state(sim, 5).replace(aux={"weight": jnp.ones((N,), jnp.float32)})
    hp = simulation.make_hparams(0.05, 0.0, dropout_prob=0.15)
    seen = {"offline": False, "lost": False, "clipped": False}
    for _ in range(8):
        alive, arrive = (np.asarray(v) for v in of_round(state.rng, state.round))
        x_old, w_old = _np_tree(state.params), np.asarray(state.aux["weight"], np.float64)
        state, metrics, local = sim.step(state, hp, return_local=True)
        arrived = arrive & valid & alive[:, None] & alive[idx]
        arrived[:, 0] = True
        P = _inverse_probability_reference("column", base, idx, arrived, q)
        for x, end, new in zip(x_old, _np_tree(local), _np_tree(state.params)):
            z = x / w_old.reshape((-1,) + (1,) * (x.ndim - 1))
            half = x + end - z
            ref = np.stack([sum(P[n, k] * half[idx[n, k]] for k in range(idx.shape[1]))
                            for n in range(N)])
            np.testing.assert_allclose(new, ref, rtol=2e-5, atol=2e-6)
        w_ref = np.array([sum(P[n, k] * w_old[idx[n, k]] for k in range(idx.shape[1]))
                          for n in range(N)])
        np.testing.assert_allclose(np.asarray(state.aux["weight"]), w_ref, rtol=2e-6)
        np.testing.assert_allclose(w_ref.sum(), N, rtol=1e-6)   # mass conserved
        seen["offline"] |= not alive.all()
        seen["lost"] |= bool((~arrive[:, 1:] & alive[:, None] & alive[idx[:, 1:]]).any())
        seen["clipped"] |= bool(metrics["weights_clipped"] > 0)
    assert all(seen.values()), seen


# ----------------------------------------------------------------------------- 8. ideal

def test_ideal_channel_has_no_bill():
    """channel=None: the round's metrics carry no energy or time and state.comm only the
    message counters."""
    sim = _simulator("p2pl", None)
    state = jax.eval_shape(sim.init_state, rng.root_key(0))
    assert set(state.comm) == {"sent", "delivered", "server"}
    hp = simulation.make_hparams(0.05, 0.9)
    new_state, metrics = jax.eval_shape(sim.round_fn, state, sim.arrays, hp)
    assert not {"energy_j", "energy_max_device_j", "sim_time_s", "air_time_s",
                "weights_clipped", "energy_station_j"} & set(metrics)
    assert set(new_state.comm) == {"sent", "delivered", "server"}
    assert sim.spec.link is None and sim.arrays.channel is None
