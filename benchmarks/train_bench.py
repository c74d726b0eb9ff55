"""Training throughput of the jitted train step: decoder tokens/s and model FLOP utilisation.

  python benchmarks/train_bench.py          # all variants: preset s, batch 8, P=128, T=384
  python benchmarks/train_bench.py --variants=bf16 --steps=20
  python benchmarks/train_bench.py --variants=fp32 --size=tiny --dim=96 --ffn=256 \
      --batch=32 --enc_len=112 --dec_len=576 --vocab_size=80   # the maze compare preset
  python benchmarks/train_bench.py --variants=fp32 --size=tiny --dim=32 --ffn=64 --layers=1 \
      --batch=2 --enc_len=8 --dec_len=16 --vocab_size=32 --steps=1   # seconds: still runs

Each variant runs in its own subprocess (XLA flags are read once, at import).
Random token ids, every decoder position a loss token; timed steps follow two
warm-up steps (compile + one step), and the step time is the minimum over the
timed steps (the 2 cores are shared, so the median is also printed).

FLOPs per step (fwd + bwd = 3 x forward, every matmul at 2 FLOPs per MAC):
  matmuls: 6 x (encoder block params x encoder tokens + decoder block params x
           decoder tokens + cross-attention K/V params x encoder tokens per
           decoder layer + output head x decoder tokens); embeddings are lookups.
  attention: 12 x layers x D x (P^2 + T^2 + T x P) per sequence (scores and
           values, full square: the causal mask does not skip work).
MFU is against this machine's matmul rate in the variant's dtype, measured
in the same process (`matmul_flops`: one [1024 x devices, 1024] x [1024, 1024]
product split over the variant's devices, best of five), so that it means
the same on a CPU with bfloat16 units (AMX) as on one without.

The last line of stdout is one JSON object: the best batch-8 variant's
decoder_tokens_per_s and mfu, and every variant's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PEAK_N = 1024  # side of the matmul that measures the peak
# name -> (compute dtype, remat, batch multiplier, extra XLA flags)
VARIANTS = {
    "fp32": ("float32", "none", 1, ""),
    "bf16": ("bfloat16", "none", 1, ""),
    "bf16_remat": ("bfloat16", "full", 1, ""),
    "fp32_remat": ("float32", "full", 1, ""),
    "bf16_onednn": ("bfloat16", "none", 1, "--xla_cpu_use_onednn=true"),
    "fp32_onednn": ("float32", "none", 1, "--xla_cpu_use_onednn=true"),
    "bf16_batch16": ("bfloat16", "none", 2, ""),
    "fp32_batch16": ("float32", "none", 2, ""),
    "bf16_batch4": ("bfloat16", "none", 0.5, ""),
    # One CPU device per core, the batch split over them (data parallel in one process).
    "bf16_2dev": ("bfloat16", "none", 1, "--xla_force_host_platform_device_count=2"),
    "fp32_2dev": ("float32", "none", 1, "--xla_force_host_platform_device_count=2"),
}


def model_flops_per_step(dim: int, layers: int, ffn: int, vocab: int, batch: int, p: int,
                         t: int) -> float:
  """Training FLOPs of one step (see the module docstring)."""
  d = dim
  enc_block = 4 * d * d + 3 * d * ffn  # self-attn qkv + out, SwiGLU
  dec_block = 6 * d * d + 3 * d * ffn  # + cross q and out (K/V counted on encoder tokens)
  cross_kv = 2 * d * d
  fwd_matmul = 2 * layers * (enc_block * p + dec_block * t + cross_kv * p) + 2 * d * vocab * t
  fwd_attn = 4 * layers * d * (p * p + t * t + t * p)
  return 3.0 * batch * (fwd_matmul + fwd_attn)


def matmul_flops(dtype: str, devices: list) -> float:
  """FLOP/s of a large matmul in `dtype` (float32 accumulation, as the model's dense
  layers) over `devices`, rows split between them: the peak MFU is measured against."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = jax.sharding.Mesh(devices, ("d",))
  n, rows = PEAK_N, PEAK_N * len(devices)
  a = jax.device_put(jnp.ones((rows, n), dtype), NamedSharding(mesh, P("d")))
  b = jax.device_put(jnp.ones((n, n), dtype), NamedSharding(mesh, P()))
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(dot(a, b))
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    best = min(best, time.perf_counter() - start)
  return 2.0 * rows * n * n / best


