"""Sampling throughput: generated tokens per second, preset s, random weights.

  python benchmarks/sample_bench.py [--size=s] [--new_tokens=384] [--repeats=3] [--prompts=1,16]
                                    [--vocab_size=0] [--top_k=0] [--cpu_devices=2]
                                    [--dim=0] [--ffn=0] [--layers=0]  # 0: the size's own
                                    [--block_len=0]  # 0: the sampler's default

One prompt of 128 tokens x 64 samples, then 16 prompts x 64 samples; each
row gets the forced prefix `bos` and then exactly `new_tokens` sampled tokens:
eos is set to an id outside the vocabulary, so no row stops early and every
counted token was really generated. Compile time is excluded (one warm-up
call per shape); the best of `repeats` timed calls is reported. On a CPU the
host is split into --cpu_devices devices (config.mesh.cpu_devices, the
default of a run), each decoding its share of the rows. The vocabulary is
that of a 30x30 maze (939 tokens) unless --vocab_size says otherwise (the
reference's rollout benchmark in ../shared/peer has 118, and is greedy).
Last line: {"tokens_per_s": ..., "tokens_per_s_16x64": ..., "devices": ...}.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualformer_jax import config as config_lib  # noqa: E402
from dualformer_jax.data.vocab import BOS_ID, EOS_ID, Vocab  # noqa: E402
from dualformer_jax.infer import sampler  # noqa: E402
from dualformer_jax.model import sharding  # noqa: E402
from dualformer_jax.model.model_config import ModelConfig  # noqa: E402
from dualformer_jax.model.transformer import Transformer  # noqa: E402
from dualformer_jax.tasks.maze import MazeTask  # noqa: E402


def tokens_per_s(graphdef, params, vocab_size: int, prompts: int, samples: int,
                 prompt_len: int, new_tokens: int, repeats: int, mesh, top_k: int,
                 block_len: int = 0) -> tuple[float, float]:
  """(generated tokens per second, seconds of the best call) for one shape."""
  rng = np.random.default_rng(prompts)
  enc = rng.integers(EOS_ID + 1, vocab_size, (prompts, prompt_len)).astype(np.int32)  # [Np, P]
  enc[:, 0], enc[:, -1] = BOS_ID, EOS_ID
  rows = prompts * samples
  prefix, prefix_len = np.full((rows, 1), BOS_ID, np.int32), np.ones((rows,), np.int32)
  kwargs = dict(num_samples=samples, max_len=1 + new_tokens, temperature=1.0, top_k=top_k,
                eos_id=vocab_size, mesh=mesh,  # eos: an id the model cannot emit, no early stop
                block_len=block_len or None)

  def run(seed: int):
    out = sampler.sample(graphdef, params, enc, prefix, prefix_len, jax.random.key(seed), **kwargs)
    return jax.block_until_ready(out)

  run(0)  # compile
  best, generated = float("inf"), 0
  for i in range(repeats):
    t0 = time.perf_counter()
    out = run(i + 1)
    best = min(best, time.perf_counter() - t0)
    generated = int(np.sum(np.asarray(out.lengths) - prefix_len))
  assert generated == rows * new_tokens, (generated, rows * new_tokens)
  return generated / best, best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="s")
  parser.add_argument("--dim", type=int, default=0, help="model width; 0 keeps the size's own")
  parser.add_argument("--ffn", type=int, default=0, help="SwiGLU width; 0 keeps the size's own")
  parser.add_argument("--layers", type=int, default=0, help="layers per stack; 0 keeps the size's")
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=384)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--prompts", default="1,16", help="comma-separated prompt counts to time")
  parser.add_argument("--vocab_size", type=int, default=0,
                      help="0: a 30x30 maze's; the reference's benchmark (../shared/peer) has 118")
  parser.add_argument("--top_k", type=int, default=0, help="0: sample the full softmax; 1: greedy")
  parser.add_argument("--block_len", type=int, default=0,
                      help="cache positions per block; 0: sampler.default_block_len")
  parser.add_argument("--cpu_devices", type=int, default=config_lib.base_config().mesh.cpu_devices)
  args = parser.parse_args()
  cfg = config_lib.base_config()
  cfg.model.size, cfg.model.dtype = args.size, args.dtype
  cfg.model.dim, cfg.model.ffn, cfg.model.layers = args.dim, args.ffn, args.layers
  cfg.mesh.cpu_devices, cfg.compilation_cache_dir = args.cpu_devices, ""
  config_lib.configure_jax(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  vocab_size = args.vocab_size or len(Vocab(MazeTask(size=30).vocabulary()))
  model = Transformer(ModelConfig.from_config(cfg.model, vocab_size), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  result = {}
  counts = [int(x) for x in args.prompts.split(",") if x.strip()]
  for prompts in counts:
    name = "tokens_per_s" if prompts == 1 else f"tokens_per_s_{prompts}x{args.samples}"
    tps, secs = tokens_per_s(graphdef, params, vocab_size, prompts, args.samples,
                             args.prompt_len, args.new_tokens, args.repeats, mesh, args.top_k,
                             args.block_len)
    print(f"{prompts} x {args.samples} samples x {args.new_tokens} tokens "
          f"(size {args.size}, {args.dtype}, vocab {vocab_size}, top_k {args.top_k}, "
          f"{jax.device_count()} devices): "
          f"{secs:.2f} s, {tps:,.0f} tokens/s")
    result[name] = round(tps, 1)
  result.update(devices=jax.device_count(), vocab_size=vocab_size, top_k=args.top_k)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
