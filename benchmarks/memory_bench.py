"""Memory of a preset's train step and sampler step, from XLA's analysis of the compiled
programs: nothing is run, so paper presets can be sized on a laptop.

  python benchmarks/memory_bench.py --config=configs/sokoban.py:paper \
      --dec_lens=2048,4096,8192 --per_device_batch=8
  python benchmarks/memory_bench.py --config=configs/maze.py:paper_30 --devices=8 \
      --config.mesh.fsdp=8 --config.mesh.data=1
  python benchmarks/memory_bench.py --config=configs/maze.py --config.model.layers=1 \
      --config.model.dim=32 --config.data.max_decoder_len=32 --per_device_batch=1 \
      --samples=2   # seconds: a check that it still runs

Each row lowers and compiles the jitted train step (the trainer's own, with
the preset's dtype, attention and remat) for one decoder length at
`per_device_batch` examples per device and `max_prompt_len` prompt tokens,
and prints XLA's per-device temp / argument / output bytes. With --devices=N
the step is compiled for N simulated CPU devices on the preset's mesh (a
global batch of N x per_device_batch), so fsdp / tensor sharding shows in
the figures. Then the sampler's program at `--samples` rows for one prompt
and the preset's longest decoder length. The last line is one JSON object.
"""

from __future__ import annotations

import os
import sys


def _devices_from_argv(argv: list[str]) -> int:
  for a in argv:
    if a.startswith("--devices="):
      return int(a.split("=", 1)[1])
  return 1


if __name__ == "__main__":  # before jax is imported: simulated devices (a stale count replaced)
  os.environ["XLA_FLAGS"] = " ".join(
      [f for f in os.environ.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + [f"--xla_force_host_platform_device_count={_devices_from_argv(sys.argv)}"])

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dualformer_jax import compile as compile_lib  # noqa: E402
from dualformer_jax import config as config_lib  # noqa: E402
from dualformer_jax.model import sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:preset]")
flags.DEFINE_string("dec_lens", "", "comma-separated decoder lengths (default: the preset's)")
flags.DEFINE_integer("per_device_batch", 8, "examples per device in the train step")
flags.DEFINE_integer("devices", 1, "simulated CPU devices (the preset's mesh over them)")
flags.DEFINE_integer("samples", 64, "sampler rows (one prompt x samples)")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS
GIB = 2 ** 30


def _figures(compiled) -> dict:
  m = compiled.memory_analysis()
  return {"temp_bytes": int(m.temp_size_in_bytes), "argument_bytes": int(m.argument_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes),
          "temp_plus_arguments_gib": round((m.temp_size_in_bytes + m.argument_size_in_bytes) / GIB,
                                           3)}


def train_row(run, mesh, dec_len: int, per_device_batch: int) -> dict:
  """Compiles (never runs) the trainer's train step at one decoder length."""
  prog = compile_lib.train_program(run, mesh, per_device_batch, dec_len)
  return {"dec_len": dec_len, "per_device_batch": per_device_batch,
          "attention": prog["attention"], **_figures(prog["lowered"].compile())}


def sampler_row(run, samples: int, max_len: int) -> dict:
  """Compiles (never runs) the sampler for one prompt x `samples` rows, single device."""
  mc = config_lib.base_config().mesh
  mc.data = 1
  prog = compile_lib.sample_program(run, sharding.make_mesh(mc, jax.devices()[:1]), 1, samples,
                                    max_len)
  return {"samples": samples, "max_len": max_len, **_figures(prog["lowered"].compile())}


def main(argv):
  del argv
  config = _CONFIG.value
  run = config_lib.validate(config)
  mesh = sharding.make_mesh(run.mesh)
  lens = ([int(x) for x in FLAGS.dec_lens.split(",") if x.strip()] if FLAGS.dec_lens
          else [config.data.max_decoder_len])
  rows = []
  for dec_len in lens:
    row = train_row(run, mesh, dec_len, FLAGS.per_device_batch)
    rows.append(row)
    print(f"train step, dec_len {dec_len}, {FLAGS.per_device_batch} per device on "
          f"{dict(mesh.shape)}: temp {row['temp_bytes'] / GIB:.2f} GiB, arguments "
          f"{row['argument_bytes'] / GIB:.2f} GiB, output {row['output_bytes'] / GIB:.2f} GiB "
          f"({row['attention']} attention)", flush=True)
  samp = sampler_row(run, FLAGS.samples, config.data.max_decoder_len)
  print(f"sampler, 1 prompt x {FLAGS.samples} rows x {samp['max_len']} tokens: temp "
        f"{samp['temp_bytes'] / GIB:.2f} GiB, arguments {samp['argument_bytes'] / GIB:.2f} GiB")
  print(json.dumps({"model": config.model.size, "dtype": config.model.dtype,
                    "attention": config.model.attention, "remat": config.model.remat,
                    "devices": jax.device_count(), "mesh": dict(mesh.shape),
                    "prompt_len": config.data.max_prompt_len, "rows": rows, "sampler": samp}))


if __name__ == "__main__":
  app.run(main)
