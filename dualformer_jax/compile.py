"""Compiles a preset's programs for a TPU topology that is not here: memory, FLOPs, roofline.

  python -m dualformer_jax.compile --config=configs/sokoban.py:paper --topology=v5e:2x4 \
      [--num_slices=N] [--per_device_batch=N] [--dec_len=N] [--lm_shape=llama-3-8b]

MaxText's train_compile for this project. With libtpu installed
(requirements-tpu.txt) JAX lowers and compiles for any TPU topology on any
Linux machine; nothing runs. The preset's mesh (config.mesh, as
launch/tpu_pod.sh runs it) is laid over the topology's chips, and the
programs are built by the code a real run uses:

  train    the trainer's jitted train step (train/step.py), at the preset's
           global batch (or --per_device_batch per data x fsdp shard), its
           longest decoder length (or --dec_len) and prompt length;
  sample   the evaluation's sampler program (infer/sampler.py) for
           eval.prompts_per_batch prompts x eval.num_samples rows;
  lm_train configs/math.py: the language model's train step (lm/finetune.py) with
           the checkpoint's shape (config.json of lm.checkpoint, or --lm_shape).

For each it prints per chip: argument / temp / output bytes against the
chip's HBM and whether they fit; FLOPs and bytes per step; a roofline lower
bound on the step time, max(FLOPs / peak, bytes / HBM bandwidth); the
tokens/s and model-FLOPs utilisation (MFU) that bound allows; and the days
train.num_steps would take at it. The last line is one JSON object.

The figures and the FLOP count are roofline.py's: XLA's cost analysis counts
a loop body once (layers under `scan`; kernels are opaque custom calls), so
train steps are timed by an analytic count, with XLA's printed beside it. The
sampler is a while loop over positions: its memory is exact, its per-step
cost is not a step time, so it gets no roofline.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.experimental import topologies
from ml_collections import config_flags

from dualformer_jax import config as config_lib
from dualformer_jax.config import RunConfig
from dualformer_jax.infer import modes, restore, sampler
from dualformer_jax.lm import finetune, hf_checkpoint, math_config, math_data
from dualformer_jax.lm.math_config import MathRun
from dualformer_jax.lm.model import LMConfig
from dualformer_jax.model import attention as attn_lib
from dualformer_jax.model import sharding
from dualformer_jax.model import transformer
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.errors import CheckpointError
from dualformer_jax.roofline import (CHIPS, GIB, Chip, lm_flops, out_of_memory, planning_flops,
                                     roofline, xla_figures)

# Hugging Face config.json fields of the checkpoints configs/math.py:paper fine-tunes
# (meta-llama/Meta-Llama-3-8B, mistralai/Mistral-7B-v0.1), for compiling without the weights.
LM_SHAPES = {
    "llama-3-8b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                   "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "intermediate_size": 14336,
                   "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                   "max_position_embeddings": 8192, "tie_word_embeddings": False,
                   "bos_token_id": 128000, "eos_token_id": 128001},
    "mistral-7b": {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
                   "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "intermediate_size": 14336,
                   "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "sliding_window": 4096,
                   "max_position_embeddings": 32768, "tie_word_embeddings": False,
                   "bos_token_id": 1, "eos_token_id": 2},
}


LM_PROMPT_LEN = 256  # prompt tokens the LM sampler program is compiled for (MATH problems)


# ------------------------------------------------------------------ devices

# libtpu probes the host for TPU metadata when it starts; these quiet it off a TPU VM (a
# TPU VM's own values win). Every JAX process of a machine with libtpu may hold its lock
# file; compiling needs no chip, so it need not wait for the lock.
_LIBTPU_ENV = {"TPU_ACCELERATOR_TYPE": "v5litepod-8", "TPU_WORKER_HOSTNAMES": "localhost",
               "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


@contextlib.contextmanager
def _libtpu_env():
  """_LIBTPU_ENV while libtpu starts, then the environment as it was: a TPU host name left
  behind would make a later `main` (a subprocess) believe it runs on a TPU pod."""
  added = {k: v for k, v in _LIBTPU_ENV.items() if k not in os.environ}
  os.environ.update(added)
  try:
    yield
  finally:
    for k in added:
      os.environ.pop(k, None)


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The chips of a TPU topology ("v5e:2x4", "v5p:4x4x4"), deviceless."""
  try:
    with _libtpu_env():
      topo = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                          num_slices=num_slices)
  except Exception as e:  # noqa: BLE001 - libtpu missing or a name it does not know
    raise ValueError(f"--topology={topology} (num_slices={num_slices}): JAX could not describe "
                     f"it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                     "install requirements-tpu.txt and use names such as v5e:2x4, "
                     "v5p:2x2x1, v4:2x2x2, v6e:2x4") from e
  return list(topo.devices)


