"""lm/finetune.py: the math run end to end at tiny scale (from scratch and fine-tuning a
checkpoint with its tokenizer.json), resume, refusals, and the per-sequence loss."""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx

from configs import math as math_configs
from dualformer_jax import workdir_lock
from dualformer_jax.lm import hf_checkpoint
from dualformer_jax.lm import math_data as md
from dualformer_jax.lm import finetune, math_config
from dualformer_jax.lm.model import LM, LMConfig
from dualformer_jax.train.errors import CheckpointError
from dualformer_jax.train.logger import read_metrics


def tiny_config(num_steps=12, **overrides):
  c = math_configs.get_config("default")
  c.compilation_cache_dir = ""
  c.task.min_ops, c.task.max_ops, c.task.max_value = 2, 2, 10
  c.data.num_train, c.data.num_test, c.data.max_len = 200, 6, 32
  c.lm.dim, c.lm.num_layers, c.lm.num_heads, c.lm.num_kv_heads, c.lm.ffn_dim = 32, 1, 4, 2, 64
  c.train.num_steps, c.train.batch_size = num_steps, 8  # 8 simulated devices
  c.train.warmup_steps, c.train.log_every, c.train.checkpoint_every = 2, 4, 4
  c.eval.num_samples, c.eval.pass_ks, c.eval.problems_per_batch = 2, (1, 2), 3
  c.update_from_flattened_dict(overrides)
  return c


def tiny_run(num_steps=12, **overrides) -> math_config.MathRun:
  return math_config.validate(tiny_config(num_steps, **overrides))


def _scratch(run: math_config.MathRun, data: finetune.MathData):
  return finetune.scratch_config(run.lm, run.data.max_len, data.tok)


def test_scratch_run_trains_evaluates_and_resumes(tmp_path):
  c = tiny_run(num_steps=8, **{"data.drop_probs": (0.0, 0.5)})
  results = finetune.run(c, str(tmp_path))
  assert set(results) == {"p=0", "p=0.5"}
  for res in results.values():
    assert set(res) == {"slow", "fast"}
    for mode in res.values():
      assert mode["problems"] == 6 and 0 <= mode["greedy_at_1"] <= mode["pass_at_2"] <= 1
      assert mode["mean_tokens"] > 0
  saved = json.load(open(tmp_path / "math_results.json"))
  assert saved["results"] == results and "| p=0.5 | fast |" in saved["table"]
  rows = read_metrics(str(tmp_path / "p0"))
  assert [r["step"] for r in rows] == [4, 8] and all(np.isfinite(r["loss"]) for r in rows)

  # More steps resume from step 8 (not from scratch); evaluation only reads the checkpoint.
  c2 = tiny_run(num_steps=12, **{"data.drop_probs": (0.0,)})
  data = finetune.load_data(c2)
  _, state, _ = finetune.train(c2, str(tmp_path / "p0"), 0.0, data, _scratch(c2, data))
  assert int(state.step) == 12
  assert [r["step"] for r in read_metrics(str(tmp_path / "p0"))] == [4, 8, 12]

  # A checkpoint trained with p = 0 is not resumed as p = 0.5's.
  with pytest.raises(CheckpointError, match="other p"):
    finetune.train(c2, str(tmp_path / "p0"), 0.5, data, _scratch(c2, data))
  # ... nor with another architecture.
  c3 = tiny_run(num_steps=12, **{"lm.dim": 64})
  with pytest.raises(CheckpointError, match="other model"):
    finetune.train(c3, str(tmp_path / "p0"), 0.0, data, _scratch(c3, data))


@pytest.mark.parametrize("field,value", [("data.num_train", 150), ("train.batch_size", 16),
                                         ("train.learning_rate", 1e-3), ("data.num_test", 4),
                                         ("train.weight_decay", 0.0)])
def test_a_resume_with_other_data_or_optimisation_is_refused(trained_p0, field, value):
  """The checkpoint's record covers the data and the optimisation: a resume that would go
  on with other ones is refused naming the field, before any step."""
  c = tiny_run(num_steps=8, **{field: value})
  data = finetune.load_data(c)
  want = re.escape(f"other {field} ({field}: ") + r".* \(checkpoint\) vs " + re.escape(
      f"{value!r} (now)")
  with pytest.raises(CheckpointError, match=want):
    finetune.train(c, trained_p0, 0.0, data, _scratch(c, data))


