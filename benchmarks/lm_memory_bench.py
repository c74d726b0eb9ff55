"""Per-device memory of the LM train step for Llama-3-8B, from XLA's analysis of the compiled
program: lowered and compiled, never run, so an 8B fine-tune is sized on a CPU.

  python benchmarks/lm_memory_bench.py --devices=8,32
  python benchmarks/lm_memory_bench.py --devices=16 --fsdp=8 --tensor=2 --param_dtype=bfloat16
  python benchmarks/lm_memory_bench.py --model=tiny --devices=2 --fsdp=2 --seq_len=16  # seconds

The step is lm/finetune.py's own (`init_state` + `make_train_step`, AdamW as in
train/step.py) for configs/math.py:paper, on Llama-3-8B's architecture (dim
4096, 32 layers, 32 heads, 8 K/V heads, MLP 14336, vocabulary 128256, RoPE
theta 500000), remat full, bfloat16 compute. Params and both AdamW moments are
kept in --param_dtype: float32 by default (mixed precision, as the paper
preset), bfloat16 to halve the state. Every array is a ShapeDtypeStruct with
its sharding (jax.eval_shape), so no 8B array is ever allocated.

Each device count runs in its own subprocess on that many simulated CPU
devices (XLA flags are read once, at import), on a (data, fsdp, tensor) mesh
with data = devices / (fsdp x tensor), at --per_device_batch sequences per
device of --seq_len tokens (the trainer's batch width, data.max_len; the
model sees all of them). Per mesh it prints XLA's argument, output,
temp and generated-code bytes and their total (argument + output - aliased
+ temp + code: the donated state's outputs reuse its buffers); the state
row is params + optimizer state per device from the shardings, a check on
the argument figure. CPU attention is blockwise where a GPU would use cuDNN,
so temp is indicative. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30
LLAMA3_8B = dict(vocab_size=128256, dim=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                 ffn_dim=14336, rope_theta=500000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192, bos_id=128000, eos_id=128001)
# The same code path at a few MiB: what the test suite runs (tests/benchmarks_test.py).
TINY = dict(vocab_size=256, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128,
            rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, bos_id=1,
            eos_id=2)
MODELS = {"llama3-8b": LLAMA3_8B, "tiny": TINY}


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--devices", default="8,32", help="comma-separated simulated device counts")
  ap.add_argument("--model", default="llama3-8b", choices=tuple(MODELS),
                  help="architecture (tiny: a seconds-long check that the script still runs)")
  ap.add_argument("--fsdp", type=int, default=8, help="fsdp mesh axis (paper preset: 8)")
  ap.add_argument("--tensor", type=int, default=1, help="tensor mesh axis")
  ap.add_argument("--seq_len", type=int, default=2048, help="tokens per sequence (data.max_len)")
  ap.add_argument("--per_device_batch", type=int, default=1, help="sequences per device")
  ap.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"),
                  help="params and AdamW moments (compute is always bfloat16)")
  return ap.parse_args(argv)


def _set_device_count(n: int) -> None:
  """Simulated CPU devices; before jax is imported (a stale count in XLA_FLAGS is replaced)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
  os.environ["JAX_PLATFORMS"] = "cpu"


