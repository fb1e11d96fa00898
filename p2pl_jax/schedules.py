"""Learning-rate schedules across rounds, driven by the round counter of the state.

The factor of round r (0-based; round r is the (r+1)-th local phase) multiplies
`learning_rate` for every local step of that round:

  warm-up (r < W = lr_warmup_rounds):  (r + 1) / W, a linear ramp up to the full rate at
                                         round W - 1 (Goyal et al. 2017's gradual warm-up, per
                                         round)
  constant:                              1
  cosine:                                (1 + cos(pi (r - W) / (R - W))) / 2, R = rounds
                                         (Loshchilov & Hutter 2017 without restarts; the last
                                         round still trains, at a small positive rate)
  step:                                  gamma ** (number of milestones m_i <= r), milestones
                                         lr_step_rounds (default R/2 and 3R/4, rounded down:
                                         the recipe of Lin et al. 2021 and Goyal et al. 2017)

The factor is read from `SimState.round`, not from a count inside the optimizer state, which
momentum_after_consensus=mix would average and reset would zero. A resumed run therefore
continues the schedule exactly, and the schedule's horizon R is part of the trajectory: with a
cosine or step schedule, changing `rounds` on resume is refused (runner). The schedules are
optax's (optax.join_schedules, linear_schedule, cosine_decay_schedule,
piecewise_constant_schedule) evaluated at the round index.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "step")


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """A schedule's static description (part of the compiled round's Spec)."""

    kind: str = "constant"
    rounds: int = 1
    warmup_rounds: int = 0
    step_rounds: tuple[int, ...] = ()
    step_gamma: float = 0.1

    @property
    def milestones(self) -> tuple[int, ...]:
        """The step schedule's milestones: lr_step_rounds, or R/2 and 3R/4 (rounded down)."""
        return self.step_rounds or (self.rounds // 2, (3 * self.rounds) // 4)

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" and self.warmup_rounds == 0

    def optax_schedule(self) -> optax.Schedule:
        """The factor as an optax schedule of the round index."""
        w = self.warmup_rounds
        if self.kind == "cosine":
            main = optax.cosine_decay_schedule(1.0, max(self.rounds - w, 1))
        elif self.kind == "step":
            main = optax.piecewise_constant_schedule(
                1.0, {m - w: self.step_gamma for m in self.milestones if m >= w})
        else:
            main = optax.constant_schedule(1.0)
        if not w:
            return main
        ramp = optax.linear_schedule(1.0 / w, 1.0, max(w - 1, 1))
        return optax.join_schedules([ramp, main], [w])

    def factor(self, round_index: jax.Array) -> jax.Array:
        """float32 factor of round `round_index` (traceable)."""
        if self.is_constant:
            return jnp.ones((), jnp.float32)
        return jnp.asarray(self.optax_schedule()(round_index), jnp.float32)