def chip_of(device) -> Chip:
  kind = device.device_kind
  if kind in CHIPS:
    return CHIPS[kind]
  raise ValueError(f"no peak FLOP/s and HBM figures for device kind {kind!r}: add it to "
                   f"roofline.CHIPS (known: {sorted(CHIPS)})")


def advice(run: RunConfig | MathRun, fig: dict, chip: Chip, per_device_batch: int,
           split: int = 1) -> str:
  """Which knob would make a program that does not fit fit."""
  over = ((fig["peak_bytes"] or 0) - chip.hbm_bytes) / GIB
  if fig.get("name") == "sample":
    return (f"over by {over:.2f} GiB per chip; try fewer rows per sampler call: "
            f"eval.prompts_per_batch={run.eval.prompts_per_batch} (rounded up to "
            f"{split}, one prompt per data x fsdp shard) x eval.num_samples="
            f"{run.eval.num_samples}, a shorter eval.max_decode_len, or a chip with more HBM")
  if fig.get("name") == "lm_sample":
    return (f"over by {over:.2f} GiB per chip; try fewer rows per sampler call: "
            f"eval.problems_per_batch={run.eval.problems_per_batch} x eval.num_samples="
            f"{run.eval.num_samples} (rows split over data x fsdp = {split} when they "
            "divide), a larger mesh.fsdp, or a chip with more HBM")
  knobs = []
  if per_device_batch > 1:
    knobs.append(f"--per_device_batch={per_device_batch // 2} (with train.grad_accum to keep "
                 "the global batch)")
  remat = run.lm.remat if isinstance(run, MathRun) else run.model.remat
  if remat != "full":
    knobs.append("model remat 'full'")
  knobs.append("a larger mesh.fsdp (params and optimizer state split over more chips) or "
               "a slice with more HBM per chip")
  return f"over by {over:.2f} GiB per chip; try " + ", or ".join(knobs)


# ------------------------------------------------------------------ programs

def _sds(shape, dtype, placement):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=placement)


def train_program(run: RunConfig, mesh, per_device_batch: int, dec_len: int) -> dict:
  """The planning trainer's own train step (train/step.py), lowered for mesh, at
  per_device_batch examples per data x fsdp shard and dec_len decoder tokens."""

  model_cfg = run.model
  batch = per_device_batch * sharding.batch_divisor(mesh)
  sharding.check_batch_size(batch, mesh, run.train.grad_accum)
  abstract = step_lib.abstract_train_state(model_cfg, run.train, mesh, run.seed)
  shardings = step_lib.shardings_of(abstract)
  train_step = step_lib.make_train_step(transformer.graphdef(model_cfg), run.train, mesh,
                                        shardings)
  rows = sharding.batch_sharding(mesh)
  p = run.data.max_prompt_len
  example = {k: _sds((batch, dec_len), dt, rows) for k, dt in (
      ("dec_ids", jnp.int32), ("targets", jnp.int32), ("trace_mask", jnp.float32),
      ("plan_mask", jnp.float32))}
  example["enc_ids"] = _sds((batch, p), jnp.int32, rows)
  with jax.set_mesh(mesh):
    attention = attn_lib.resolve(model_cfg.attention, t=dec_len, s=dec_len,
                                 dtype=model_cfg.compute_dtype)
  return {"name": "train", "attention": attention, "batch": batch, "dec_len": dec_len,
          "lowered": train_step.lower(abstract, example),
          "flops": planning_flops(model_cfg, batch, p, dec_len), "tokens": batch * dec_len}


