"""Train state, optimizer, and the pure jitted train / eval steps.

Each step is jitted once with explicit in/out shardings (the train state is
donated), so the same code runs on 1 CPU device or a (data, fsdp, tensor)
mesh. The loss is token cross-entropy over decoder targets where
trace_mask + plan_mask is 1, averaged over those tokens of the whole batch
(so gradient accumulation over micro-batches equals one full-batch step).
No host syncs: metrics come back as device scalars.

Batch contract (numpy or global jax arrays; shapes vary per length bucket):
  enc_ids int32 [B, P], dec_ids int32 [B, T], targets int32 [B, T],
  trace_mask float32 [B, T], plan_mask float32 [B, T], level int32 [B] (unused here).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dualformer_jax.model import sharding as shd
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model.transformer import Transformer
from dualformer_jax.train.schedule import make_schedule

REQUIRED_KEYS = ("enc_ids", "dec_ids", "targets", "trace_mask", "plan_mask")
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: nnx.State  # Transformer params (nnx.Param leaves)
  opt_state: optax.OptState


def make_optimizer(train_cfg: Any) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with the warm-up + cosine schedule.

  Weight decay skips rank-1 params (RMSNorm scales).
  """
  return optax.chain(
      optax.clip_by_global_norm(float(train_cfg.grad_clip)),
      optax.adamw(make_schedule(train_cfg), b1=float(train_cfg.b1), b2=float(train_cfg.b2),
                  weight_decay=float(train_cfg.weight_decay),
                  mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)),
  )


