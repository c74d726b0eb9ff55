"""lm/hf_checkpoint.py: save/load round trips, transformers reading our exports, loading
onto a mesh, and the errors a broken checkpoint directory gets."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from dualformer_jax.lm import hf_checkpoint
from dualformer_jax.lm.hf_checkpoint import CheckpointError
from dualformer_jax.lm.model import log_probs
from dualformer_jax.model import sharding
from dualformer_jax.train import checkpoint as checkpoint_lib

_log_probs = nnx.jit(log_probs)


def _params(model) -> dict:
  return {path: np.asarray(jax.device_get(var.get_value()))
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys()
  for path in pa:
    assert pa[path].dtype == pb[path].dtype, path
    np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))


def _copy(src: str, dst) -> str:
  out = str(dst)
  shutil.copytree(src, out)
  return out


@pytest.mark.parametrize("name", ["llama3", "llama31_tied"])
def test_save_load_round_trip_and_transformers_reads_the_export(
    checkpoints, tmp_path, hf_log_probs, example_ids, name):
  transformers = pytest.importorskip("transformers")
  path, hf = checkpoints[name]
  model = hf_checkpoint.load(path)
  ids, valid = example_ids()
  keep = valid[:, 1:]
  want = hf_log_probs(hf, ids, valid)

  one = str(tmp_path / "one")
  assert hf_checkpoint.save(model, one) == ["config.json", "model.safetensors"]
  assert sorted(os.listdir(one)) == ["config.json", "model.safetensors"]
  _assert_same_params(hf_checkpoint.load(one), model)
  # A tied model writes no lm_head; an untied one does.
  assert ("lm_head.weight" in load_file(os.path.join(one, "model.safetensors"))) == \
      (name == "llama3")

  sharded = str(tmp_path / "sharded")
  files = hf_checkpoint.save(model, sharded, max_shard_bytes=40_000)  # ~3 tensors a shard
  shards = [f for f in files if f.startswith("model-")]
  assert len(shards) > 2 and "model.safetensors.index.json" in files
  assert sorted(os.listdir(sharded)) == sorted(files)
  with open(os.path.join(sharded, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert set(index["weight_map"].values()) == set(shards)
  assert index["metadata"]["total_size"] == sum(
      x.nbytes for s in shards for x in load_file(os.path.join(sharded, s)).values())
  _assert_same_params(hf_checkpoint.load(sharded), model)

  for out in (one, sharded):
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager").eval()
    assert type(reloaded) is type(hf)
    np.testing.assert_allclose(hf_log_probs(reloaded, ids, valid)[keep], want[keep], atol=1e-4)
  ours = np.asarray(_log_probs(model, jnp.asarray(ids), jnp.asarray(valid)))
  np.testing.assert_allclose(ours[keep], want[keep], atol=1e-4)


def test_saving_again_replaces_the_old_layout(checkpoints, tmp_path):
  """A single-file save over a sharded one must not leave the stale index behind (the
  loader would read the old shards through it), and vice versa."""
  model = hf_checkpoint.load(checkpoints["mistral_window"][0])
  out = str(tmp_path / "out")
  hf_checkpoint.save(model, out, max_shard_bytes=40_000)
  (tmp_path / "out" / "notes.txt").write_text("kept")
  assert hf_checkpoint.save(model, out) == ["config.json", "model.safetensors"]
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "notes.txt"]
  files = hf_checkpoint.save(model, out, max_shard_bytes=40_000)
  assert sorted(os.listdir(out)) == sorted(files + ["notes.txt"])
  _assert_same_params(hf_checkpoint.load(out), model)


def test_bfloat16_on_disk(checkpoints, tmp_path):
  model = hf_checkpoint.load(checkpoints["llama3"][0])
  out = str(tmp_path / "bf16")
  hf_checkpoint.save(model, out, dtype="bfloat16")
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  back = hf_checkpoint.load(out, param_dtype="bfloat16")
  for path, x in _params(model).items():
    y = _params(back)[path]
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, x.astype(jnp.bfloat16), err_msg=str(path))
  # float32 params from a bf16 file: exactly the bf16 values, widened.
  wide = _params(hf_checkpoint.load(out))
  for path, y in _params(back).items():
    np.testing.assert_array_equal(wide[path], y.astype(np.float32))


def _mesh(fsdp=4, tensor=2):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp, tensor=tensor)))


@pytest.mark.parametrize("name", ["llama3", "llama31_tied"])
def test_load_onto_a_mesh(checkpoints, hf_log_probs, example_ids, name):
  path, hf = checkpoints[name]
  mesh = _mesh()
  assert jax.device_count() == 8 and dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  plain, sharded = hf_checkpoint.load(path), hf_checkpoint.load(path, mesh=mesh)
  state = nnx.state(sharded, nnx.Param)
  specs = {p: v.get_value().sharding.spec for p, v in nnx.to_flat_state(state)}
  assert specs[("embed",)] == P("tensor", "fsdp")
  assert specs[("layers", "wq")] == P(None, "fsdp", "tensor", None)
  assert specs[("layers", "wo")] == P(None, "tensor", None, "fsdp")
  assert specs[("layers", "w_down")] == P(None, "tensor", "fsdp")
  assert specs[("norm",)] == P(None)
  assert (("head",) in specs) == (name == "llama3")
  wq = state["layers"]["wq"].get_value()
  assert wq.sharding.mesh == mesh and len(wq.addressable_shards) == 8
  assert wq.addressable_shards[0].data.shape == (2, 16, 2, 16)  # [L, D/4, H/2, K]
  _assert_same_params(sharded, plain)

  ids, valid = example_ids(batch=4)
  want = hf_log_probs(hf, ids, valid)
  keep = valid[:, 1:]
  with jax.set_mesh(mesh):
    batch = sharding.shard_batch({"ids": ids, "valid": valid}, mesh)
    got = np.asarray(_log_probs(sharded, batch["ids"], batch["valid"]))
  np.testing.assert_allclose(got[keep], want[keep], atol=1e-4)


# --- errors ---------------------------------------------------------------------------


def test_the_loader_raises_the_one_error_family_without_loading_orbax_or_grain():
  """Scoring or exporting a Hugging Face checkpoint needs neither library."""
  code = ("import sys; from dualformer_jax.lm import hf_checkpoint; "
          "print([m for m in ('orbax.checkpoint', 'grain') if m in sys.modules])")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True).stdout
  assert out.strip().splitlines()[-1] == "[]"
  assert CheckpointError is checkpoint_lib.CheckpointError


def test_missing_config(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["llama3"][0], tmp_path / "c")
  os.remove(os.path.join(ckpt, "config.json"))
  with pytest.raises(CheckpointError, match="config.json: no such file"):
    hf_checkpoint.load(ckpt)
  with pytest.raises(CheckpointError, match="config.json: no such file"):
    hf_checkpoint.load(str(tmp_path / "nowhere"))


def test_unreadable_or_unsupported_config(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["llama3"][0], tmp_path / "c")
  cfg_path = os.path.join(ckpt, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  with open(cfg_path, "w") as f:
    f.write("{not json")
  with pytest.raises(CheckpointError, match="config.json: unreadable"):
    hf_checkpoint.load(ckpt)
  with open(cfg_path, "w") as f:
    json.dump({**cfg, "model_type": "gpt2"}, f)
  with pytest.raises(CheckpointError, match="model_type='gpt2' is not supported"):
    hf_checkpoint.load(ckpt)


def test_missing_safetensors(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["llama3"][0], tmp_path / "c")
  os.remove(os.path.join(ckpt, "model.safetensors"))
  with pytest.raises(CheckpointError, match="neither model.safetensors nor "
                     "model.safetensors.index.json"):
    hf_checkpoint.load(ckpt)


def _rewrite(ckpt: str, change) -> None:
  path = os.path.join(ckpt, "model.safetensors")
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["llama3"][0], tmp_path / "c")
  _rewrite(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(CheckpointError, match=r"1 missing tensors \['model.layers.1.mlp.up_proj"
                     r".weight'\], 0 unexpected"):
    hf_checkpoint.load(ckpt)


def test_unexpected_tensor(checkpoints, tmp_path):
  """A tensor the config does not describe (e.g. a third layer) is refused, not dropped;
  old rotary buffers are ignored."""
  ckpt = _copy(checkpoints["llama3"][0], tmp_path / "c")

  def add(t):
    t["model.layers.2.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"]
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)

  _rewrite(ckpt, add)
  with pytest.raises(CheckpointError, match=r"0 missing tensors \[\], 1 unexpected tensors "
                     r"\['model.layers.2.mlp.up_proj.weight'\]"):
    hf_checkpoint.load(ckpt)


def test_wrong_shape(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["llama3"][0], tmp_path / "c")
  name = "model.layers.0.self_attn.k_proj.weight"  # [G*K, D] = [32, 64]

  def shrink(t):
    t[name] = t[name][:16]

  _rewrite(ckpt, shrink)
  with pytest.raises(CheckpointError, match=rf"tensor {name} has shape \[16, 64\], "
                     r"config.json implies \[32, 64\]"):
    hf_checkpoint.load(ckpt)


def test_index_naming_a_missing_shard(checkpoints, tmp_path):
  model = hf_checkpoint.load(checkpoints["llama3"][0])
  out = str(tmp_path / "sharded")
  files = hf_checkpoint.save(model, out, max_shard_bytes=40_000)
  gone = [f for f in files if f.startswith("model-")][1]
  os.remove(os.path.join(out, gone))
  with pytest.raises(CheckpointError, match=f"{gone}: no such file \\(named in "
                     "model.safetensors.index.json\\)"):
    hf_checkpoint.load(out)
  with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    f.write('{"metadata": {}}')
  with pytest.raises(CheckpointError, match="index.json: no weight_map"):
    hf_checkpoint.load(out)


# --- hostile files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """A tiny LM saved by hf_checkpoint.save in three shards plus an index (no transformers)."""
  from dualformer_jax.lm.model import LM, LMConfig
  cfg = LMConfig(vocab_size=32, dim=16, num_layers=2, num_heads=2, num_kv_heads=1, ffn_dim=32,
                 max_position_embeddings=32)
  out = str(tmp_path_factory.mktemp("sharded") / "ckpt")
  files = hf_checkpoint.save(LM(cfg, rngs=nnx.Rngs(0)), out, max_shard_bytes=6_000)
  assert hf_checkpoint.INDEX in files
  return out


def _point_index_at(ckpt: str, name: str) -> None:
  """Makes the index send every tensor of its first shard to `name`."""
  path = os.path.join(ckpt, hf_checkpoint.INDEX)
  with open(path) as f:
    index = json.load(f)
  first = sorted(set(index["weight_map"].values()))[0]
  index["weight_map"] = {n: name if f == first else f for n, f in index["weight_map"].items()}
  with open(path, "w") as f:
    json.dump(index, f)


@pytest.mark.parametrize("how", ["parent", "absolute", "deep", "symlink"])
def test_an_index_naming_a_file_outside_the_checkpoint_is_refused(sharded, tmp_path, how):
  """A shard named ../outside/x, /abs/x, ../../etc/passwd or through a symlink that leaves
  the directory is refused in one line, though the file outside is a valid shard."""
  ckpt = _copy(sharded, tmp_path / "ckpt")
  first = sorted(f for f in os.listdir(ckpt) if f.startswith("model-"))[0]
  os.makedirs(tmp_path / "outside")
  outside = str(tmp_path / "outside" / "x.safetensors")
  shutil.copy(os.path.join(ckpt, first), outside)
  name = {"parent": "../outside/x.safetensors", "absolute": outside,
          "deep": "../../../../../../etc/passwd", "symlink": first}[how]
  if how == "symlink":
    os.remove(os.path.join(ckpt, first))
    os.symlink(outside, os.path.join(ckpt, first))
  else:
    _point_index_at(ckpt, name)
  with pytest.raises(CheckpointError, match=f"weight file '{name}' (is not a file name inside"
                     "|resolves to .* outside)"):
    hf_checkpoint.load(ckpt)


def test_the_hub_cache_layout_of_links_into_blobs_loads(sharded, tmp_path):
  """snapshots/<rev>/ files link to ../../blobs/ of the same repository folder: allowed."""
  repo = tmp_path / "models--org--tiny"
  snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
  os.makedirs(snap)
  os.makedirs(blobs)
  for f in os.listdir(sharded):
    shutil.copy(os.path.join(sharded, f), blobs / f)
    os.symlink(os.path.join("..", "..", "blobs", f), snap / f)
  _assert_same_params(hf_checkpoint.load(str(snap)), hf_checkpoint.load(sharded))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header_lies"])
def test_a_damaged_safetensors_file_is_one_line_naming_it(sharded, tmp_path, damage):
  ckpt = _copy(sharded, tmp_path / "ckpt")
  shard = os.path.join(ckpt, sorted(f for f in os.listdir(ckpt) if f.startswith("model-"))[1])
  with open(shard, "rb") as f:
    data = f.read()
  with open(shard, "wb") as f:
    if damage == "truncated":
      f.write(data[:len(data) // 2])
    elif damage == "garbage":
      f.write(b"\xff" * 64)
    else:  # a header that claims a huge size
      f.write((2**62).to_bytes(8, "little") + data[8:])
  with pytest.raises(CheckpointError, match=f"{shard}: not a readable safetensors file"):
    hf_checkpoint.load(ckpt)


@pytest.mark.parametrize("content,message", [
    (b'{"model_type": "llama", "x": "\xff"}', "config.json: unreadable"),
    (b"[1, 2]", "config.json: expected a JSON object, got list"),
    (b"[" * 100_000, "config.json: unreadable"),
    (b'{"model_type": "llama", "hidden_size": "big"}', "config.json: ")],
    ids=["not_utf8", "a_list", "nested_too_deep", "a_bad_value"])
def test_a_config_json_that_is_not_an_object_or_not_utf8_is_one_line(sharded, tmp_path,
                                                                     content, message):
  ckpt = _copy(sharded, tmp_path / "ckpt")
  with open(os.path.join(ckpt, "config.json"), "wb") as f:
    f.write(content)
  with pytest.raises(CheckpointError, match=message):
    hf_checkpoint.load(ckpt)
