"""The planning model's loss: the pieces of the Loss that train/step.py's generic steps take.

Token cross-entropy over decoder targets where trace_mask + plan_mask is 1,
normalised over the whole batch (so gradient accumulation over micro-batches
equals one full-batch step), with per-batch sums of the trace and plan parts.

Batch contract (numpy or global jax arrays; shapes vary per length bucket):
  enc_ids int32 [B, P], dec_ids int32 [B, T], targets int32 [B, T],
  trace_mask float32 [B, T], plan_mask float32 [B, T], level int32 [B] (unused here).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx


REQUIRED_KEYS = ("enc_ids", "dec_ids", "targets", "trace_mask", "plan_mask")
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def check_batch(batch: Batch) -> None:
  """ValueError naming a missing entry or a shape that does not fit the others."""
  missing = [k for k in REQUIRED_KEYS if k not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; it has {sorted(batch)}")
  b, t = batch["dec_ids"].shape
  for k in ("targets", "trace_mask", "plan_mask"):
    if batch[k].shape != (b, t):
      raise ValueError(f"batch[{k!r}] has shape {batch[k].shape}, expected dec_ids' {(b, t)}")
  if batch["enc_ids"].ndim != 2 or batch["enc_ids"].shape[0] != b:
    raise ValueError(f"batch['enc_ids'] has shape {batch['enc_ids'].shape}, expected [{b}, P]")


def loss_weights(mask_BxT: jax.Array, loss_norm: str, denom: jax.Array) -> jax.Array:
  """Per-token weights w of the objective sum(ce * w), for a (micro-)batch.

  "token": every loss token of the batch weighs the same, 1 / denom with denom
  the batch's token count; an example then weighs its length, and how much
  depends on which examples share its batch (bucketing groups similar lengths).
  "sequence" (Searchformer's): the mean over an example's tokens, then over the
  batch's denom examples; every example weighs 1 / denom, whatever its length
  or batch-mates. `denom` comes from `loss_denominator` of the whole batch, so
  micro-batches (grad accumulation) add up to the full batch's objective.
  """
  if loss_norm == "token":
    return mask_BxT / denom
  per_example_BxT = mask_BxT / jnp.maximum(jnp.sum(mask_BxT, axis=1, keepdims=True), 1.0)
  return per_example_BxT / denom


def loss_denominator(mask_BxT: jax.Array, loss_norm: str) -> jax.Array:
  """Loss tokens ("token") or examples with a loss token ("sequence") in the batch, >= 1."""
  if loss_norm == "token":
    n = jnp.sum(mask_BxT)
  else:
    n = jnp.sum(jnp.any(mask_BxT > 0, axis=1).astype(jnp.float32))
  return jnp.maximum(n, 1.0)


def batch_denominator(batch: Batch, loss_norm: str) -> jax.Array:
  """`loss_denominator` of a whole batch's trace + plan tokens."""
  return loss_denominator((batch["trace_mask"] + batch["plan_mask"]).astype(jnp.float32),
                          loss_norm)


def _forward(graphdef: nnx.GraphDef, params: nnx.State, batch: Batch
             ) -> tuple[Metrics, jax.Array, jax.Array]:
  """(per-batch sums, ce [B, T], loss mask [B, T]) of one forward pass.

  Sums: cross-entropy over loss / trace / plan tokens, counts, hits.
  """
  model = nnx.merge(graphdef, params)
  logits_BxTxV = model(batch["enc_ids"], batch["dec_ids"])
  targets_BxT = batch["targets"]
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  trace_BxT = batch["trace_mask"].astype(jnp.float32)
  plan_BxT = batch["plan_mask"].astype(jnp.float32)
  mask_BxT = trace_BxT + plan_BxT
  hit_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
  sums = {
      "loss_sum": jnp.sum(ce_BxT * mask_BxT),
      "trace_loss_sum": jnp.sum(ce_BxT * trace_BxT),
      "plan_loss_sum": jnp.sum(ce_BxT * plan_BxT),
      "correct_sum": jnp.sum(hit_BxT * mask_BxT),
      "loss_tokens": jnp.sum(mask_BxT),
      "trace_tokens": jnp.sum(trace_BxT),
      "plan_tokens": jnp.sum(plan_BxT),
  }
  return sums, ce_BxT, mask_BxT


def objective(graphdef: nnx.GraphDef, params: nnx.State, batch: Batch, loss_norm: str,
              denom: jax.Array) -> tuple[jax.Array, Metrics]:
  """(the training objective sum(ce * loss_weights), the batch's sums); what is differentiated."""
  sums, ce_BxT, mask_BxT = _forward(graphdef, params, batch)
  return jnp.sum(ce_BxT * loss_weights(mask_BxT, loss_norm, denom)), sums


def summarize(sums: Mapping[str, Any]) -> Metrics:
  """Token-weighted means (loss, trace_loss, plan_loss, accuracy) and token counts from sums
  (of one step, or added over eval batches)."""
  sums = {k: jnp.asarray(v, jnp.float32) for k, v in sums.items()}
  n = jnp.maximum(sums["loss_tokens"], 1.0)
  return {
      "loss": sums["loss_sum"] / n,
      "trace_loss": sums["trace_loss_sum"] / jnp.maximum(sums["trace_tokens"], 1.0),
      "plan_loss": sums["plan_loss_sum"] / jnp.maximum(sums["plan_tokens"], 1.0),
      "accuracy": sums["correct_sum"] / n,
      "loss_tokens": sums["loss_tokens"],
      "trace_tokens": sums["trace_tokens"],
      "plan_tokens": sums["plan_tokens"],
  }

