"""recorder.check_finite: which records count as diverged, and what the message says."""

import math

import pytest

from p2pl_jax.recorder import DivergenceError, check_finite


def test_finite_records_pass_with_or_without_the_params_flag():
    check_finite({"train_loss": 0.5, "test_loss": 1.0}, 3, 0.1)    # no params_finite key
    check_finite({"train_loss": 0.5, "params_finite": 1.0}, 3, 0.1)
    check_finite({"acc_min": math.nan}, 3, 0.1)                     # only losses are checked


@pytest.mark.parametrize("record,what", [
    ({"train_loss": math.nan}, "train_loss"),
    ({"test_loss": math.inf, "train_loss": 0.1}, "test_loss"),
    ({"train_loss": 0.1, "params_finite": 0.0}, "a parameter"),
])
def test_non_finite_records_raise_naming_what_and_when(record, what):
    with pytest.raises(DivergenceError, match=f"at round 7: {what} is not finite") as e:
        check_finite(record, 7, 0.25, last_good=6)
    assert "learning_rate=0.25" in str(e.value)
    with pytest.raises(DivergenceError, match="between round 3 and round 7"):
        check_finite(record, 7, 0.25, last_good=2)
    with pytest.raises(DivergenceError, match="at round 7:"):
        check_finite(record, 7, 0.25)                                # last_good unknown
