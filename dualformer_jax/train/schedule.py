"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (optax pieces).

A pure function of the step, so a resumed run gets the same rate and the
train step can compute it on device without host syncs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

Schedule = Callable[[jax.Array | int], jax.Array]


def warmup_cosine(*, peak: float, warmup_steps: int, num_steps: int,
                  final_frac: float) -> Schedule:
  """Rate used by optimizer step `step` (0-based); ValueError names a bad setting.

  Steps 0..warmup-1 ramp linearly to peak ((step+1)/warmup, so step 0 already
  learns); then cosine from peak at step=warmup to final_frac*peak at
  step=num_steps, and final_frac*peak after that. This is
  optax.warmup_cosine_decay_schedule with the ramp one step earlier (its
  step 0 has rate 0), so it is built from the same optax pieces it joins.
  """
  if peak <= 0 or num_steps < 1 or warmup_steps < 0 or not 0.0 <= final_frac <= 1.0:
    raise ValueError(f"bad schedule: peak={peak}, warmup_steps={warmup_steps}, "
                     f"num_steps={num_steps}, final_frac={final_frac}")
  cosine = optax.cosine_decay_schedule(peak, max(num_steps - warmup_steps, 1), alpha=final_frac)
  if warmup_steps == 0:
    return cosine
  warm = optax.linear_schedule(peak / warmup_steps, peak, warmup_steps - 1)
  return optax.join_schedules([warm, cosine], [warmup_steps])


def learning_rate(step: jax.Array | int, *, peak: float, warmup_steps: int, num_steps: int,
                  final_frac: float) -> jax.Array:
  """The rate of `warmup_cosine` at one step."""
  return warmup_cosine(peak=peak, warmup_steps=warmup_steps, num_steps=num_steps,
                       final_frac=final_frac)(step)


def make_schedule(train_cfg: Any) -> Schedule:
  """Schedule from `config.train` (learning_rate, warmup_steps, num_steps, final_lr_frac)."""
  return warmup_cosine(peak=float(train_cfg.learning_rate),
                       warmup_steps=int(train_cfg.warmup_steps),
                       num_steps=int(train_cfg.num_steps), final_frac=float(train_cfg.final_lr_frac))
