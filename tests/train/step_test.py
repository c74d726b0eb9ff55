"""Train / eval steps (the generic builder with the planning loss): overfitting, sharded == single device, grad accumulation, metrics."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualformer_jax import config as config_lib
from dualformer_jax.model import sharding
from dualformer_jax.model import transformer
from dualformer_jax.train import planning_loss
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.schedule import make_schedule

V, B, P, T = 20, 8, 8, 12


def _config(data=-1, fsdp=1, tensor=1, grad_accum=1, remat="none", attention="auto"
            ) -> config_lib.RunConfig:
  """A checked tiny run whose model has this file's V-token vocabulary."""
  c = config_lib.base_config()
  c.model.size = "tiny"
  c.model.remat, c.model.attention = remat, attention
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
  c.train.batch_size = B
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 5
  c.train.num_steps = 150
  c.train.weight_decay = 0.01
  c.train.grad_accum = grad_accum
  run = config_lib.validate(c)
  return dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=V))


def _batch(seed: int) -> dict[str, np.ndarray]:
  """Rows of different lengths: trace tokens, then plan tokens, then pads."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, V, (B, P)).astype(np.int32)
  dec = rng.integers(3, V, (B, T)).astype(np.int32)
  trace = np.zeros((B, T), np.float32)
  plan = np.zeros((B, T), np.float32)
  for i in range(B):
    enc[i, rng.integers(3, P + 1):] = 0
    n_trace, n_plan = rng.integers(0, 6), rng.integers(1, 6)
    trace[i, :n_trace] = 1
    plan[i, n_trace:n_trace + n_plan] = 1
    dec[i, n_trace + n_plan + 1:] = 0
  targets = np.concatenate([dec[:, 1:], np.zeros((B, 1), np.int32)], axis=1)
  return {"enc_ids": enc, "dec_ids": dec, "targets": targets, "trace_mask": trace,
          "plan_mask": plan, "level": rng.integers(0, 5, B).astype(np.int32)}


def _mesh(run, n: int):
  return sharding.make_mesh(run.mesh, devices=jax.devices()[:n])


@pytest.fixture(scope="module")
def single():
  """One-device state (kept pristine: tests take copies) and its jitted step."""
  c = _config()
  mesh = _mesh(c, 1)
  graphdef, state, shardings = step_lib.create_train_state(c.model, c.train, mesh, seed=0)
  step = step_lib.make_train_step(graphdef, c.train, mesh, shardings)
  return dict(config=c, mesh=mesh, graphdef=graphdef, state=state, shardings=shardings, step=step)


def _copy(state, shardings):
  return jax.device_put(jax.tree.map(jnp.copy, state), shardings)


def _params_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_overfits_eight_sequences(single):
  state = _copy(single["state"], single["shardings"])
  batch = _batch(0)
  first = None
  for _ in range(150):
    state, metrics = single["step"](state, batch)
    first = first if first is not None else float(metrics["loss"])
  assert int(state.step) == 150
  _, metrics = single["step"](state, batch)  # the loss of the trained params
  assert first > 2.0
  assert float(metrics["loss"]) < 0.05, float(metrics["loss"])
  assert float(metrics["accuracy"]) == 1.0


def test_metrics_and_state_after_one_step(single):
  state = _copy(single["state"], single["shardings"])
  batch = _batch(1)
  new, m = single["step"](state, batch)
  assert int(new.step) == 1 and state.step.is_deleted()  # the old state was donated
  n_trace, n_plan = batch["trace_mask"].sum(), batch["plan_mask"].sum()
  assert float(m["trace_tokens"]) == n_trace and float(m["plan_tokens"]) == n_plan
  assert float(m["loss_tokens"]) == n_trace + n_plan
  np.testing.assert_allclose(float(m["loss"]) * (n_trace + n_plan),
                             float(m["trace_loss"]) * n_trace + float(m["plan_loss"]) * n_plan,
                             rtol=1e-5)
  assert float(m["learning_rate"]) == pytest.approx(float(make_schedule(single["config"].train)(0)))
  assert float(m["grad_norm"]) > 0 and 0.0 <= float(m["accuracy"]) <= 1.0
  assert all(v.shape == () and v.dtype == jnp.float32 for v in m.values())


@pytest.mark.parametrize("mesh_shape,remat,attention", [((8, 1, 1), "none", "auto"),
                                                        ((2, 2, 2), "full", "blockwise")])
def test_sharded_training_matches_single_device(single, mesh_shape, remat, attention):
  """Also: remat (a checkpointed scan over stacked block params) and blockwise attention
  under fsdp and tensor sharding compute what the plain single-device step does."""
  c = _config(*mesh_shape, remat=remat, attention=attention)
  mesh = _mesh(c, 8)
  abstract = step_lib.abstract_train_state(c.model, c.train, mesh, seed=0)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  sharded_step = step_lib.make_train_step(transformer.graphdef(c.model), c.train, mesh,
                                          shardings)
  ref = _copy(single["state"], single["shardings"])
  state = _copy(single["state"], shardings)
  for i in range(3):
    batch = _batch(10 + i)
    ref, m_ref = single["step"](ref, batch)
    state, m = sharded_step(state, sharding.shard_batch(batch, mesh))
    # float32 reductions run in another order across devices: agree to 1e-5 relative.
    np.testing.assert_allclose(float(m["loss"]), float(m_ref["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(m_ref["grad_norm"]), rtol=1e-4)
  # Adam divides by sqrt(v), which amplifies the relative error of tiny gradients:
  # params agree to 1e-4 (the per-step change is ~lr = 1e-3).
  _params_close(state.params, ref.params, atol=1e-4)
  wq = state.params["decoder"][0]["attn"]["wq"].get_value()  # [D, H, K]
  d, h, k = wq.shape
  assert wq.addressable_shards[0].data.shape == (d // mesh_shape[1], h // mesh_shape[2], k)


def test_grad_accumulation_equals_full_batch(single):
  results = []
  for accum in (1, 2):
    c = _config(data=2, grad_accum=accum)
    mesh = _mesh(c, 2)
    abstract = step_lib.abstract_train_state(c.model, c.train, mesh, seed=0)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    step = step_lib.make_train_step(single["graphdef"], c.train, mesh, shardings)
    results.append(step(_copy(single["state"], shardings), _batch(20)))
  (full, m_full), (acc, m_acc) = results
  for k in ("loss", "trace_loss", "plan_loss", "accuracy", "loss_tokens", "grad_norm"):
    np.testing.assert_allclose(float(m_acc[k]), float(m_full[k]), rtol=1e-5, err_msg=k)
  _params_close(acc.params, full.params, atol=1e-4)  # see the sharded test: Adam amplifies


def test_eval_step_sums_add_up(single):
  state = _copy(single["state"], single["shardings"])
  eval_step = step_lib.make_eval_step(single["graphdef"], single["mesh"], single["shardings"])
  batch = _batch(30)
  whole = eval_step(state.params, batch)
  halves = [eval_step(state.params, {k: v[s] for k, v in batch.items()})
            for s in (slice(0, B // 2), slice(B // 2, B))]
  for k, v in whole.items():
    np.testing.assert_allclose(float(v), float(halves[0][k] + halves[1][k]), rtol=1e-5, err_msg=k)
  _, m = single["step"](state, batch)  # metrics of the params before the update
  summary = planning_loss.summarize(whole)
  for k in ("loss", "trace_loss", "plan_loss", "accuracy"):
    np.testing.assert_allclose(float(summary[k]), float(m[k]), rtol=1e-5, err_msg=k)


def test_abstract_state_matches_created_state_and_the_params_alone(single):
  c = _config(2, 2, 2)
  mesh = _mesh(c, 8)
  abstract = step_lib.abstract_train_state(c.model, c.train, mesh, seed=0)
  assert jax.tree.structure(abstract) == jax.tree.structure(single["state"])
  for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(single["state"])):
    assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (x.shape, x.dtype)
    assert a.sharding.mesh == mesh
  # What evaluation restores (the params alone) is laid out as training saves them.
  params = transformer.abstract_params(c.model, mesh)
  assert jax.tree.structure(params) == jax.tree.structure(abstract.params)
  assert jax.tree.leaves(params) == jax.tree.leaves(abstract.params)


def test_bad_batches_are_rejected(single):
  state = _copy(single["state"], single["shardings"])
  batch = _batch(40)
  with pytest.raises(ValueError, match="missing \\['plan_mask'\\]"):
    single["step"](state, {k: v for k, v in batch.items() if k != "plan_mask"})
  with pytest.raises(ValueError, match="targets"):
    single["step"](state, {**batch, "targets": batch["targets"][:, :-1]})
  c = _config(2, 2, 2)
  mesh = _mesh(c, 8)
  shardings = jax.tree.map(lambda a: a.sharding,
                           step_lib.abstract_train_state(c.model, c.train, mesh, 0))
  step = step_lib.make_train_step(single["graphdef"], c.train, mesh, shardings)
  with pytest.raises(ValueError, match="micro-batch size 6 .* data\\*fsdp=4"):
    step(_copy(single["state"], shardings), {k: v[:6] for k, v in batch.items()})


def _levels_pool():
  """16 examples of four drop levels: level 0 keeps a 40-token trace, level 3 none."""
  lengths = {0: 44, 1: 24, 2: 12, 3: 4}  # loss tokens (trace + plan) per level
  levels = np.repeat(np.arange(4), 4)
  mask = np.zeros((16, 48), np.float32)
  for i, lvl in enumerate(levels):
    mask[i, :lengths[int(lvl)]] = 1
  return levels, mask


@pytest.mark.parametrize("loss_norm", ["sequence", "token"])
def test_drop_level_weights_do_not_depend_on_bucketing(loss_norm):
  """Each drop level's share of the gradient under two batchings of the same 16
  examples: batches of one length (what bucketing makes) vs mixed batches."""
  levels, mask = _levels_pool()
  bucketed = [np.flatnonzero(levels == lvl) for lvl in range(4)]  # one level per batch
  mixed = [np.arange(b, 16, 4) for b in range(4)]  # every batch has all four levels

  def level_weights(batches):
    w = np.zeros(16)
    for rows in batches:
      m = jnp.asarray(mask[rows])
      w[rows] = np.asarray(planning_loss.loss_weights(
          m, loss_norm, planning_loss.loss_denominator(m, loss_norm))).sum(axis=1)
    return np.array([w[levels == lvl].sum() for lvl in range(4)])

  a, b = level_weights(bucketed), level_weights(mixed)
  if loss_norm == "sequence":
    np.testing.assert_allclose(a, [1.0] * 4, rtol=1e-6)  # each batch's 4 examples weigh 1/4
    np.testing.assert_allclose(b, a, rtol=1e-6)
  else:  # token: a plan-only example weighs 1/16 in its own bucket, 4/84 in a mixed one
    assert not np.allclose(a, b)
    assert b[3] < a[3] and b[0] > a[0]


def test_sequence_norm_gradient_is_the_mean_of_per_example_means(single):
  """Per example: its loss-token mean; per batch: the mean of those. The gradient
  summed over two batches is then the same however the examples are paired."""
  graphdef, params = single["graphdef"], single["state"].params
  full = _batch(3)
  order = np.argsort(full["trace_mask"].sum(1))  # short traces together, long together

  @functools.partial(jax.jit, static_argnames="loss_norm")
  def grad(params, part, loss_norm):
    m = part["trace_mask"] + part["plan_mask"]
    return jax.grad(lambda p: planning_loss.objective(
        graphdef, p, part, loss_norm, planning_loss.loss_denominator(m, loss_norm))[0])(params)

  def grad_sum(split_rows, loss_norm):
    total = None
    for rows in split_rows:
      g = grad(params, {k: jnp.asarray(v[rows]) for k, v in full.items() if k != "level"},
               loss_norm)
      total = g if total is None else jax.tree.map(jnp.add, total, g)
    return total

  by_length = [order[:B // 2], order[B // 2:]]
  interleaved = [order[0::2], order[1::2]]
  _params_close(grad_sum(by_length, "sequence"), grad_sum(interleaved, "sequence"), atol=1e-5)
  token_a, token_b = grad_sum(by_length, "token"), grad_sum(interleaved, "token")
  assert max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree.leaves(token_a), jax.tree.leaves(token_b))) > 1e-4
  # And the value: the mean over examples of each example's mean cross-entropy.
  m = full["trace_mask"] + full["plan_mask"]
  value, _ = jax.jit(lambda p, b, d: planning_loss.objective(graphdef, p, b, "sequence", d))(
      params, {k: jnp.asarray(v) for k, v in full.items() if k != "level"},
      planning_loss.loss_denominator(jnp.asarray(m), "sequence"))
  logits = jax.jit(lambda p: nnx.merge(graphdef, p)(full["enc_ids"], full["dec_ids"]))(params)
  ce = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
  ce = -np.take_along_axis(ce, full["targets"][..., None], -1)[..., 0]
  expected = np.mean((ce * m).sum(1) / m.sum(1))
  assert float(value) == pytest.approx(expected, rel=1e-5)