@pytest.fixture(scope="module")
def trained_p0(tmp_path_factory):
  """A run directory with a 4-step checkpoint of tiny_config, p = 0."""
  run_dir = str(tmp_path_factory.mktemp("p0"))
  c = tiny_run(num_steps=4)
  data = finetune.load_data(c)
  finetune.train(c, run_dir, 0.0, data, _scratch(c, data))
  return run_dir


def test_a_second_math_run_on_one_workdir_is_refused(tmp_path):
  with workdir_lock.hold(str(tmp_path), "another math run"):
    with pytest.raises(workdir_lock.WorkdirBusy, match="another math run"):
      finetune.run(tiny_run(num_steps=4), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == [workdir_lock.LOCK_NAME]  # nothing trained


def test_a_mesh_that_does_not_fit_fails_before_any_file(tmp_path):
  workdir = tmp_path / "run"
  for overrides in ({"mesh.fsdp": 3}, {"train.batch_size": 12}):
    with pytest.raises(ValueError, match="config.mesh|batch size 12"):
      finetune.run(tiny_run(num_steps=4, **overrides), str(workdir))
  assert not workdir.exists()


def _word_tokenizer(words) -> tokenizers.Tokenizer:
  vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *dict.fromkeys(words)])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return tok


def test_fine_tunes_a_checkpoint_on_json_lines(tmp_path):
  """task.source=jsonl: the checkpoint's tokenizer.json and weights, loaded onto the mesh."""
  train, test = md.synthetic_splits(64, 4, 5, 2, 2, 10, 9)
  for name, split in (("train", train), ("test", test)):
    with open(tmp_path / f"{name}.jsonl", "w") as f:
      for e in split:
        f.write(json.dumps({"problem": e.problem, "steps": list(e.steps),
                            "answer": e.answer}) + "\n")
  words = md.WordVocab.for_synthetic(10, 9).tokens[3:]
  tok = _word_tokenizer(words)
  ckpt = tmp_path / "ckpt"
  cfg = LMConfig(vocab_size=tok.get_vocab_size() + 4, dim=32, num_layers=2, num_heads=4,
                 num_kv_heads=2, ffn_dim=64, max_position_embeddings=64, bos_id=1, eos_id=2,
                 pad_id=None)
  base = LM(cfg, rngs=nnx.Rngs(3))
  hf_checkpoint.save(base, str(ckpt))
  tok.save(str(ckpt / "tokenizer.json"))

  c = tiny_run(num_steps=4, **{
      "task.source": "jsonl", "lm.checkpoint": str(ckpt), "data.drop_probs": (0.3,),
      "data.train_file": str(tmp_path / "train.jsonl"),
      "data.test_file": str(tmp_path / "test.jsonl"), "mesh.fsdp": 2, "mesh.tensor": 2,
      "train.learning_rate": 1e-9})
  data = finetune.load_data(c)
  assert data.tok.pad_id == data.tok.eos_id == 2 and len(data.train) == 64
  # Synthetic problems read with the checkpoint's tokenizer.json, not the word vocabulary.
  synthetic = tiny_run(**{"lm.checkpoint": str(ckpt)})
  assert finetune.load_data(synthetic).tok.vocab_size == tok.get_vocab_size()
  # --mode=evaluate before any training scores the checkpoint as loaded.
  before = finetune.run(c, str(tmp_path / "before"), mode="evaluate")
  assert before["p=0.3"]["slow"]["problems"] == 4
  lm_cfg, init_params = finetune.model_source(c, data.tok)
  assert lm_cfg.num_layers == 2 and lm_cfg.vocab_size == cfg.vocab_size
  graphdef, state, _ = finetune.train(c, str(tmp_path / "run" / "p0.3"), 0.3, data, lm_cfg,
                                      init_params)
  assert int(state.step) == 4
  # A learning rate of 1e-9 leaves the loaded weights (not a fresh init) in place.
  want = nnx.state(base, nnx.Param)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  assert state.params["layers"]["wq"][...].sharding.spec != jax.sharding.PartitionSpec()
  # The run finds the trained checkpoint (no more steps) and evaluates it.
  results = finetune.run(c, str(tmp_path / "run"))
  assert results["p=0.3"]["slow"]["problems"] == 4
  assert [r["step"] for r in read_metrics(str(tmp_path / "run" / "p0.3"))] == [4]
  # Another train file (same name, other bytes) is other data: the resume is refused.
  with open(tmp_path / "train.jsonl", "a") as f:
    f.write(json.dumps({"problem": "1 + 1", "steps": ["1 + 1 = 2"], "answer": "2"}) + "\n")
  with pytest.raises(CheckpointError, match="other data.train_file_sha256"):
    finetune.run(c, str(tmp_path / "run"))


