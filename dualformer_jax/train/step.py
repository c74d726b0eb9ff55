"""Train state, optimizer, and the pure jitted train / eval steps of any model's Loss.

A `Loss` says what a model's objective is (the planning model's:
train/planning_loss.py; the LM's: lm/finetune.py); `build_train_step` and
`build_eval_step` jit it once with explicit in/out shardings (the train state
is donated), so the same code runs on 1 CPU device or a (data, fsdp, tensor)
mesh. No host syncs: metrics come back as device scalars. The planning model's
state and steps are wired up at the bottom of this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dualformer_jax.model import sharding
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model import transformer
from dualformer_jax.train import planning_loss
from dualformer_jax.train.schedule import make_schedule
from dualformer_jax.train.train_config import TrainConfig

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: nnx.State  # the model's params (nnx.Param leaves)
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Loss:
  """What the generic steps need from a model's loss.

  objective(params, batch, norm) -> (value to differentiate, sums): the sums add
  up over micro-batches and batches; `norm` is `normaliser(batch)` of the whole
  batch, so micro-batches (gradient accumulation) add up to the full batch's
  objective. `means(sums)` gives the metrics a step reports.
  """
  keys: tuple[str, ...]  # the batch entries the loss reads (the others are not sent)
  objective: Callable[[nnx.State, Batch, jax.Array], tuple[jax.Array, Metrics]]
  normaliser: Callable[[Batch], jax.Array]
  means: Callable[[Metrics], Metrics]
  check: Callable[[Batch], None] = lambda batch: None  # host-side checks before tracing


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


def new_state(params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
  """Step 0: `params` and a fresh optimizer state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def shardings_of(tree: Any) -> Any:
  """The shardings of a tree of (abstract) arrays: jit's in/out_shardings."""
  return jax.tree.map(lambda x: x.sharding, tree)


def _micro_batches(batch: Batch, accum: int, mesh: Mesh) -> Batch:
  """[B, ...] -> [A, B/A, ...] taking rows j, j+A, j+2A, ... into micro-batch j.

  Strided rows keep each device's share of every micro-batch local (no reshuffle).
  """
  spec = NamedSharding(mesh, P(None, sharding.BATCH_AXES))

  def split(x):
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, spec)

  return jax.tree.map(split, batch)


def _accumulate(loss: Loss, grad_fn: Callable, params: nnx.State, batch: Batch,
                norm: jax.Array, accum: int, mesh: Mesh) -> tuple[nnx.State, Metrics]:
  """(gradient, sums) of the batch, added over `accum` micro-batches in a scan."""
  micro = _micro_batches(batch, accum, mesh)

  def body(carry, part):
    g_acc, s_acc = carry
    (_, s), g = grad_fn(params, part, norm)
    return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

  sums_shape = jax.eval_shape(
      lambda: loss.objective(params, jax.tree.map(lambda x: x[0], micro), norm)[1])
  zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
  (grads, sums), _ = jax.lax.scan(body, (jax.tree.map(jnp.zeros_like, params), zero_sums),
                                  micro)
  return grads, sums


def _under_mesh(mesh: Mesh, loss: Loss, grad_accum: int, jitted: Callable) -> Callable:
  """Checks the batch (args[1]) and keeps only `loss.keys` of it, then calls (and traces)
  `jitted` under jax.set_mesh(mesh) so the model can pin activation shardings. `.lower`
  (for memory analysis without running: compile.py, benchmarks/) is kept."""
  def prepare(args):
    state, batch = args[0], args[1]
    loss.check(batch)
    sharding.check_batch_size(batch[loss.keys[0]].shape[0], mesh, grad_accum)
    return (state, {k: batch[k] for k in loss.keys}, *args[2:])

  def call(*args):
    args = prepare(args)
    with jax.set_mesh(mesh):
      return jitted(*args)

  def lower(*args):
    args = prepare(args)
    with jax.set_mesh(mesh):
      return jitted.lower(*args)

  call.lower = lower
  return call


