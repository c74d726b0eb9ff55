"""Train / eval steps: overfitting, sharded == single device, grad accumulation, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualformer_jax import config as config_lib
from dualformer_jax.model import sharding as shd
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.schedule import make_schedule

V, B, P, T = 20, 8, 8, 12


def _config(data=-1, fsdp=1, tensor=1, grad_accum=1):
  c = config_lib.base_config()
  c.model.size = "tiny"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
  c.train.batch_size = B
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 5
  c.train.num_steps = 150
  c.train.weight_decay = 0.01
  c.train.grad_accum = grad_accum
  config_lib.validate(c)
  return c


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


def _mesh(c, n: int):
  return shd.make_mesh(c.mesh, devices=jax.devices()[:n])


@pytest.fixture(scope="module")
def single():
  """One-device state (kept pristine: tests take copies) and its jitted step."""
  c = _config()
  mesh = _mesh(c, 1)
  graphdef, state, shardings = step_lib.create_train_state(c, V, mesh, seed=0)
  step = step_lib.make_train_step(graphdef, c, mesh, shardings)
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
  c = _config(*mesh_shape)
  c.model.remat, c.model.attention = remat, attention
  mesh = _mesh(c, 8)
  abstract = step_lib.abstract_train_state(c, V, mesh, seed=0)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  sharded_step = step_lib.make_train_step(step_lib.model_graphdef(c, V), c, mesh, shardings)
  ref = _copy(single["state"], single["shardings"])
  state = _copy(single["state"], shardings)
  for i in range(3):
    batch = _batch(10 + i)
    ref, m_ref = single["step"](ref, batch)
    state, m = sharded_step(state, shd.shard_batch(batch, mesh))
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
    abstract = step_lib.abstract_train_state(c, V, mesh, seed=0)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    step = step_lib.make_train_step(single["graphdef"], c, mesh, shardings)
    results.append(step(_copy(single["state"], shardings), _batch(20)))
  (full, m_full), (acc, m_acc) = results
  for k in ("loss", "trace_loss", "plan_loss", "accuracy", "loss_tokens", "grad_norm"):
    np.testing.assert_allclose(float(m_acc[k]), float(m_full[k]), rtol=1e-5, err_msg=k)
  _params_close(acc.params, full.params, atol=1e-4)  # see the sharded test: Adam amplifies


def test_eval_step_sums_add_up(single):
  state = _copy(single["state"], single["shardings"])
  eval_step = step_lib.make_eval_step(single["graphdef"], single["config"], single["mesh"],
                                      single["shardings"])
  batch = _batch(30)
  whole = eval_step(state.params, batch)
  halves = [eval_step(state.params, {k: v[s] for k, v in batch.items()})
            for s in (slice(0, B // 2), slice(B // 2, B))]
  for k, v in whole.items():
    np.testing.assert_allclose(float(v), float(halves[0][k] + halves[1][k]), rtol=1e-5, err_msg=k)
  _, m = single["step"](state, batch)  # metrics of the params before the update
  summary = step_lib.summarize(whole)
  for k in ("loss", "trace_loss", "plan_loss", "accuracy"):
    np.testing.assert_allclose(float(summary[k]), float(m[k]), rtol=1e-5, err_msg=k)


def test_abstract_state_matches_created_state(single):
  c = _config(2, 2, 2)
  mesh = _mesh(c, 8)
  abstract = step_lib.abstract_train_state(c, V, mesh, seed=0)
  assert jax.tree.structure(abstract) == jax.tree.structure(single["state"])
  for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(single["state"])):
    assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (x.shape, x.dtype)
    assert a.sharding.mesh == mesh


def test_bad_batches_are_rejected(single):
  state = _copy(single["state"], single["shardings"])
  batch = _batch(40)
  with pytest.raises(ValueError, match="missing \\['plan_mask'\\]"):
    single["step"](state, {k: v for k, v in batch.items() if k != "plan_mask"})
  with pytest.raises(ValueError, match="targets"):
    single["step"](state, {**batch, "targets": batch["targets"][:, :-1]})
  c = _config(2, 2, 2)
  mesh = _mesh(c, 8)
  shardings = jax.tree.map(lambda a: a.sharding, step_lib.abstract_train_state(c, V, mesh, 0))
  step = step_lib.make_train_step(single["graphdef"], c, mesh, shardings)
  with pytest.raises(ValueError, match="micro-batch size 6 .* data\\*fsdp=4"):
    step(_copy(single["state"], shardings), {k: v[:6] for k, v in batch.items()})
