"""A trained planning model, ready to sample: its graphdef (in the sampling dtype) and
params restored from a run's checkpoint. Used by evaluation and bootstrapping."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from dualformer_jax.data.vocab import Vocab
from dualformer_jax.model import transformer
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.train.checkpoint import Checkpointer
from dualformer_jax.train.errors import CheckpointError


def sampling_model_config(model_cfg: ModelConfig, eval_dtype: str) -> ModelConfig:
  """The model that samples: `model_cfg`, computing in eval_dtype when that is set.

  Params are float32 whatever the compute dtype, so a model trained in bfloat16
  samples in float32 from the same checkpoint."""
  if eval_dtype and eval_dtype != model_cfg.dtype:
    model_cfg = dataclasses.replace(model_cfg, dtype=eval_dtype)
  return model_cfg


def restore_params(config: ml_collections.ConfigDict, model_cfg: ModelConfig, eval_dtype: str,
                   workdir: str, vocab: Vocab, mesh: Mesh, step: int
                   ) -> tuple[nnx.GraphDef, nnx.State, int]:
  """(graphdef, params, step) of checkpoint `step` of the run in `workdir`, the params on
  `mesh` (read alone, their checksums verified), the graphdef computing in the sampling
  dtype (sampling_model_config). `config`, the run's whole config, is the record the
  checkpoint is checked against (train/checkpoint.compat_view).

  step -1, the latest, falls back to the newest usable step when later ones are
  damaged, saying so; an explicit step that is damaged is an error.
  """
  ckpt = Checkpointer(workdir, config, vocab.to_list())
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {ckpt.directory}; train first (--mode=train)")
    if step >= 0 and step not in steps:
      raise CheckpointError(f"no checkpoint {step} in {ckpt.directory}; have {steps}")
    abstract = transformer.abstract_params(model_cfg, mesh)
    if step >= 0:
      params = ckpt.restore_params(step, abstract)
    else:
      say = print if jax.process_index() == 0 else (lambda _: None)
      step, params, damaged = ckpt.newest_good(lambda s: ckpt.restore_params(s, abstract), say)
      if damaged:
        say(f"warning: checkpoints {damaged} are damaged: evaluating checkpoint {step}")
  finally:
    ckpt.close()
  return transformer.graphdef(sampling_model_config(model_cfg, eval_dtype)), params, step
