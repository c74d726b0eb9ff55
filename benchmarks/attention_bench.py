"""What each attention implementation costs: time and compiled memory of forward + backward.

  python benchmarks/attention_bench.py [--lens=384,2048,8192] [--impls=xla,blockwise]

One causal self-attention of preset `s`'s shape (3 heads of 64) at batch
`--batch`, bfloat16 by default, value and gradient with respect to q, k and v,
jitted. Per implementation and length: the median wall time of `--repeats`
runs after one warm-up, and XLA's temp memory of the compiled program. Only
implementations the backend can run are timed (cudnn needs an NVIDIA GPU,
splash a TPU; elsewhere they are skipped). The crossover of xla and blockwise
is what `attention.XLA_MAX_SCORES` encodes for `auto` on CPU. The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualformer_jax.model import attention as attn  # noqa: E402

RUNNABLE = {"cpu": ("xla", "blockwise"), "gpu": ("xla", "blockwise", "cudnn"),
            "tpu": ("xla", "blockwise", "splash")}


def measure(impl: str, t: int, args) -> dict:
  shape = (args.batch, t, args.heads, args.head_dim)
  dtype = jnp.dtype(args.dtype)
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))

  def loss(q, k, v):
    return attn.attention(q, k, v, causal=True, impl=impl).astype(jnp.float32).sum()

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  compiled = fn.lower(q, k, v).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(q, k, v))
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v))
    times.append(time.perf_counter() - start)
  return {"impl": impl, "len": t, "median_s": round(float(np.median(times)), 5),
          "temp_mib": round(temp / 2 ** 20, 1)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--lens", default="384,2048,8192")
  ap.add_argument("--impls", default="xla,blockwise,cudnn,splash")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--heads", type=int, default=3)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  backend = jax.default_backend()
  impls = [i for i in args.impls.split(",") if i in RUNNABLE.get(backend, ("xla", "blockwise"))]
  rows = []
  for t in (int(x) for x in args.lens.split(",")):
    for impl in impls:
      row = measure(impl, t, args)
      rows.append(row)
      print(f"{impl:>9} T={t:>5}: {row['median_s'] * 1e3:9.1f} ms fwd+bwd, temp "
            f"{row['temp_mib']:8.1f} MiB", flush=True)
  print(json.dumps({"backend": backend, "batch": args.batch, "heads": args.heads,
                    "head_dim": args.head_dim, "dtype": args.dtype, "rows": rows}))


if __name__ == "__main__":
  main()