def _math_run(args: argparse.Namespace, batch: int):
  """configs/math.py:paper with this run's mesh, batch and length, validated; the model's
  shape is the benchmark's, so it reads no data (synthetic) and no checkpoint."""
  import importlib.util

  from dualformer_jax.lm import math_config
  spec = importlib.util.spec_from_file_location("math_preset",
                                                os.path.join(ROOT, "configs", "math.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("paper")
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, args.fsdp, args.tensor
  c.data.max_len, c.train.batch_size = args.seq_len, batch
  c.task.source, c.lm.checkpoint = "synthetic", ""
  return math_config.validate(c)


def measure(args: argparse.Namespace, devices: int) -> dict:
  """Lowers and compiles the train step on `devices` simulated devices; XLA's figures."""
  import jax
  import jax.numpy as jnp

  from dualformer_jax.lm import finetune as train_lib
  from dualformer_jax.lm.model import LMConfig
  from dualformer_jax.model import sharding

  if jax.device_count() != devices:
    raise RuntimeError(f"expected {devices} devices, jax has {jax.device_count()} "
                       "(XLA_FLAGS set after jax was imported?)")
  batch = args.per_device_batch * devices
  run = _math_run(args, batch)
  mesh = sharding.make_mesh(run.mesh)
  sharding.check_batch_size(batch, mesh)
  lm_cfg = LMConfig(**MODELS[args.model], dtype="bfloat16", param_dtype=args.param_dtype,
                    attention="auto", remat="full")
  graphdef, _, abstract = train_lib.init_state(run.train, run.seed, lm_cfg, mesh, None)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  step = train_lib.make_train_step(graphdef, run.train, mesh, shardings)
  bs = sharding.batch_sharding(mesh)
  shape = (batch, args.seq_len)
  example = {"ids": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bs),
             "loss_mask": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=bs),
             "valid": jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=bs)}
  t0 = time.perf_counter()
  lowered = step.lower(abstract, example)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  m = compiled.memory_analysis()
  leaves = jax.tree.leaves(abstract)
  params = sum(x.size for x in jax.tree.leaves(abstract.params))
  state = sum(x.dtype.itemsize * _prod(x.sharding.shard_shape(x.shape)) for x in leaves)
  figures = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
             "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
             "generated_code": m.generated_code_size_in_bytes}
  figures["total"] = (figures["argument"] + figures["output"] - figures["alias"]
                      + figures["temp"] + figures["generated_code"])
  return {"devices": devices, "mesh": dict(mesh.shape), "global_batch": batch,
          "params": int(params), "state_gib": round(state / GIB, 3),
          **{f"{k}_gib": round(int(v) / GIB, 3) for k, v in figures.items()},
          "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1)}


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= int(x)
  return out


def _line(r: dict) -> str:
  return (f"{r['devices']} devices, mesh {r['mesh']}, batch {r['global_batch']}: per device "
          f"argument {r['argument_gib']:.2f} GiB (state {r['state_gib']:.2f}), output "
          f"{r['output_gib']:.2f} (aliased {r['alias_gib']:.2f}), temp {r['temp_gib']:.2f}, "
          f"code {r['generated_code_gib']:.3f}, total {r['total_gib']:.2f} GiB "
          f"(lower {r['lower_s']} s, compile {r['compile_s']} s)")


def main() -> None:
  args = _parse()
  counts = [int(x) for x in args.devices.split(",") if x.strip()]
  if not counts or min(counts) < 1:
    raise SystemExit(f"--devices={args.devices!r}: expected positive counts like 8,32")
  head = {"model": args.model, "compute_dtype": "bfloat16", "param_dtype": args.param_dtype,
          "remat": "full", "seq_len": args.seq_len, "per_device_batch": args.per_device_batch}
  if len(counts) == 1:  # the child: this process owns the device count
    _set_device_count(counts[0])
    sys.path.insert(0, ROOT)
    row = measure(args, counts[0])
    print(_line(row), flush=True)
    print(json.dumps({**head, "rows": [row]}))
    return
  rows = []
  for n in counts:
    rest = [a for a in sys.argv[1:] if not a.startswith("--devices")]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--devices={n}", *rest],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
      sys.stderr.write(proc.stderr[-5000:])
      raise SystemExit(f"{n} devices: the subprocess failed (exit {proc.returncode})")
    row = json.loads(proc.stdout.strip().splitlines()[-1])["rows"][0]
    rows.append(row)
    print(_line(row), flush=True)
  print(json.dumps({**head, "rows": rows}))


if __name__ == "__main__":
  main()
