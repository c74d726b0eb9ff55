"""The deviceless compile command on real TPU topologies (when libtpu is installed, as CI
installs it): the preset's programs, one-line errors, meshes over pods and slices."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from dualformer_jax import compile as compile_lib
from dualformer_jax.model import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "dualformer_jax.compile", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (requirements-tpu.txt)")
def test_compiles_a_preset_for_a_tpu_slice():
  """The maze default's train step (splash attention at 256 tokens, shard-mapped over the
  slice's 4 chips) and sampler compile for v5e:2x2; nothing runs."""
  out = _cli("--config=configs/maze.py", "--topology=v5e:2x2", "--dec_len=256",
             "--config.model.dtype=bfloat16")
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["chips"] == 4 and report["device_kind"] == "TPU v5 lite"
  assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  train, sample = report["programs"]
  assert (train["name"], train["attention"], train["batch"]) == ("train", "splash", 16)
  assert train["fits"] and 0 < train["peak_bytes"] < report["hbm_bytes"]
  assert train["flops"] > train["xla_flops"] > 0  # the analytic count; XLA sees one layer
  assert 0 < train["mfu_bound"] <= 1 and train["roofline_s"] > 0 and train["days"] > 0
  assert sample["name"] == "sample" and sample["fits"] and sample["roofline_s"] is None
  assert "train: splash attention" in out.stdout


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (requirements-tpu.txt)")
def test_an_unknown_topology_is_one_line():
  out = _cli("--config=configs/maze.py", "--topology=v9z:1x1")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("compile: error: --topology=v9z:1x1")


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (requirements-tpu.txt)")
def test_meshes_over_pods_and_slices():
  """fsdp=8 on a 4x4x4 torus splits physical axes; over two slices `data` spans them."""
  import ml_collections
  before = dict(os.environ)
  pod = compile_lib.topology_devices("v5p:4x4x4")
  assert dict(os.environ) == before  # no TPU host names left for a later `main` to see
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=8, tensor=1)), pod)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 8, "tensor": 1}
  two = compile_lib.topology_devices("v5e:2x2", num_slices=2)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1)), two)
  slice_of = [[d.slice_index for d in row.flat] for row in mesh.devices]
  assert slice_of == [[0, 0], [0, 0], [1, 1], [1, 1]]  # rows of the data axis
  with pytest.raises(ValueError, match="multiple of the 2 slices"):
    sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1)), two)


def test_lm_programs_lower_from_the_typed_run():
  """compile.lm_programs takes the MathRun that math_config.validate builds: the LM's train
  step and sampler lower on CPU at the from-scratch shape; nothing is compiled."""
  import jax

  from configs import math as math_configs
  from dualformer_jax.lm import math_config
  c = math_configs.get_config("default")
  c.lm.dim, c.lm.num_layers, c.lm.ffn_dim = 32, 1, 64
  run = math_config.validate(c)
  mesh = sharding.make_mesh(run.mesh, jax.devices()[:1])
  train, sample = compile_lib.lm_programs(run, mesh, 2, 48, "")
  assert (train["name"], train["batch"], train["dec_len"], train["tokens"]) == (
      "lm_train", 2, 48, 96)
  assert (sample["name"], sample["batch"]) == ("lm_sample", 50 * 20)  # problems x samples
  assert train["lowered"] is not None and sample["lowered"] is not None
