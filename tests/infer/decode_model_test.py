"""Both models satisfy the sampler's DecodeModel protocol, with its exact signatures."""

import inspect

import pytest
from flax import nnx

from dualformer_jax.infer.decode_model import DecodeModel
from dualformer_jax.lm.model import LM, LMConfig
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model.transformer import Transformer


@pytest.mark.parametrize("make", [
    lambda: Transformer(ModelConfig(dim=32, layers=1, heads=2, vocab_size=16), rngs=nnx.Rngs(0)),
    lambda: LM(LMConfig(vocab_size=16, dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
                        ffn_dim=64), rngs=nnx.Rngs(0)),
], ids=["transformer", "lm"])
def test_both_models_are_decode_models(make):
  model = nnx.eval_shape(make)  # shapes only: nothing is computed
  assert isinstance(model, DecodeModel)
  for name in ("init_cache", "decode_step"):
    want = list(inspect.signature(getattr(DecodeModel, name)).parameters)[1:]  # without self
    assert list(inspect.signature(getattr(model, name)).parameters) == want, name