def _init_fn(config: Any, vocab_size: int, seed: int) -> Callable[[], TrainState]:
  model_cfg = ModelConfig.from_config(config.model, vocab_size)
  tx = make_optimizer(config.train)

  def init() -> TrainState:
    params = nnx.state(Transformer(model_cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return init


def _abstract(config: Any, vocab_size: int, mesh: Mesh, seed: int):
  init = _init_fn(config, vocab_size, seed)
  abstract = jax.eval_shape(init)
  return init, abstract, shd.tree_shardings(abstract, mesh)


def abstract_train_state(config: Any, vocab_size: int, mesh: Mesh, seed: int) -> TrainState:
  """ShapeDtypeStructs with shardings (an orbax restore target); no arrays made."""
  _, abstract, shardings = _abstract(config, vocab_size, mesh, seed)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def model_graphdef(config: Any, vocab_size: int) -> nnx.GraphDef:
  """The static half of the model (nnx.merge(graphdef, params) rebuilds it)."""
  model_cfg = ModelConfig.from_config(config.model, vocab_size)
  abstract_model = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract_model, nnx.Param)
  return graphdef


def create_train_state(config: Any, vocab_size: int, mesh: Mesh, seed: int
                       ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """Freshly initialised, sharded train state: (graphdef, state, state_shardings).

  Params are created inside jit with out_shardings, so no unsharded copy exists.
  """
  init, _, shardings = _abstract(config, vocab_size, mesh, seed)
  state = jax.jit(init, out_shardings=shardings)()
  return model_graphdef(config, vocab_size), state, shardings


def _check_batch(batch: Batch, mesh: Mesh, grad_accum: int) -> None:
  missing = [k for k in REQUIRED_KEYS if k not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; it has {sorted(batch)}")
  b, t = batch["dec_ids"].shape
  for k in ("targets", "trace_mask", "plan_mask"):
    if batch[k].shape != (b, t):
      raise ValueError(f"batch[{k!r}] has shape {batch[k].shape}, expected dec_ids' {(b, t)}")
  if batch["enc_ids"].ndim != 2 or batch["enc_ids"].shape[0] != b:
    raise ValueError(f"batch['enc_ids'] has shape {batch['enc_ids'].shape}, expected [{b}, P]")
  shd.check_batch_size(b, mesh, grad_accum)


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


def _loss_sums(graphdef: nnx.GraphDef, params: nnx.State, batch: Batch) -> Metrics:
  return _forward(graphdef, params, batch)[0]


def objective(graphdef: nnx.GraphDef, params: nnx.State, batch: Batch, loss_norm: str,
              denom: jax.Array) -> tuple[jax.Array, Metrics]:
  """(the training objective sum(ce * loss_weights), the batch's sums); what is differentiated."""
  sums, ce_BxT, mask_BxT = _forward(graphdef, params, batch)
  return jnp.sum(ce_BxT * loss_weights(mask_BxT, loss_norm, denom)), sums


def _means(sums: Metrics) -> Metrics:
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


def _micro_batches(batch: Batch, accum: int, mesh: Mesh) -> Batch:
  """[B, ...] -> [A, B/A, ...] taking rows j, j+A, j+2A, ... into micro-batch j.

  Strided rows keep each device's share of every micro-batch local (no reshuffle).
  """
  spec = NamedSharding(mesh, P(None, shd.BATCH_AXES))

  def split(x):
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, spec)

  return jax.tree.map(split, batch)


def _under_mesh(mesh: Mesh, grad_accum: int, jitted: Callable) -> Callable:
  """Checks the batch (args[1]), then calls (and traces) `jitted` under
  jax.set_mesh(mesh) so the model can pin activation shardings
  (transformer.constrain_batch). `.lower` is kept."""
  def call(*args):
    _check_batch(args[1], mesh, grad_accum)
    with jax.set_mesh(mesh):
      return jitted(*args)

  def lower(*args):
    _check_batch(args[1], mesh, grad_accum)
    with jax.set_mesh(mesh):
      return jitted.lower(*args)

  call.lower = lower
  return call


def make_train_step(graphdef: nnx.GraphDef, config: Any, mesh: Mesh, state_shardings: TrainState
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """train_step(state, batch) -> (state, metrics); jitted once, state donated.

  The objective is normalised per config.train.loss_norm (see `loss_weights`).
  Metrics (float32 scalars): loss, trace_loss, plan_loss, accuracy (token means,
  whatever the objective's normalisation), loss/trace/plan token counts,
  grad_norm (before clipping), learning_rate.
  """
  tx = make_optimizer(config.train)
  schedule = make_schedule(config.train)
  accum = int(config.train.grad_accum)
  loss_norm = str(config.train.loss_norm)

  def loss_fn(params: nnx.State, batch: Batch, denom: jax.Array):
    return objective(graphdef, params, batch, loss_norm, denom)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    batch = {k: batch[k] for k in REQUIRED_KEYS}
    mask_BxT = (batch["trace_mask"] + batch["plan_mask"]).astype(jnp.float32)
    denom = loss_denominator(mask_BxT, loss_norm)
    if accum == 1:
      (_, sums), grads = grad_fn(state.params, batch, denom)
    else:
      def body(carry, micro):
        g_acc, s_acc = carry
        (_, s), g = grad_fn(state.params, micro, denom)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

      zero_sums = jax.tree.map(lambda _: jnp.zeros((), jnp.float32),
                               jax.eval_shape(_loss_sums, graphdef, state.params, batch))
      zero_grads = jax.tree.map(jnp.zeros_like, state.params)
      (grads, sums), _ = jax.lax.scan(body, (zero_grads, zero_sums),
                                      _micro_batches(batch, accum, mesh))
    grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = _means(sums)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return _under_mesh(mesh, accum, jax.jit(
      train_step, in_shardings=(state_shardings, shd.batch_sharding(mesh)),
      out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0))


def make_eval_step(graphdef: nnx.GraphDef, config: Any, mesh: Mesh, state_shardings: TrainState
                   ) -> Callable[[nnx.State, Batch], Metrics]:
  """eval_step(params, batch) -> sums (loss_sum, trace_loss_sum, plan_loss_sum,
  correct_sum, loss/trace/plan token counts) to add over batches; see `summarize`."""
  del config  # the eval step has no knobs; kept for a uniform signature

  def eval_step(params: nnx.State, batch: Batch) -> Metrics:
    return _loss_sums(graphdef, params, {k: batch[k] for k in REQUIRED_KEYS})

  return _under_mesh(mesh, 1, jax.jit(
      eval_step, in_shardings=(state_shardings.params, shd.batch_sharding(mesh)),
      out_shardings=shd.replicated(mesh)))


def summarize(sums: Mapping[str, Any]) -> dict[str, Any]:
  """Token-weighted means (loss, trace_loss, plan_loss, accuracy) from eval sums."""
  return _means({k: jnp.asarray(v, jnp.float32) for k, v in sums.items()})