def sample_program(run: RunConfig, mesh, prompts: int, samples: int, max_len: int) -> dict:
  """The sampler's program (infer/sampler.py) for prompts x samples rows, as the
  evaluation calls it (params as trained on mesh, sampling dtype), lowered for mesh."""

  params = transformer.abstract_params(run.model, mesh)
  sample_cfg = restore.sampling_model_config(run.model, run.eval.dtype)
  rows = sharding.batch_sharding(mesh)
  p = run.data.max_prompt_len
  lowered = sampler.lower(
      transformer.graphdef(sample_cfg), params,
      _sds((prompts, p), jnp.int32, rows), _sds((prompts * samples, 4), jnp.int32, rows),
      _sds((prompts * samples,), jnp.int32, rows), num_samples=samples, max_len=max_len,
      top_k=run.eval.top_k, mesh=mesh)
  with jax.set_mesh(mesh):
    attention = attn_lib.resolve(sample_cfg.attention, t=p, s=p, dtype=sample_cfg.compute_dtype)
  return {"name": "sample", "attention": attention, "batch": prompts * samples,
          "dec_len": max_len, "lowered": lowered, "flops": None,
          "tokens": prompts * samples * max_len}


def planning_programs(run: RunConfig, mesh, per_device_batch: int, dec_len: int
                      ) -> list[dict]:
  """The train step and the evaluation's sampler program (infer/modes.py's rules:
  eval.prompts_per_batch prompts, rounded up to one per data x fsdp shard, x
  eval.num_samples rows of the decode length)."""
  prompts = modes.prompts_per_batch(run.eval.prompts_per_batch, mesh)
  max_len = modes.decode_len(run.eval.max_decode_len, run.data.max_decoder_len)
  return [train_program(run, mesh, per_device_batch, dec_len),
          sample_program(run, mesh, prompts, run.eval.num_samples, max_len)]


