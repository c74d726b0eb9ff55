"""The planning Transformer's shape and numerics: named sizes, remat policies, ModelConfig.

Kept apart from model/transformer.py so configs, the train step and the
language model (which shares the remat policies) read one definition.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dualformer_jax.model import attention as attn_lib

# (dim, layers, heads), the same for encoder and decoder (PAPER.md sizes + tiny).
SIZES = {
    "tiny": (128, 2, 4),
    "s": (192, 6, 3),
    "m-s": (384, 8, 4),
    "l": (768, 9, 4),
    "xl-2": (1152, 16, 12),
}
# Rematerialisation in the backward pass, per block: what the forward keeps.
REMAT_POLICIES = {
    "none": None,  # no remat: every activation is kept
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight-matmul outputs
    "full": jax.checkpoint_policies.nothing_saveable,  # block inputs only
}


def ffn_dim(dim: int) -> int:
  """SwiGLU hidden size: 2/3 * 4 * dim rounded up to a multiple of 256."""
  hidden = -(-8 * dim // 3)
  return -(-hidden // 256) * 256


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the model needs; built once from `config.model`."""
  dim: int
  layers: int
  heads: int
  vocab_size: int
  ffn: int = 0  # 0: ffn_dim(dim)
  dtype: str = "float32"  # compute dtype; params are float32
  remat: str = "none"  # REMAT_POLICIES key
  attention: str = "auto"  # attention.IMPLEMENTATIONS
  rope_base: float = 10000.0
  norm_eps: float = 1e-6

  def __post_init__(self):
    if self.ffn == 0:
      object.__setattr__(self, "ffn", ffn_dim(self.dim))
    for field in ("dim", "layers", "heads", "vocab_size", "ffn"):
      if getattr(self, field) < 1:
        raise ValueError(f"ModelConfig.{field}={getattr(self, field)}: must be >= 1")
    if self.dim % self.heads or (self.dim // self.heads) % 2:
      raise ValueError(f"ModelConfig.heads={self.heads}: must divide dim={self.dim} "
                       "into an even head dim (RoPE rotates pairs)")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"ModelConfig.dtype={self.dtype!r}: expected float32 or bfloat16")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat={self.remat!r}: expected one of {tuple(REMAT_POLICIES)}")
    if self.attention not in attn_lib.IMPLEMENTATIONS:
      raise ValueError(f"ModelConfig.attention={self.attention!r}: expected one of "
                       f"{attn_lib.IMPLEMENTATIONS}")

  @property
  def head_dim(self) -> int:
    return self.dim // self.heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, model_cfg: Any, vocab_size: int) -> "ModelConfig":
    """`config.model` (size name, shape overrides, dtype, remat, attention, rope_base) +
    vocabulary size. An override (dim, layers, heads, ffn) of 0 keeps the size's value."""
    if model_cfg.size not in SIZES:
      raise ValueError(f"config.model.size={model_cfg.size!r}: expected one of {tuple(SIZES)}")
    shape = dict(zip(("dim", "layers", "heads"), SIZES[model_cfg.size]), ffn=0)
    for field in shape:
      value = model_cfg.get(field, 0)
      if value < 0:
        raise ValueError(f"config.model.{field}={value}: must be >= 1, or 0 for the size's")
      shape[field] = value or shape[field]
    return cls(**shape, vocab_size=vocab_size,
               dtype=model_cfg.dtype, remat=remat_policy(model_cfg.remat),
               attention=model_cfg.get("attention", "auto"),
               rope_base=float(model_cfg.rope_base))


def remat_policy(value: Any) -> str:
  """A remat setting as a policy name; the booleans of older configs map to none / full."""
  if isinstance(value, bool):
    return "full" if value else "none"
  return str(value)