def test_config_errors_name_the_field(tmp_path):
  math_config.validate(tiny_config())
  bad = [({"data.drop_probs": (0.1, 1.0)}, "data.drop_probs"),
         ({"data.drop_probs": ()}, "data.drop_probs"),
         ({"eval.pass_ks": (1, 50)}, "eval.pass_ks"),
         ({"lm.num_kv_heads": 3}, "lm.num_heads"),
         ({"lm.param_dtype": "float16"}, "lm.param_dtype"),
         ({"task.source": "jsonl"}, "lm.checkpoint"),
         ({"lm.checkpoint": str(tmp_path)}, "lm.checkpoint"),
         ({"eval.modes": "slow,quick"}, "eval.modes"),
         ({"mesh.cpu_devices": 0}, "mesh.cpu_devices"),
         ({"mesh.cpu_devices": -1}, "mesh.cpu_devices")]
  for overrides, field in bad:
    with pytest.raises(ValueError, match=field):
      math_config.validate(tiny_config(**overrides))
  paper = math_configs.get_config("paper")
  with pytest.raises(ValueError, match="lm.checkpoint"):
    math_config.validate(paper)
  with pytest.raises(ValueError, match="unknown preset"):
    math_configs.get_config("papr")


def test_the_typed_run_records_what_older_checkpoints_recorded():
  """The record built from the frozen pieces holds the ConfigDict's values, key order
  included, as the record built from the ConfigDict did (so older checkpoints restore)."""
  c = tiny_config(**{"data.drop_probs": (0.0, 0.2)})
  run = math_config.validate(c)
  with pytest.raises(dataclasses.FrozenInstanceError):
    run.train.batch_size = 16
  data = finetune.load_data(run)
  lm_cfg = _scratch(run, data)
  before = {"p": 0.2, "data_seed": c.data.seed, "seed": c.seed, "task": c.task.to_dict(),
            "model": finetune.model_record(lm_cfg),
            "data": {k: c.data[k] for k in ("num_train", "num_test", "max_len")},
            "train": {k: c.train[k] for k in finetune.OPTIMISATION},
            "lm_checkpoint": c.lm.checkpoint}
  assert json.dumps(finetune._record(run, 0.2, lm_cfg)) == json.dumps(before)


def test_loss_is_the_mean_of_per_sequence_means():
  """A short solution weighs as much as a long one, and prompt tokens are not scored."""
  cfg = LMConfig(vocab_size=11, dim=16, num_layers=1, num_heads=2, num_kv_heads=1, ffn_dim=16)
  model = LM(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 11, (2, 9)).astype(np.int32)
  mask = np.zeros((2, 9), np.float32)
  mask[0, 2:9] = 1.0  # 7 solution tokens
  mask[1, 6:8] = 1.0  # 2 solution tokens, then padding
  valid = np.ones((2, 9), bool)
  valid[1, 8:] = False
  batch = {"ids": jnp.asarray(ids), "loss_mask": jnp.asarray(mask), "valid": jnp.asarray(valid)}
  got = finetune._means(finetune._sums(model, batch))
  logp = jax.nn.log_softmax(model(batch["ids"][:, :-1], batch["valid"][:, :-1]), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), ids[:, 1:, None], axis=-1)[..., 0]
  per_seq = [(nll[b] * mask[b, 1:]).sum() / mask[b, 1:].sum() for b in range(2)]
  np.testing.assert_allclose(float(got["loss"]), np.mean(per_seq), rtol=1e-5)
  assert float(got["solution_tokens"]) == 9.0
  # What the train step differentiates: the same mean, normalised over the whole batch.
  loss = finetune.lm_loss(nnx.split(model, nnx.Param)[0])
  value, _ = loss.objective(nnx.state(model, nnx.Param), batch, loss.normaliser(batch))
  np.testing.assert_allclose(float(value), np.mean(per_seq), rtol=1e-5)
