"""The performance model of compile.py: the analytic FLOP count against XLA's where XLA
sees every op, the roofline and the advice for a program over a chip's memory."""

import jax
import pytest

from configs import maze
from dualformer_jax import compile as compile_lib
from dualformer_jax import config as config_lib
from dualformer_jax import roofline
from dualformer_jax.model import sharding


def _tiny_maze(remat: str):
  c = maze.get_config("default")
  c.model.dtype, c.model.attention, c.model.remat = "float32", "xla", remat
  c.mesh.data = 1
  return c


def test_analytic_flops_match_xla_where_xla_sees_every_op():
  """Without loops (no remat scan, plain attention) XLA counts every matmul once, so its
  count checks the analytic one; with remat's scan over layers it sees one layer."""
  mesh = sharding.make_mesh(_tiny_maze("none").mesh, jax.devices()[:1])
  flat = compile_lib.planning_programs(config_lib.validate(_tiny_maze("none")), mesh, 8, 128)[0]
  xla = roofline.xla_figures(flat["lowered"].compile())["xla_flops"]
  analytic = flat["flops"]["hardware_flops"]
  # XLA also counts softmax / norm arithmetic and the causal half that plain attention
  # computes and masks: a few percent above the matmuls.
  assert analytic <= xla <= 1.15 * analytic
  looped = compile_lib.planning_programs(config_lib.validate(_tiny_maze("full")), mesh, 8, 128)[0]
  assert looped["flops"]["hardware_flops"] == pytest.approx(analytic * 4 / 3)
  assert roofline.xla_figures(looped["lowered"].compile())["xla_flops"] < 0.8 * analytic


def test_roofline_and_advice():
  chip = roofline.Chip("test", peak_flops=1e12, hbm_bytes=10 * 2**30, hbm_bandwidth=1e9)
  fig = {"argument_bytes": 4 * 2**30, "temp_bytes": 9 * 2**30, "output_bytes": 4 * 2**30,
         "alias_bytes": 4 * 2**30, "xla_flops": 1e9, "bytes_accessed": 5e8}
  row = roofline.roofline(fig, chip, chips=2, flops={"model_flops": 3e12,
                                                        "hardware_flops": 4e12},
                             tokens=1000, num_steps=86400)
  assert row["peak_bytes"] == 13 * 2**30 and not row["fits"]
  # 2e12 FLOPs per chip at 1e12/s beats 8.6e9 bytes (arguments + outputs) at 1e9/s.
  assert row["roofline_s"] == pytest.approx(8 * 2**30 / 1e9)
  assert row["mfu_bound"] == pytest.approx(1.5e12 / row["roofline_s"] / 1e12)
  assert row["days"] == pytest.approx(row["roofline_s"])
  config = _tiny_maze("dots")
  text = compile_lib.advice(config_lib.validate(config), row, chip, per_device_batch=8)
  assert text.startswith("over by 3.00 GiB") and "--per_device_batch=4" in text
  assert "remat 'full'" in text
