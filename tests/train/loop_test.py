"""The one training loop with a toy step: saves, logs one step late, hooks, signals, resume."""

import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualformer_jax.train import loop as loop_lib
from dualformer_jax.train.checkpoint import Checkpointer
from dualformer_jax.train.logger import MetricLogger, read_metrics


def make_loop(workdir, num_steps=4, signal_at=0, loss=1.0, **hooks):
  """A loop whose state counts the batches it was given; SIGTERM arrives in step `signal_at`."""
  def train_step(state, batch):
    if int(batch["x"]) == signal_at:
      signal.raise_signal(signal.SIGTERM)
    return {"w": state["w"] + batch["x"]}, {"loss": jnp.float32(loss)}

  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  return loop_lib.Loop(
      train_step=train_step, next_batch=lambda step: {"x": jnp.float32(step)},
      ckpt=Checkpointer.with_record(str(workdir), 2, {"run": "toy"}),
      logger=MetricLogger(str(workdir)), mesh=mesh, num_steps=num_steps, log_every=2,
      checkpoint_every=2, **hooks)


def test_runs_saves_logs_and_calls_the_hooks(tmp_path):
  calls = []
  loop = make_loop(tmp_path, log_fields=lambda step: {"extra": float(step)},
                   validate=lambda step, state: calls.append(("valid", step)) or 0.5,
                   after_step=lambda step, state: calls.append(("after", step)))
  out = loop_lib.run(loop, {"w": jnp.zeros(())}, 0)
  assert (out.step, out.signal_number, float(out.state["w"])) == (4, 0, 1 + 2 + 3 + 4)
  assert calls == [("after", 1), ("valid", 2), ("after", 2), ("after", 3), ("valid", 4),
                   ("after", 4)]
  assert [(r["step"], r["extra"]) for r in read_metrics(str(tmp_path))] == [(2, 2.0), (4, 4.0)]
  ckpt = Checkpointer.with_record(str(tmp_path), 2, {"run": "toy"})
  assert ckpt.all_steps() == [2, 4] and ckpt.read_meta(4)["valid_loss"] == 0.5
  ckpt.close()


@pytest.mark.parametrize("signal_at,saved", [(3, [2, 3]), (2, [2])])
def test_a_signal_saves_the_finished_step_once_and_stops(tmp_path, signal_at, saved):
  """Also on a periodic save step (saved once, not twice); then resume goes on from it,
  and the scheduled steps are those of a run without the signal (a signal in step 3
  saves a resume point only)."""
  out = loop_lib.run(make_loop(tmp_path, signal_at=signal_at), {"w": jnp.zeros(())}, 0)
  assert (out.step, out.signal_number) == (signal_at, signal.SIGTERM)
  loop = make_loop(tmp_path)
  assert loop.ckpt.all_steps() == saved and loop.ckpt.scheduled_steps() == [2]
  abstract = {"w": jax.ShapeDtypeStruct((), jnp.float32)}
  start, state = loop_lib.resume(loop.ckpt, lambda s: loop.ckpt.restore(s, abstract, None))
  assert start == signal_at and float(state["w"]) == sum(range(1, signal_at + 1))
  out = loop_lib.run(loop, state, start)
  assert out.step == 4 and float(out.state["w"]) == 10.0
  loop.ckpt.manager.wait_until_finished()
  assert loop.ckpt.scheduled_steps() == [2, 4]


def test_a_non_finite_loss_stops_at_its_step(tmp_path):
  with pytest.raises(FloatingPointError, match="loss is nan at step 2"):
    loop_lib.run(make_loop(tmp_path, loss=np.nan), {"w": jnp.zeros(())}, 0)
