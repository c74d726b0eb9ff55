"""The deviceless compile command: analytic FLOPs against XLA's, the roofline, a real TPU
topology (when libtpu is installed, as CI installs it)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

from dualformer_jax import compile as compile_lib
from dualformer_jax.model import sharding as shd
from configs import maze

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _tiny_maze(remat: str):
  c = maze.get_config("default")
  c.model.dtype, c.model.attention, c.model.remat = "float32", "xla", remat
  c.mesh.data = 1
  return c


def test_analytic_flops_match_xla_where_xla_sees_every_op():
  """Without loops (no remat scan, plain attention) XLA counts every matmul once, so its
  count checks the analytic one; with remat's scan over layers it sees one layer."""
  mesh = shd.make_mesh(_tiny_maze("none").mesh, jax.devices()[:1])
  flat = compile_lib.planning_programs(_tiny_maze("none"), mesh, 8, 128)[0]
  xla = compile_lib.xla_figures(flat["lowered"].compile())["xla_flops"]
  analytic = flat["flops"]["hardware_flops"]
  # XLA also counts softmax / norm arithmetic and the causal half that plain attention
  # computes and masks: a few percent above the matmuls.
  assert analytic <= xla <= 1.15 * analytic
  looped = compile_lib.planning_programs(_tiny_maze("full"), mesh, 8, 128)[0]
  assert looped["flops"]["hardware_flops"] == pytest.approx(analytic * 4 / 3)
  assert compile_lib.xla_figures(looped["lowered"].compile())["xla_flops"] < 0.8 * analytic


def test_roofline_and_advice():
  chip = compile_lib.Chip("test", peak_flops=1e12, hbm_bytes=10 * 2**30, hbm_bandwidth=1e9)
  fig = {"argument_bytes": 4 * 2**30, "temp_bytes": 9 * 2**30, "output_bytes": 4 * 2**30,
         "alias_bytes": 4 * 2**30, "xla_flops": 1e9, "bytes_accessed": 5e8}
  row = compile_lib.roofline(fig, chip, chips=2, flops={"model_flops": 3e12,
                                                        "hardware_flops": 4e12},
                             tokens=1000, num_steps=86400)
  assert row["peak_bytes"] == 13 * 2**30 and not row["fits"]
  # 2e12 FLOPs per chip at 1e12/s beats 8.6e9 bytes (arguments + outputs) at 1e9/s.
  assert row["roofline_s"] == pytest.approx(8 * 2**30 / 1e9)
  assert row["mfu_bound"] == pytest.approx(1.5e12 / row["roofline_s"] / 1e12)
  assert row["days"] == pytest.approx(row["roofline_s"])
  config = _tiny_maze("dots")
  text = compile_lib.advice(config, row, chip, per_device_batch=8)
  assert text.startswith("over by 3.00 GiB") and "--per_device_batch=4" in text
  assert "remat 'full'" in text


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
  mesh = shd.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=8, tensor=1)), pod)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 8, "tensor": 1}
  two = compile_lib.topology_devices("v5e:2x2", num_slices=2)
  mesh = shd.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1)), two)
  slice_of = [[d.slice_index for d in row.flat] for row in mesh.devices]
  assert slice_of == [[0, 0], [0, 0], [1, 1], [1, 1]]  # rows of the data axis
  with pytest.raises(ValueError, match="multiple of the 2 slices"):
    shd.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1)), two)
