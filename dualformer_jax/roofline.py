"""What a compiled program needs of a chip, and how fast it could run there.

Per-chip memory from XLA's analysis of the compiled program, FLOPs from an
analytic count of the models' matmuls (XLA's own count sees the body of a loop
once and a custom-call kernel not at all), and the roofline bound on the step
time they imply on a chip of `CHIPS`. compile.py prints them for TPU
topologies; the count is checked against XLA's on a loop-free program in
tests/compile_test.py.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_flops: float  # dense bf16 FLOP/s per chip
  hbm_bytes: int
  hbm_bandwidth: float  # bytes/s


# Per chip, from Google Cloud's TPU system-architecture pages (cloud.google.com/tpu/docs/
# v4, v5e, v5p, v6e): peak bf16 TFLOP/s, HBM GiB, HBM GB/s.
CHIPS = {
    "TPU v4": Chip("v4", 275e12, 32 * GIB, 1228e9),
    "TPU v5 lite": Chip("v5e", 197e12, 16 * GIB, 819e9),
    "TPU v5": Chip("v5p", 459e12, 95 * GIB, 2765e9),
    "TPU v5p": Chip("v5p", 459e12, 95 * GIB, 2765e9),
    "TPU v6 lite": Chip("v6e", 918e12, 32 * GIB, 1640e9),
}


# ------------------------------------------------------------------ analytic FLOPs

def planning_flops(model_cfg: Any, batch: int, prompt_len: int, dec_len: int) -> dict:
  """Matmul FLOPs of one train step of the encoder-decoder (model/transformer.py).

  model: 3 x forward (what MFU counts); hardware: with remat's recomputed forward
  ("full": the whole block, "dots": its attention products). The causal decoder
  self-attention counts half its score matrix, as blockwise and splash skip it.
  """
  d, f, layers, v = model_cfg.dim, model_cfg.ffn, model_cfg.layers, model_cfg.vocab_size
  p, t = prompt_len, dec_len
  ffn = 3 * d * f
  per_example = 2 * (layers * (p * (4 * d * d + ffn)  # encoder blocks
                               + t * (4 * d * d + 2 * d * d + ffn)  # self + cross q/o + ffn
                               + p * 2 * d * d)  # cross-attention k/v of the prompt
                     + t * d * v)  # output head
  attn = 4 * d * layers * (p * p + t * t / 2 + t * p)  # scores + values, all heads
  fwd = batch * (per_example + attn)
  extra = {"full": fwd, "dots": batch * attn}.get(model_cfg.remat, 0.0)
  return {"model_flops": 3.0 * fwd, "hardware_flops": 3.0 * fwd + extra}


def lm_flops(lm_cfg: Any, batch: int, seq_len: int) -> dict:
  """Matmul FLOPs of one train step of the decoder-only LM (lm/model.py), as above."""
  d, hd, h, g = lm_cfg.dim, lm_cfg.head_dim, lm_cfg.num_heads, lm_cfg.num_kv_heads
  per_token = 2 * (lm_cfg.num_layers * (d * hd * (2 * h + 2 * g) + 3 * d * lm_cfg.ffn_dim)
                   + d * lm_cfg.vocab_size)
  window = min(lm_cfg.window or seq_len, seq_len)
  attn = 4 * hd * h * lm_cfg.num_layers * seq_len * window / 2
  fwd = batch * (seq_len * per_token + attn)
  extra = {"full": fwd, "dots": batch * attn}.get(lm_cfg.remat, 0.0)
  return {"model_flops": 3.0 * fwd, "hardware_flops": 3.0 * fwd + extra}


# ------------------------------------------------------------------ figures

def xla_figures(compiled) -> dict:
  """Per-chip memory and XLA's cost analysis of a compiled program."""
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return {"argument_bytes": int(m.argument_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes),
          "xla_flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def peak_bytes(fig: dict) -> int:
  """Arguments + temporaries + outputs not written in place of a donated argument."""
  return fig["argument_bytes"] + fig["temp_bytes"] + fig["output_bytes"] - fig["alias_bytes"]


def roofline(fig: dict, chip: Chip, chips: int, flops: dict | None, tokens: int,
             num_steps: int) -> dict:
  """Adds fits / roofline_s / tokens_per_s / mfu_bound / days to a program's figures.

  Bytes per step are at least XLA's count and at least the arguments read and
  outputs written once (XLA's count, too, sees a loop body once).
  """
  need = peak_bytes(fig)
  out = dict(fig, peak_bytes=need, hbm_bytes=chip.hbm_bytes, fits=need <= chip.hbm_bytes)
  if flops is None:
    return dict(out, flops=None, roofline_s=None)
  hw = flops["hardware_flops"] / chips
  moved = max(fig["bytes_accessed"], fig["argument_bytes"] + fig["output_bytes"])
  step_s = max(hw / chip.peak_flops, moved / chip.hbm_bandwidth)
  return dict(out, flops=hw, model_flops=flops["model_flops"] / chips, bytes_accessed=moved,
              roofline_s=step_s, tokens_per_s=tokens / step_s,
              mfu_bound=flops["model_flops"] / chips / step_s / chip.peak_flops,
              days=num_steps * step_s / 86400)


_SIZE = re.compile(r"\(([\d.]+)([KMGT])\)")


def out_of_memory(error: Exception, chip: Chip) -> dict:
  """The figures of a program the TPU compiler refused for want of HBM (it says how much
  its temporaries need); any other compile error is raised."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text:
    raise error
  sizes = [float(n) * 2 ** (10 * " KMGT".index(u)) for n, u in _SIZE.findall(text)]
  temp = int(sizes[0]) if sizes else None
  return {"argument_bytes": None, "temp_bytes": temp, "output_bytes": None, "alias_bytes": None,
          "xla_flops": None, "bytes_accessed": None, "peak_bytes": temp,
          "hbm_bytes": chip.hbm_bytes, "fits": False, "flops": None, "roofline_s": None,
          "compiler": text.strip().splitlines()[-1][:300]}
