"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

A pure function of the step, so a resumed run gets the same rate and the
train step can compute it on device without host syncs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array | int], jax.Array]


def learning_rate(step: jax.Array | int, *, peak: float, warmup_steps: int, num_steps: int,
                  final_frac: float) -> jax.Array:
  """Rate used by optimizer step `step` (0-based).

  Steps 0..warmup-1 ramp linearly to peak ((step+1)/warmup, so step 0 already
  learns); then cosine from peak at step=warmup to final_frac*peak at
  step=num_steps, and final_frac*peak after that.
  """
  if peak <= 0 or num_steps < 1 or warmup_steps < 0 or not 0.0 <= final_frac <= 1.0:
    raise ValueError(f"bad schedule: peak={peak}, warmup_steps={warmup_steps}, "
                     f"num_steps={num_steps}, final_frac={final_frac}")
  step = jnp.asarray(step, jnp.float32)
  warm = peak * (step + 1.0) / max(warmup_steps, 1)
  span = max(num_steps - warmup_steps, 1)
  frac = jnp.clip((step - warmup_steps) / span, 0.0, 1.0)
  cosine = peak * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))
  return jnp.where(step < warmup_steps, warm, cosine)


def make_schedule(train_cfg: Any) -> Schedule:
  """Schedule from `config.train` (learning_rate, warmup_steps, num_steps, final_lr_frac)."""
  peak, warmup = float(train_cfg.learning_rate), int(train_cfg.warmup_steps)
  total, final = int(train_cfg.num_steps), float(train_cfg.final_lr_frac)
  learning_rate(0, peak=peak, warmup_steps=warmup, num_steps=total, final_frac=final)  # validate

  def schedule(step: jax.Array | int) -> jax.Array:
    return learning_rate(step, peak=peak, warmup_steps=warmup, num_steps=total,
                         final_frac=final)

  return schedule