def run_one(name: str, args: argparse.Namespace) -> dict:
  """Times one variant in this process (XLA flags already set by the parent)."""
  import dataclasses

  import jax
  import numpy as np

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from dualformer_jax import config as config_lib
  from dualformer_jax.model import sharding
  from dualformer_jax.train import step as step_lib

  dtype, remat, mult, _ = VARIANTS[name]
  b, p, t, v = int(args.batch * mult), args.enc_len, args.dec_len, args.vocab_size
  c = config_lib.base_config()
  c.model.size, c.model.dtype, c.model.remat = args.size, dtype, remat
  c.model.attention = args.attention
  c.model.dim, c.model.ffn, c.model.layers = args.dim, args.ffn, args.layers
  c.mesh.data = args.devices
  c.train.batch_size = b
  run = config_lib.validate(c)
  mc = dataclasses.replace(run.model, vocab_size=v)  # the benchmark's vocabulary
  mesh = sharding.make_mesh(run.mesh, devices=jax.devices()[:args.devices])
  graphdef, state, shardings = step_lib.create_train_state(mc, run.train, mesh, seed=0)
  train_step = step_lib.make_train_step(graphdef, run.train, mesh, shardings)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({
      "enc_ids": rng.integers(3, v, (b, p)).astype(np.int32),
      "dec_ids": rng.integers(3, v, (b, t)).astype(np.int32),
      "targets": rng.integers(3, v, (b, t)).astype(np.int32),
      "trace_mask": np.ones((b, t), np.float32),
      "plan_mask": np.zeros((b, t), np.float32),
  }, mesh)
  start = time.perf_counter()
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  times, cpu_times = [], []
  for _ in range(args.steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  best, median = min(times), sorted(times)[len(times) // 2]
  # CPU seconds / cores: what a step would take with the cores to itself (a
  # contention-robust figure for comparing variants; XLA keeps both cores busy).
  cpu_step = min(cpu_times) / (os.cpu_count() or 1)
  flops = model_flops_per_step(mc.dim, mc.layers, mc.ffn, v, b, p, t)
  peak = matmul_flops(dtype, jax.devices()[:args.devices])
  return {
      "variant": name, "dtype": dtype, "remat": remat, "attention": c.model.attention,
      "devices": args.devices, "batch": b, "xla_flags": VARIANTS[name][3],
      "step_s": round(best, 4), "median_step_s": round(median, 4),
      "decoder_tokens_per_s": round(b * t / best, 1),
      "median_decoder_tokens_per_s": round(b * t / median, 1),
      "mfu": round(flops / best / peak, 4), "gflop_per_step": round(flops / 1e9, 2),
      "peak_gflops": round(peak / 1e9, 1),
      "cpu_time_step_s": round(cpu_step, 4),
      "cpu_time_decoder_tokens_per_s": round(b * t / cpu_step, 1),
      "compile_plus_first_step_s": round(compile_s, 1), "loss": float(metrics["loss"]),
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", default="fp32,bf16,bf16_remat,fp32_remat,bf16_onednn,"
                  "bf16_batch16,bf16_batch4",
                  help=f"comma-separated subset of {list(VARIANTS)}")
  ap.add_argument("--size", default="s")
  ap.add_argument("--dim", type=int, default=0, help="model width; 0 keeps the size's own")
  ap.add_argument("--ffn", type=int, default=0, help="SwiGLU width; 0 keeps the size's own")
  ap.add_argument("--layers", type=int, default=0, help="layers per stack; 0 keeps the size's")
  ap.add_argument("--attention", default="auto", help="auto | xla | blockwise (model/attention.py)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--enc_len", type=int, default=128)
  ap.add_argument("--dec_len", type=int, default=384)
  ap.add_argument("--vocab_size", type=int, default=512, help="about a 30x30 maze vocabulary")
  ap.add_argument("--steps", type=int, default=8, help="timed steps per variant")
  ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # child mode: run one variant
  ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)  # set per variant
  args = ap.parse_args()

  if args.one:
    print(json.dumps(run_one(args.one, args)))
    return

  names = [n.strip() for n in args.variants.split(",") if n.strip()]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
  results = {}
  for name in names:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), VARIANTS[name][3]) if f)
    child = [a for a in sys.argv[1:] if not a.startswith("--variants")]
    if "device_count=" in VARIANTS[name][3]:
      child.append("--devices=" + VARIANTS[name][3].split("device_count=")[1].split()[0])
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *child, f"--one={name}"],
                         env=env, capture_output=True, text=True)
    if out.returncode:
      print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
      continue
    res = json.loads(out.stdout.strip().splitlines()[-1])
    results[name] = res
    print(f"{name:>14}: {res['decoder_tokens_per_s']:8.0f} dec tok/s (median "
          f"{res['median_decoder_tokens_per_s']:.0f}), step {res['step_s']:.3f}s, "
          f"MFU {res['mfu']:.1%} of {res['peak_gflops']:.0f} GFLOP/s, CPU-time estimate "
          f"{res['cpu_time_decoder_tokens_per_s']:.0f} tok/s, batch {res['batch']}, "
          f"compile {res['compile_plus_first_step_s']}s",
          flush=True)
  at_batch = [r for r in results.values() if r["batch"] == args.batch] or list(results.values())
  if not at_batch:
    raise SystemExit("every variant failed")
  best = max(at_batch, key=lambda r: r["decoder_tokens_per_s"])
  print(json.dumps({
      "decoder_tokens_per_s": best["decoder_tokens_per_s"], "mfu": best["mfu"],
      "best_variant": best["variant"], "size": args.size, "batch": args.batch,
      "enc_len": args.enc_len, "dec_len": args.dec_len, "vocab_size": args.vocab_size,
      "gflop_per_step": best["gflop_per_step"], "peak_gflops": best["peak_gflops"],
      "variants": {k: {f: r[f] for f in ("decoder_tokens_per_s", "median_decoder_tokens_per_s",
                                         "cpu_time_decoder_tokens_per_s", "mfu", "peak_gflops",
                                         "step_s", "batch")}
                   for k, r in results.items()},
  }))


if __name__ == "__main__":
  main()