def lm_programs(run: MathRun, mesh, per_device_batch: int, seq_len: int, lm_shape: str
                ) -> list[dict]:
  """The language model's train step (lm/finetune.py) for the checkpoint's shape, lowered."""
  overrides = run.lm.execution()
  if lm_shape:
    if lm_shape not in LM_SHAPES:
      raise ValueError(f"--lm_shape={lm_shape!r}: expected one of {sorted(LM_SHAPES)}")
    lm_cfg = LMConfig.from_hf(LM_SHAPES[lm_shape], **overrides)
  elif run.lm.checkpoint:
    lm_cfg = hf_checkpoint.read_config(os.path.expanduser(run.lm.checkpoint), **overrides)
  elif run.task.source == "synthetic":  # trained from scratch on its word vocabulary
    lm_cfg = finetune.scratch_config(run.lm, run.data.max_len, math_data.WordVocab.for_synthetic(
        run.task.max_value, run.task.max_operand))
  else:
    raise ValueError("configs/math.py: set lm.checkpoint to a Hugging Face directory, or pass "
                     f"--lm_shape (one of {sorted(LM_SHAPES)}) to compile without the weights")
  batch = per_device_batch * sharding.batch_divisor(mesh)
  sharding.check_batch_size(batch, mesh)
  graphdef, _, abstract = finetune.init_state(run.train, run.seed, lm_cfg, mesh, None)
  shardings = step_lib.shardings_of(abstract)
  step = finetune.make_train_step(graphdef, run.train, mesh, shardings)
  rows = sharding.batch_sharding(mesh)
  batch_abstract = {"ids": _sds((batch, seq_len), jnp.int32, rows),
                    "valid": _sds((batch, seq_len), jnp.bool_, rows),
                    "loss_mask": _sds((batch, seq_len), jnp.bool_, rows)}
  with jax.set_mesh(mesh):
    attention = attn_lib.resolve(lm_cfg.attention, t=seq_len, s=seq_len,
                                 dtype=jnp.dtype(lm_cfg.dtype))
  train = {"name": "lm_train", "attention": attention, "batch": batch, "dec_len": seq_len,
           "lowered": step.lower(abstract, batch_abstract),
           "flops": lm_flops(lm_cfg, batch, seq_len), "tokens": batch * seq_len}
  # The evaluation's sampler (lm/math_eval.py): eval.problems_per_batch prompts of up to
  # LM_PROMPT_LEN tokens x eval.num_samples rows, rows over the mesh the params are on.
  prompts, n = int(run.eval.problems_per_batch), int(run.eval.num_samples)
  width = min(LM_PROMPT_LEN, seq_len // 2)
  eos = lm_cfg.eos_id if lm_cfg.eos_id is not None else 0
  lowered = sampler.lower(
      graphdef, abstract.params, jax.ShapeDtypeStruct((prompts, 0), jnp.int32),
      jax.ShapeDtypeStruct((prompts * n, width), jnp.int32),
      jax.ShapeDtypeStruct((prompts * n,), jnp.int32), num_samples=n, max_len=seq_len,
      top_k=int(run.eval.top_k), eos_id=eos, pad_id=lm_cfg.pad_id, mesh=mesh)
  sample = {"name": "lm_sample", "attention": "cached", "batch": prompts * n,
            "dec_len": seq_len, "lowered": lowered, "flops": None,
            "tokens": prompts * n * seq_len}
  return [train, sample]


def compile_preset(config: Any, devices: list, *, per_device_batch: int = 0, dec_len: int = 0,
                   lm_shape: str = "", log=print) -> dict:
  """Lowers and compiles the preset's programs for `devices`; the report as a dict."""
  is_lm = config.task.name == "math"
  if is_lm and lm_shape:  # the shape stands in for the checkpoint; no data is read
    checked = config.copy_and_resolve_references()
    checked.task.source, checked.lm.checkpoint = "synthetic", ""
    run = math_config.validate(checked)
  elif is_lm:
    run = math_config.validate(config)
  else:
    run = config_lib.validate(config)
  mesh = sharding.make_mesh(run.mesh, devices)
  split = sharding.batch_divisor(mesh)
  if not per_device_batch:
    if run.train.batch_size % split:
      raise ValueError(f"train.batch_size={run.train.batch_size} does not split over "
                       f"data x fsdp = {split} chips of mesh {dict(mesh.shape)}: pass "
                       "--per_device_batch")
    per_device_batch = run.train.batch_size // split
  chip = chip_of(devices[0])
  if is_lm:
    dec_len = dec_len or int(run.data.max_len)
    programs = lm_programs(run, mesh, per_device_batch, dec_len, lm_shape)
  else:
    dec_len = dec_len or int(run.data.max_decoder_len)
    programs = planning_programs(run, mesh, per_device_batch, dec_len)
  report = {"chips": len(devices), "device_kind": devices[0].device_kind,
            "hbm_bytes": chip.hbm_bytes, "mesh": dict(mesh.shape),
            "per_device_batch": per_device_batch, "programs": []}
  for prog in programs:
    t0 = time.perf_counter()
    try:
      fig = roofline(xla_figures(prog["lowered"].compile()), chip, len(devices), prog["flops"],
                     prog["tokens"], int(run.train.num_steps))
    except jax.errors.JaxRuntimeError as e:
      fig = out_of_memory(e, chip)
    row = {"name": prog["name"], "attention": prog["attention"], "batch": prog["batch"],
           "dec_len": prog["dec_len"], **fig, "compile_s": round(time.perf_counter() - t0, 1)}
    if not row["fits"]:
      row["advice"] = advice(run, row, chip, per_device_batch, split)
    report["programs"].append(row)
    log(describe(row, chip))
  return report


def describe(row: dict, chip: Chip) -> str:
  head = (f"{row['name']}: {row['attention']} attention, batch {row['batch']} x "
          f"{row['dec_len']} tokens, compiled in {row['compile_s']:.1f} s")
  if row["argument_bytes"] is None:  # refused by the compiler
    return "\n".join([head, f"  DOES NOT FIT {chip.hbm_bytes / GIB:.0f} GiB per chip: "
                             f"{row['compiler']}", f"  {row['advice']}"])
  lines = [head,
           f"  per chip: arguments {row['argument_bytes'] / GIB:.2f} GiB, temp "
           f"{row['temp_bytes'] / GIB:.2f} GiB, output {row['output_bytes'] / GIB:.2f} GiB "
           f"(aliased {row['alias_bytes'] / GIB:.2f}) -> {row['peak_bytes'] / GIB:.2f} of "
           f"{chip.hbm_bytes / GIB:.0f} GiB: {'fits' if row['fits'] else 'DOES NOT FIT'}"]
  if row.get("advice"):
    lines.append(f"  {row['advice']}")
  if row["roofline_s"] is not None:
    lines.append(
        f"  FLOPs per chip per step {row['flops']:.3e} (XLA's count {row['xla_flops']:.3e}: "
        f"loop bodies once), bytes {row['bytes_accessed']:.3e}")
    lines.append(
        f"  roofline >= {row['roofline_s'] * 1e3:.1f} ms per step: <= "
        f"{row['tokens_per_s']:,.0f} tokens/s on the slice, MFU <= "
        f"{row['mfu_bound']:.0%}; train.num_steps at that pace: {row['days']:.2f} days")
  return "\n".join(lines)


# ------------------------------------------------------------------ CLI

def cli() -> None:
  """python -m dualformer_jax.compile (module doc); the flags exist only in this process,
  so importing the module (benchmarks, tests) defines none."""
  config = config_flags.DEFINE_config_file("config", None, "config file[:preset]")
  topology = flags.DEFINE_string("topology", "v5e:2x4", "TPU topology, e.g. v5e:2x4, v5p:4x4x4")
  num_slices = flags.DEFINE_integer("num_slices", 1, "slices of that topology (multi-slice)")
  per_device_batch = flags.DEFINE_integer(
      "per_device_batch", 0, "examples per data x fsdp shard (0: train.batch_size split evenly)")
  dec_len = flags.DEFINE_integer("dec_len", 0,
                                 "decoder / sequence length (0: the preset's longest)")
  lm_shape = flags.DEFINE_string(
      "lm_shape", "", "configs/math.py: compile for this shape instead of lm.checkpoint's "
      f"({', '.join(sorted(LM_SHAPES))})")
  flags.mark_flags_as_required(["config"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
      devices = topology_devices(topology.value, num_slices.value)
      print(f"{topology.value} x {num_slices.value} slice(s): {len(devices)} chips of "
            f"{devices[0].device_kind}", flush=True)
      report = compile_preset(config.value, devices, per_device_batch=per_device_batch.value,
                              dec_len=dec_len.value, lm_shape=lm_shape.value,
                              log=lambda s: print(s, flush=True))
    except (ValueError, CheckpointError) as e:  # a Hugging Face config.json it cannot read
      print(f"compile: error: {e}", file=sys.stderr)
      sys.exit(2)
    report.update(topology=topology.value, num_slices=num_slices.value)
    print(json.dumps(report))

  app.run(main)


if __name__ == "__main__":
  cli()
