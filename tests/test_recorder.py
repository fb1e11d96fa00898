"""recorder.check_finite: which records count as diverged (the divergence rule), and what the
message says."""

import math

import pytest

from p2pl_jax.recorder import DivergenceError, check_finite, loss_limit


def test_finite_records_pass_with_or_without_the_params_flag():
    check_finite({"train_loss": 0.5, "test_loss": 1.0}, 3, 0.1)    # no params_finite key
    check_finite({"train_loss": 0.5, "params_finite": 1.0}, 3, 0.1)
    check_finite({"round": 3, "acc_min": 0.1, "bytes_sent": 10**15}, 3, 0.1)   # ints pass


def test_loss_limit_is_factor_times_the_loss_of_a_uniform_guess():
    assert loss_limit(100.0, 10) == pytest.approx(100 * math.log(10))
    assert loss_limit(0.0, 10) is None


@pytest.mark.parametrize("record", [
    {"train_loss": 231.0, "test_loss": 1.0},
    {"train_loss": 1.0, "test_loss": 1e6},
])
def test_a_loss_above_the_limit_diverges_naming_it(record):
    limit = loss_limit(100.0, 10)   # 230.26
    with pytest.raises(DivergenceError, match="above the divergence limit 230.3") as e:
        check_finite(record, 4, 1e6, last_good=3, limit=limit)
    assert "learning_rate=1000000.0" in str(e.value)
    check_finite(record, 4, 1e6, last_good=3, limit=None)          # factor 0: no loss limit
    check_finite({"train_loss": 230.0, "test_loss": 230.0}, 4, 0.1, limit=limit)   # at: fine


@pytest.mark.parametrize("record,what", [
    ({"train_loss": math.nan}, "train_loss"),
    ({"test_loss": math.inf, "train_loss": 0.1}, "test_loss"),
    ({"train_loss": 0.1, "params_finite": 0.0}, "a parameter"),
    ({"train_loss": 0.1, "consensus_distance": math.inf}, "consensus_distance"),   # any metric
    ({"train_loss": 0.1, "acc_min": math.nan}, "acc_min"),
])
def test_non_finite_records_raise_naming_what_and_when(record, what):
    with pytest.raises(DivergenceError, match=f"at round 7: {what} is not finite") as e:
        check_finite(record, 7, 0.25, last_good=6)
    assert "learning_rate=0.25" in str(e.value)
    with pytest.raises(DivergenceError, match="between round 3 and round 7"):
        check_finite(record, 7, 0.25, last_good=2)
    with pytest.raises(DivergenceError, match="at round 7:"):
        check_finite(record, 7, 0.25)                                # last_good unknown
