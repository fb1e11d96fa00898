"""channel=wireless from the config: bad input is one ConfigError naming the field and the
allowed values; an all-failing channel is refused with its link budget; the radio graph; the
study's run list and report."""

import json
import os

import numpy as np
import pytest

from configs import mnist, smoke
from p2pl_jax import runner, wireless
from p2pl_jax.errors import ConfigError


def _config(**over):
    c = mnist.get_config()
    c.channel = "wireless"
    for k, v in over.items():
        c[k] = v
    return c


@pytest.mark.parametrize("over, words", [
    ({"area_m": -5.0}, ["area_m=-5.0", "(0.0, inf)"]),
    ({"area_m": 0.0}, ["area_m=0.0"]),
    ({"rx_power_w": -0.1}, ["rx_power_w=-0.1", "[0.0, inf)"]),
    ({"bandwidth_hz": -1.0}, ["bandwidth_hz"]),
    ({"tx_power_dbm": float("nan")}, ["tx_power_dbm", "finite"]),
    ({"tx_power_dbm": float("inf")}, ["tx_power_dbm", "out of range"]),
    ({"fading": "rician"}, ["fading='rician'", "'rayleigh', 'none'"]),
    ({"loss_correction": "oracle"}, ["loss_correction='oracle'", "'inverse_probability'"]),
    ({"transmission": "multicast"}, ["transmission='multicast'", "'broadcast'"]),
    ({"channel": "5g"}, ["channel='5g'", "'ideal', 'wireless'"]),
    ({"link_failure_prob": 0.2}, ["link_failure_prob=0.2", "channel=ideal"]),
    ({"time_varying": True, "topology": "random_geometric"}, ["time_varying=True"]),
    ({"algorithm": "local"}, ["algorithm=local", "channel=ideal"]),
    ({"algorithm": "fedavg", "loss_correction": "inverse_probability"},
     ["loss_correction=inverse_probability", "renormalize"]),
    ({"algorithm": "choco"}, ["channel=wireless does not apply to algorithm=choco",
                              "channel=ideal"]),
    ({"delay_rounds": 1}, ["delay_rounds=1", "round_deadline_s > 0"]),
    ({"delay_rounds": 1, "round_deadline_s": 1.0, "delay_mode": "random"},
     ["delay_mode=random"]),
    ({"mixing": "data_size_mh", "link_failure_mode": "asymmetric"}, ["data_size_mh"]),
    ({"topology": "cycle", "graph_resample": True}, ["graph_resample=True", "radio"]),
])
def test_bad_channel_fields(over, words):
    with pytest.raises(ConfigError) as e:
        runner.validate(_config(**over))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_inverse_probability_needs_the_wireless_channel():
    c = mnist.get_config()
    c.loss_correction = "inverse_probability"
    with pytest.raises(ConfigError, match="allowed: channel=wireless"):
        runner.validate(c)


def test_good_configs_pass():
    runner.validate(_config())
    runner.validate(_config(topology="radio", algorithm="push_sum",
                            loss_correction="inverse_probability",
                            link_failure_mode="asymmetric", fading="none"))
    runner.validate(_config(algorithm="fedavg", tx_power_dbm=-20.0))
    runner.validate(_config(delay_rounds=2, round_deadline_s=0.5))
    c = mnist.get_config()
    c.topology = "radio"   # the radio graph's geometry with today's ideal links
    runner.validate(c)


def test_all_failing_channel_names_the_link_budget():
    """A threshold no link can meet is refused before any round, with the figures."""
    radio = wireless.Radio(snr_threshold_db=80.0)
    link = wireless.make_link(radio, 1000)
    snr = wireless.db_to_linear(np.array([[0.0, 20.0, 30.0]]))
    with pytest.raises(ConfigError) as e:
        wireless.check_budget(snr, link, radio, "link of the graph")
    msg = str(e.value)
    assert "every link of the graph fails" in msg and "30.0 dB" in msg
    assert "snr_threshold_db=80.0" in msg and "tx_power_dbm" in msg
    # the deadline, not the threshold: 8000 bits in 1 us need far more than 30 dB
    radio = wireless.Radio(round_deadline_s=1e-6)
    with pytest.raises(ConfigError, match="round_deadline_s=1e-06 for a 8000-bit message"):
        wireless.check_budget(snr, wireless.make_link(radio, 1000), radio, "link")
    wireless.check_budget(snr, wireless.make_link(wireless.Radio(), 1000), wireless.Radio(),
                          "link")   # a budget that works passes


