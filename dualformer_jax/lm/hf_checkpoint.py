"""Hugging Face Llama / Mistral checkpoints in and out of `LM`, with no torch.

A checkpoint directory holds `config.json` and either `model.safetensors` or
shards named by `model.safetensors.index.json`. `load` reads tensors through
safetensors' numpy `get_slice`; given a mesh, each parameter is born sharded
by `jax.make_array_from_callback`, whose callback reads only the slice one
local device holds, so no host ever holds the whole model. `save` writes the
same format back (one file, or shards plus an index past `max_shard_bytes`),
materialising one shard's tensors at a time, and removes the weight files of
an older save it replaces (a stale index would otherwise win over a new
single file). Weight files are read from the checkpoint directory only (an
index naming ../x, /x or a symlink out of it is refused), and every damaged
file (config.json, index, a truncated safetensors) is one CheckpointError
line naming it.

HF keeps a linear layer as weight [out, in]; `LM` keeps kernels [in, ...out]
with heads split out (q [D, H, K], o [H, K, D]) and layers stacked. Each
parameter is HF's tensor with some axes split, then transposed: `_LAYOUT`
lists, per HF axis, which of our axes it holds. RoPE needs no permutation:
`LM` rotates halves as HF does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from typing import Any, Iterator

import jax
import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, which safetensors' numpy needs
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dualformer_jax import io_utils
from dualformer_jax.lm.model import LM, LMConfig
from dualformer_jax.model import sharding
# One error family for every checkpoint: here, a directory that does not hold the model
# its config.json describes.
from dualformer_jax.train.errors import CheckpointError

CONFIG, SINGLE, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# Our param path -> (HF name, our axes per HF axis), for one layer's params
# without the stacked layer axis ("{i}": layer number).
_LAYOUT: dict[tuple[str, ...], tuple[str, tuple[tuple[int, ...], ...]]] = {
    ("embed",): ("model.embed_tokens.weight", ((0,), (1,))),
    ("norm",): ("model.norm.weight", ((0,),)),
    ("head",): ("lm_head.weight", ((1,), (0,))),
    ("layers", "attn_norm"): ("model.layers.{i}.input_layernorm.weight", ((0,),)),
    ("layers", "mlp_norm"): ("model.layers.{i}.post_attention_layernorm.weight", ((0,),)),
    ("layers", "wq"): ("model.layers.{i}.self_attn.q_proj.weight", ((1, 2), (0,))),
    ("layers", "wk"): ("model.layers.{i}.self_attn.k_proj.weight", ((1, 2), (0,))),
    ("layers", "wv"): ("model.layers.{i}.self_attn.v_proj.weight", ((1, 2), (0,))),
    ("layers", "wo"): ("model.layers.{i}.self_attn.o_proj.weight", ((2,), (0, 1))),
    ("layers", "w_gate"): ("model.layers.{i}.mlp.gate_proj.weight", ((1,), (0,))),
    ("layers", "w_up"): ("model.layers.{i}.mlp.up_proj.weight", ((1,), (0,))),
    ("layers", "w_down"): ("model.layers.{i}.mlp.down_proj.weight", ((1,), (0,))),
}
_IGNORED_SUFFIX = ".rotary_emb.inv_freq"  # buffers some older checkpoints saved


def read_config(ckpt_dir: str, **overrides: Any) -> LMConfig:
  """LMConfig from `ckpt_dir/config.json`; overrides set dtype, attention, remat, ..."""
  path = os.path.join(ckpt_dir, CONFIG)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file (not a Hugging Face checkpoint directory?)")
  hf = _read_json_object(path)
  try:
    return LMConfig.from_hf(hf, **overrides)
  except (ValueError, TypeError, KeyError) as e:
    raise CheckpointError(f"{path}: {e}") from e


def _read_json_object(path: str) -> dict:
  """The JSON object in `path`; CheckpointError (one line naming it) for anything else."""
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
    raise CheckpointError(f"{path}: unreadable ({_one_line(e)})") from None
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
  return obj


def _one_line(e: BaseException) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _confined(ckpt_dir: str, name: Any, source: str) -> str:
  """The path of weight file `name` (from `source`), which must lie in the checkpoint directory.

  A name that is absolute, climbs out (..), or is a symlink whose target lies
  elsewhere is refused: a checkpoint is read from its own directory only. The
  one exception is the Hugging Face hub cache, whose snapshots/<rev>/ files
  link to ../../blobs/ of the same repository folder.
  """
  if not isinstance(name, str) or not name or os.path.isabs(name) or \
      os.path.normpath(name).split(os.sep)[0] == os.pardir:
    raise CheckpointError(f"{source}: weight file {name!r} is not a file name inside {ckpt_dir}")
  here = os.path.abspath(ckpt_dir)
  root = os.path.dirname(os.path.dirname(here)) if \
      os.path.basename(os.path.dirname(here)) == "snapshots" else here
  real, root = os.path.realpath(os.path.join(here, name)), os.path.realpath(root)
  if os.path.commonpath([real, root]) != root:
    raise CheckpointError(f"{source}: weight file {name!r} resolves to {real}, outside "
                          f"{ckpt_dir}")
  return os.path.join(ckpt_dir, name)


@contextlib.contextmanager
def _safetensors(path: str):
  """safe_open(path) whose errors (a truncated or hostile file) name the file in one line."""
  try:
    handle = safe_open(path, framework="numpy")
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None
  with handle as f:
    yield f


def _files(ckpt_dir: str) -> dict[str, str]:
  """Tensor name -> safetensors file path."""
  index, single = os.path.join(ckpt_dir, INDEX), os.path.join(ckpt_dir, SINGLE)
  if os.path.isfile(index):
    weight_map = _read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index}: no weight_map")
    paths = {n: _confined(ckpt_dir, f, index) for n, f in weight_map.items()}
    for p in sorted(set(paths.values())):
      if not os.path.isfile(p):
        raise CheckpointError(f"{p}: no such file (named in {INDEX})")
    return paths
  if not os.path.isfile(single):
    raise CheckpointError(f"{ckpt_dir}: neither {SINGLE} nor {INDEX}")
  _confined(ckpt_dir, SINGLE, ckpt_dir)
  with _safetensors(single) as f:
    return {n: single for n in f.keys()}


def _hf_tensors(cfg: LMConfig, shapes: dict[tuple[str, ...], tuple[int, ...]]
                ) -> Iterator[tuple[str, tuple[str, ...], int | None, tuple[int, ...]]]:
  """(HF name, our path, layer or None, HF shape) of every tensor the model needs."""
  for path, shape in shapes.items():
    template, groups = _LAYOUT[path]
    layers = range(cfg.num_layers) if path[0] == "layers" else [None]
    one = shape[1:] if path[0] == "layers" else shape
    hf_shape = tuple(math.prod(one[a] for a in g) for g in groups)
    for i in layers:
      yield template.format(i=i), path, i, hf_shape


def _to_ours(hf_x: np.ndarray, groups, our_shape: tuple[int, ...]) -> np.ndarray:
  """HF tensor (or a slice of it) -> our layout: split grouped axes, then transpose."""
  order = [a for g in groups for a in g]
  x = hf_x.reshape([our_shape[a] for a in order])
  return x.transpose(np.argsort(order))


def _to_hf(x: np.ndarray, groups) -> np.ndarray:
  order = [a for g in groups for a in g]
  return x.transpose(order).reshape([math.prod(x.shape[a] for a in g) for g in groups])


def _read(handles: dict[str, Any], name: str, groups, index: tuple[slice, ...],
          one_shape: tuple[int, ...]) -> np.ndarray:
  """Our-layout slice `index` of one layer's param, reading only the HF rows/cols it needs.

  Per HF axis, the range covers the group's first axis slice times the sizes
  of its other axes; those are then sliced after the reshape (no-ops for
  every layout sharding.py produces: head dim and trailing axes stay whole).
  """
  hf_index, inner = [], [slice(None)] * len(one_shape)
  for g in groups:
    first = index[g[0]]
    rest = math.prod(one_shape[a] for a in g[1:])
    hf_index.append(slice(first.start * rest, first.stop * rest))
    for a in g[1:]:
      inner[a] = index[a]
  x = handles[name].get_slice(name)[tuple(hf_index)]
  sliced_shape = tuple(s.stop - s.start if a in [g[0] for g in groups] else one_shape[a]
                       for a, s in enumerate(index))
  return _to_ours(np.asarray(x), groups, sliced_shape)[tuple(inner)]


def load(ckpt_dir: str, mesh: Mesh | None = None, **overrides: Any) -> LM:
  """The checkpoint as an `LM`; params in cfg.param_dtype, sharded over `mesh` if given.

  overrides are LMConfig fields (dtype, param_dtype, attention, remat, ...).
  Raises CheckpointError naming the missing file, the missing or unexpected
  tensors, or the first shape mismatch. A tied model ignores an lm_head.weight.
  """
  cfg = read_config(ckpt_dir, **overrides)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0))))
  flat = list(nnx.to_flat_state(state))
  shapes = {path: var.get_value().shape for path, var in flat}
  files = _files(ckpt_dir)
  needed = {name: (path, hf_shape) for name, path, _, hf_shape in _hf_tensors(cfg, shapes)}
  missing = sorted(set(needed) - set(files))
  unexpected = sorted(n for n in set(files) - set(needed) if not n.endswith(_IGNORED_SUFFIX)
                      and not (cfg.tie_embeddings and n == "lm_head.weight"))
  if missing or unexpected:
    raise CheckpointError(f"{ckpt_dir}: {len(missing)} missing tensors {missing[:6]}, "
                          f"{len(unexpected)} unexpected tensors {unexpected[:6]}")
  dtype = np.dtype(jax.numpy.dtype(cfg.param_dtype))
  with contextlib.ExitStack() as stack:  # closes the files once every param is read
    handles = {p: stack.enter_context(_safetensors(p))
               for p in sorted(set(files[n] for n in needed))}
    by_name = {n: handles[files[n]] for n in needed}
    try:
      _read_all(ckpt_dir, flat, shapes, needed, by_name, dtype, mesh)
    except SafetensorError as e:  # tensor bytes a header promised but the file lacks
      raise CheckpointError(f"{ckpt_dir}: a tensor cannot be read ({_one_line(e)})") from None
  return nnx.merge(graphdef, state)


def _read_all(ckpt_dir: str, flat, shapes, needed, by_name, dtype, mesh) -> None:
  """Checks every tensor's shape, then reads each param into its variable (sharded over
  `mesh` if given)."""
  for name, (_, hf_shape) in needed.items():
    got = tuple(by_name[name].get_slice(name).get_shape())
    if got != hf_shape:
      raise CheckpointError(f"{ckpt_dir}: tensor {name} has shape {list(got)}, "
                            f"config.json implies {list(hf_shape)}")
  for path, var in flat:
    template, groups = _LAYOUT[path]
    shape, stacked = shapes[path], path[0] == "layers"

    def read(index, template=template, groups=groups, shape=shape, stacked=stacked):
      index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
      if not stacked:
        return _read(by_name, template, groups, index, shape).astype(dtype)
      return np.stack([_read(by_name, template.format(i=i), groups, index[1:], shape[1:])
                       for i in range(index[0].start, index[0].stop)]).astype(dtype)

    if mesh is None:
      value = jax.numpy.asarray(read((slice(None),) * len(shape)))
    else:
      spec = sharding.logical_to_spec(var.get_metadata()["out_sharding"], shape, mesh)
      value = jax.make_array_from_callback(shape, NamedSharding(mesh, spec), read)
    var.set_value(value)


def _host(x: jax.Array) -> np.ndarray:
  """A (possibly sharded, possibly multi-host) array as one numpy array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def save(model: LM, out_dir: str, *, max_shard_bytes: int = 5 * 2**30,
         dtype: str | None = None) -> list[str]:
  """Writes config.json + safetensors that transformers loads; returns the files written.

  dtype: tensor dtype on disk (default: the params' dtype). Past
  max_shard_bytes the tensors go to model-0000i-of-0000n.safetensors files
  with an index. Every process gathers; only process 0 writes.
  """
  cfg = model.cfg
  dtype = np.dtype(jax.numpy.dtype(dtype or cfg.param_dtype))
  params = {path: var.get_value()
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  shapes = {path: x.shape for path, x in params.items()}
  tensors = list(_hf_tensors(cfg, shapes))
  shards, size = [[]], 0
  for t in tensors:
    nbytes = math.prod(t[3]) * dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += nbytes
  n = len(shards)
  names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  write = jax.process_index() == 0
  if write:
    os.makedirs(out_dir, exist_ok=True)
  weight_map = {}
  for fname, shard in zip(names, shards):
    arrays = {}
    for name, path, layer, _ in shard:
      x = params[path] if layer is None else params[path][layer]
      arrays[name] = np.ascontiguousarray(_to_hf(_host(x), _LAYOUT[path][1]).astype(dtype))
      weight_map[name] = fname
    if write:
      save_file(arrays, os.path.join(out_dir, fname), metadata={"format": "pt"})
  written = [CONFIG, *names, *([INDEX] if n > 1 else [])]
  if write:
    hf = {**cfg.to_hf(), "torch_dtype": str(dtype)}
    io_utils.write_json(os.path.join(out_dir, CONFIG), hf, indent=2)
    if n > 1:
      total = sum(math.prod(t[3]) * dtype.itemsize for t in tensors)
      io_utils.write_json(os.path.join(out_dir, INDEX),
                          {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    for f in os.listdir(out_dir):  # an older save's weights: only ours by name, never others
      if f not in written and (f in (SINGLE, INDEX) or _SHARD.fullmatch(f)):
        os.remove(os.path.join(out_dir, f))
  return written
