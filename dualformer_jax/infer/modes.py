"""Prompts + mode -> sampled tokens: the one sampling front above infer/sampler.py.

The mode of a Dualformer answer is the decoder prefix it is forced to start
with (PAPER.md, "Controlling the mode at inference"): fast `bos plan`, slow
`bos create`, auto `bos`. Evaluation (eval/evaluate.py, and through it the
validation selection of experiments/select.py), bootstrapping
(experiments/bootstrap.py) and the math LM's evaluation (lm/math_eval.py) all
sample here, so they share one set of rules:
  * the output length: eval.max_decode_len, or data.max_decoder_len when 0;
  * batches of a fixed number of prompts, the last filled up with copies of
    its final prompt (their rows are ignored): one shape, one compilation;
  * prompts padded to a multiple of 16 tokens, prefixes to the longest one;
  * batch b's key is fold_in(key, index of its first prompt).
Shape legend: Np prompts per batch, S samples per prompt, R = Np * S rows,
P prompt length, K prefix length, L output length.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from dualformer_jax.data.vocab import BOS, EOS, PAD_ID, Vocab, strip_specials
from dualformer_jax.infer import sampler
from dualformer_jax.model import sharding
from dualformer_jax.tasks.base import CREATE, PLAN

MODE_PREFIX = {"fast": (BOS, PLAN), "slow": (BOS, CREATE), "auto": (BOS,)}
_PROMPT_ROUND = 16  # encoder prompts are padded to a multiple of this: few compiled shapes


@dataclasses.dataclass(frozen=True)
class Settings:
  """How many rows to sample per prompt, how long and how (sampler.sample's meaning)."""
  num_samples: int
  max_len: int  # L: decode_len()
  temperature: float
  top_k: int  # 0: off, 1: greedy
  prompts_per_batch: int  # Np of one sampler call


def decode_len(max_decode_len: int, max_decoder_len: int) -> int:
  """The output length L: eval.max_decode_len, or data.max_decoder_len when that is 0."""
  return max_decode_len if max_decode_len > 0 else max_decoder_len


def prompts_per_batch(asked: int, mesh: Mesh) -> int:
  """`asked` rounded up to a multiple of the mesh's data x fsdp size, so that every device
  samples whole prompts."""
  split = sharding.batch_divisor(mesh)
  return -(-asked // split) * split


def batches(num_prompts: int, per_batch: int) -> Iterator[tuple[int, list[int]]]:
  """(index of the first prompt, the batch's prompt indices) per batch of `per_batch`; the
  last batch repeats its final prompt up to that size (fixed shape; callers ignore those)."""
  for start in range(0, num_prompts, per_batch):
    idx = list(range(start, min(start + per_batch, num_prompts)))
    yield start, idx + [idx[-1]] * (per_batch - len(idx))


def sample_batches(graphdef: nnx.GraphDef, params: nnx.State,
                   prefixes: Sequence[Sequence[int]], key: jax.Array, settings: Settings, *,
                   enc_ids: np.ndarray | None = None, eos_id: int | tuple[int, ...],
                   pad_id: int | None = PAD_ID, mesh: Mesh | None = None, desc: str = "",
                   quiet: bool = False) -> Iterator[tuple[int, list[int], sampler.Samples]]:
  """Samples settings.num_samples rows per prompt, prompt i forced to start with
  prefixes[i]; yields (first prompt, the batch's prompt indices incl. fillers, Samples
  [R, L]) per batch. enc_ids [N', P] (N' = the batches' prompts, fillers included; each
  batch's rows split over the batch axes of `mesh`), or None for a decoder-only model,
  whose prompts are the prefixes."""
  width = max(len(p) for p in prefixes)  # K: one width for every batch
  s = settings
  for start, idx in tqdm(batches(len(prefixes), s.prompts_per_batch), desc=desc, unit="batch",
                         total=math.ceil(len(prefixes) / s.prompts_per_batch), leave=False,
                         disable=True if quiet else None):
    prefix_RxK, prefix_len_R = sampler.stack_prefixes(
        [prefixes[i] for i in idx for _ in range(s.num_samples)], width)
    enc = None if enc_ids is None else enc_ids[start:start + s.prompts_per_batch]  # [Np, P]
    if enc is not None and mesh is not None:  # the same on every process: each takes its rows
      enc = jax.make_array_from_callback(enc.shape, sharding.batch_sharding(mesh),
                                         lambda index, enc=enc: enc[index])
    yield start, idx, sampler.sample(
        graphdef, params, enc, prefix_RxK, prefix_len_R, jax.random.fold_in(key, start),
        num_samples=s.num_samples, max_len=s.max_len, temperature=s.temperature,
        top_k=s.top_k, eos_id=eos_id, pad_id=pad_id, mesh=mesh)


def sample_prompts(graphdef: nnx.GraphDef, params: nnx.State, vocab: Vocab, mesh: Mesh,
                   prompts: Sequence[Sequence[str]], mode: str, key: jax.Array,
                   settings: Settings, *, desc: str = "", quiet: bool = False
                   ) -> Iterator[tuple[int, np.ndarray]]:
  """(prompt index, its sampled rows [S, L]) in `mode` for every prompt whose rows this
  process holds (all of them with one process); prompts are string tokens, no bos/eos.

  The batch's rows are split over the mesh's batch axes, each process sampling and
  reading its own prompts' rows (own_prompts)."""
  # [N', P], N' a whole number of batches (fillers: copies of a batch's last prompt).
  padded = [prompts[i] for _, idx in batches(len(prompts), settings.prompts_per_batch)
            for i in idx]
  enc = encode_prompts(padded, vocab, prompt_width(prompts))
  prefix = vocab.encode(MODE_PREFIX[mode])
  for start, _, samples in sample_batches(
      graphdef, params, [prefix] * len(prompts), key, settings, enc_ids=enc,
      eos_id=vocab.id(EOS), mesh=mesh, desc=desc, quiet=quiet):
    for i, rows_SxL in own_prompts(_spread_rows(mesh)(samples.ids), settings.num_samples).items():
      if start + i < len(prompts):  # not a filler
        yield start + i, rows_SxL


@functools.lru_cache(maxsize=4)
def _spread_rows(mesh: Mesh):
  """The rows [R, L] laid out over the mesh's batch axes: each process gets its prompts'."""
  return jax.jit(lambda x: x, out_shardings=sharding.batch_sharding(mesh))


def prompt_width(prompts: Sequence[Sequence[str]]) -> int:
  """P: the longest prompt with bos and eos, rounded up to a multiple of _PROMPT_ROUND."""
  return -(-max(len(p) + 2 for p in prompts) // _PROMPT_ROUND) * _PROMPT_ROUND


def encode_prompts(prompts: Sequence[Sequence[str]], vocab: Vocab, length: int) -> np.ndarray:
  """Encoder ids [Np, length]: bos, the prompt, eos, then pad (0)."""
  enc_NpxP = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    ids = vocab.encode([BOS, *p, EOS])
    enc_NpxP[i, :len(ids)] = ids
  return enc_NpxP


def response_tokens(row: np.ndarray, vocab: Vocab) -> list[str]:
  """A sampled row (bos, forced prefix, generated, eos, pad) -> what a reader acts on."""
  return strip_specials(vocab.decode(row))


def own_prompts(ids_RxL: jax.Array, num_samples: int) -> dict[int, np.ndarray]:
  """Prompt index in the batch -> its sampled rows [S, L], for the prompts this process owns.

  A row block belongs to the process holding its replica 0, so with replicated
  axes (tensor) every prompt still has exactly one owner.
  """
  out = {}
  for shard in ids_RxL.addressable_shards:
    if shard.replica_id != 0:
      continue
    start = shard.index[0].start or 0
    block = np.asarray(shard.data)  # [rows in block, L]
    if start % num_samples or block.shape[0] % num_samples:
      raise ValueError(f"sampled rows {start}..{start + block.shape[0]} split the "
                       f"{num_samples} samples of a prompt between devices")
    for k in range(block.shape[0] // num_samples):
      out[start // num_samples + k] = block[k * num_samples:(k + 1) * num_samples]
  return out