def build_train_step(loss: Loss, train_cfg: Any, mesh: Mesh, state_shardings: TrainState,
                     grad_accum: int = 1
                     ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """train_step(state, batch) -> (state, metrics); jitted once, state donated.

  Metrics: `loss.means` of the batch's sums, grad_norm (before clipping) and
  learning_rate (float32 scalars). grad_accum > 1 adds the gradients of that many
  micro-batches (strided rows) before one optimizer update.
  """
  tx, schedule = make_optimizer(train_cfg), make_schedule(train_cfg)
  grad_fn = jax.value_and_grad(loss.objective, has_aux=True)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    norm = loss.normaliser(batch)
    if grad_accum == 1:
      (_, sums), grads = grad_fn(state.params, batch, norm)
    else:
      grads, sums = _accumulate(loss, grad_fn, state.params, batch, norm, grad_accum, mesh)
    grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = loss.means(sums)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return _under_mesh(mesh, loss, grad_accum, jax.jit(
      train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0))


def build_eval_step(loss: Loss, mesh: Mesh, param_shardings: nnx.State
                    ) -> Callable[[nnx.State, Batch], Metrics]:
  """eval_step(params, batch) -> the loss's sums, to add over batches (then `loss.means`)."""
  def eval_step(params: nnx.State, batch: Batch) -> Metrics:
    return loss.objective(params, batch, jnp.ones((), jnp.float32))[1]

  return _under_mesh(mesh, loss, 1, jax.jit(
      eval_step, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh)))


# ------------------------------------------------------------------ the planning model

def _planning_init(model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int
                   ) -> Callable[[], TrainState]:
  tx = make_optimizer(train_cfg)
  return lambda: new_state(
      nnx.state(transformer.Transformer(model_cfg, rngs=nnx.Rngs(seed)), nnx.Param), tx)


def abstract_train_state(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh: Mesh, seed: int
                         ) -> TrainState:
  """The planning model's state as ShapeDtypeStructs with shardings; no arrays made."""
  return sharding.abstract_of(_planning_init(model_cfg, train_cfg, seed), mesh)


def create_train_state(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh: Mesh, seed: int
                       ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """Freshly initialised, sharded train state: (graphdef, state, state_shardings).

  Params are created inside jit with out_shardings, so no unsharded copy exists.
  """
  init = _planning_init(model_cfg, train_cfg, seed)
  shardings = shardings_of(sharding.abstract_of(init, mesh))
  state = jax.jit(init, out_shardings=shardings)()
  return transformer.graphdef(model_cfg), state, shardings


def _loss(graphdef: nnx.GraphDef, loss_norm: str) -> Loss:
  return Loss(
      keys=planning_loss.REQUIRED_KEYS,
      objective=lambda params, batch, denom: planning_loss.objective(
          graphdef, params, batch, loss_norm, denom),
      normaliser=lambda batch: planning_loss.batch_denominator(batch, loss_norm),
      means=planning_loss.summarize, check=planning_loss.check_batch)


def make_train_step(graphdef: nnx.GraphDef, train_cfg: TrainConfig, mesh: Mesh,
                    state_shardings: TrainState
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The planning model's train step: objective normalised per train_cfg.loss_norm
  (planning_loss.loss_weights), train_cfg.grad_accum micro-batches. Metrics: loss,
  trace_loss, plan_loss, accuracy (token means), loss/trace/plan token counts,
  grad_norm, learning_rate."""
  return build_train_step(_loss(graphdef, str(train_cfg.loss_norm)), train_cfg, mesh,
                          state_shardings, int(train_cfg.grad_accum))


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh, state_shardings: TrainState
                   ) -> Callable[[nnx.State, Batch], Metrics]:
  """The planning model's eval step: loss sums (see planning_loss.summarize); the sums do
  not depend on the objective's normalisation, so any loss_norm serves."""
  return build_eval_step(_loss(graphdef, "token"), mesh, state_shardings.params)