def test_radio_graph_rule_and_refusal():
    """Neighbours are exactly the pairs whose mean SNR (path loss and the pair's shadowing)
    clears threshold + margin; no pair at all is a ConfigError with the budget."""
    radio = wireless.Radio(area_m=300.0)
    pos = wireless.positions(30, radio.area_m, 3)
    adj, shadow = wireless.radio_graph(pos, radio, 3)
    dense = adj.toarray()
    assert (dense == dense.T).all() and not dense.diagonal().any()
    need = radio.snr_threshold_db + radio.radio_margin_db
    for (i, j), s in shadow.items():
        d = max(np.linalg.norm(pos[i] - pos[j]), 1.0)
        snr_db = (radio.tx_power_dbm - radio.path_loss_ref_db
                  - 10 * radio.path_loss_exponent * np.log10(d) - s
                  - (radio.noise_density_dbm_hz + 10 * np.log10(radio.bandwidth_hz)))
        assert snr_db >= need - 1e-9
    assert dense.sum() == 2 * len(shadow)
    # pairs out of the cut-off range are never neighbours, pairs well inside always are
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    sigma = radio.shadowing_std_db
    assert not dense[d > radio.range_m(need - wireless.SHADOW_CUTOFF_SIGMAS * sigma)].any()
    inner = (d < radio.range_m(need + 6 * sigma)) & ~np.eye(30, dtype=bool)
    assert dense[inner].all()
    with pytest.raises(ConfigError, match="topology=radio: no pair of devices can talk"):
        wireless.radio_graph(pos, wireless.Radio(area_m=300.0, tx_power_dbm=-150.0), 3)


def test_run_refuses_an_all_failing_channel(tmp_path):
    c = smoke.get_config()
    c.channel, c.snr_threshold_db, c.tensorboard = "wireless", 90.0, False
    with pytest.raises(ConfigError, match="channel=wireless: every link of the graph fails"):
        runner.run(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")   # a user error leaves nothing


def test_study_runs_and_report(tmp_path):
    from experiments import wireless_study

    plan = wireless_study.runs([-10.0, 0.0], rounds=5, target=0.9, seed=1)
    assert len(plan) == 2 * 7
    assert plan["p-10_fedavg"]["algorithm"] == "fedavg"
    assert plan["p0_push_sum_inverse_probability"]["loss_correction"] == "inverse_probability"
    # a report from two hand-written runs: verdicts come from the numbers
    out = tmp_path / "out"
    for name, algo, corr, rtt, energy in (("a", "p2pl", "renormalize", 4, 100.0),
                                          ("b", "fedavg", "renormalize", 3, 10.0)):
        d = out / "runs" / name
        d.mkdir(parents=True)
        cfg = json.loads(json.dumps(mnist.get_config().to_dict()))
        cfg.update(algorithm=algo, mixing="data_size", loss_correction=corr, tx_power_dbm=0.0,
                   target_accuracy=0.9, rounds=5, channel="wireless")
        (d / "config.json").write_text(json.dumps(cfg))
        recs = [{"round": r, "acc_min": 0.8 + 0.03 * r, "acc_mean": 0.85,
                 "energy_cum_j": energy * r / rtt, "links_up": 0.8} for r in range(1, 6)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (d / "summary.json").write_text(json.dumps({
            "rounds_to_target": rtt, "rounds_run": 5, "energy_to_target_j": energy,
            "energy_max_device_to_target_j": energy / 10, "sim_time_to_target_s": 2.0 * rtt,
            "energy_total_j": energy * 5 / rtt, "final_acc_min": 0.95, "final_acc_mean": 0.96,
            "jax_version": "x", "backend": "cpu"}))
    res = wireless_study.write_report(str(out))
    text = " ".join(res["finding"])
    assert "P2PL data_size with renormalize (4 rounds, 100 J" in text
    assert "the base station costs the devices 10x less energy" in text
    assert (out / "README.md").exists() and (out / wireless_study.FIGURE).exists()


def test_sweep_stacks_the_channel_tables():
    """A sweep group shares Arrays fields equal in every replica and stacks the others; the
    channel tables are a dict (a pytree field), shared when equal, stacked leaf by leaf when
    not (the bug: the sweep compared a dict's .shape)."""
    import jax.numpy as jnp

    from p2pl_jax import simulation, sweep

    def arrays(snr):
        z = jnp.zeros((2, 2))
        return simulation.Arrays(x=z, y=z, offsets=z, sizes=z, idx=z, valid=z, edge_id=z,
                                 weights=z, w_dense=z, pi=z,
                                 channel={"snr": jnp.asarray(snr), "compute_j": jnp.ones(2)})

    stacked, axes = sweep._stack_arrays([arrays([[0.0, 1.0]] * 2)] * 2)
    assert axes.channel is None and stacked.channel["snr"].shape == (2, 2)
    stacked, axes = sweep._stack_arrays([arrays([[0.0, 1.0]] * 2), arrays([[0.0, 2.0]] * 2)])
    assert axes.channel == 0 and axes.x is None
    assert stacked.channel["snr"].shape == (2, 2, 2)
    assert stacked.channel["compute_j"].shape == (2, 2)
