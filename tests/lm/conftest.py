"""Tiny random Hugging Face Llama / Mistral checkpoints, written once per session.

Each is saved by transformers itself (`save_pretrained`, safetensors), so the
tests load exactly what a real checkpoint directory holds; nothing is
downloaded. Skipped, with the reason, where torch/transformers are absent
(requirements-test.txt installs them).
"""

import numpy as np
import pytest

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-5, initializer_range=0.2)  # sharp enough to tell configs apart
LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# name -> (architecture, extra config): untied Llama 3, tied Llama 3.1 (rope
# scaling), Mistral with a sliding window shorter than the test sequences.
ARCHS = {
    "llama3": ("llama", dict(rope_theta=500000.0)),
    "llama31_tied": ("llama", dict(rope_theta=500000.0, rope_scaling=LLAMA31_ROPE,
                                   tie_word_embeddings=True)),
    "mistral_window": ("mistral", dict(rope_theta=10000.0, sliding_window=4)),
}


def hf_model(arch: str, **extra):
  transformers = pytest.importorskip("transformers", reason="transformers (and torch) are "
                                     "needed for the Hugging Face parity tests")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
         "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[arch]
  model = cls[1](cls[0](**COMMON, **extra, attn_implementation="eager")).eval()
  with torch.no_grad():  # norms start at 1: make them matter
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
  """name -> (checkpoint dir, the transformers model)."""
  out = {}
  for name, (arch, extra) in ARCHS.items():
    model = hf_model(arch, **extra)
    path = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(path, safe_serialization=True)
    out[name] = (path, model)
  return out


def _hf_log_probs(model, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """transformers' log p(ids[t+1] | ids[:t+1]) [B, T-1] (right padding masked)."""
  import torch
  with torch.no_grad():
    logits = model(torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(valid, dtype=torch.long)).logits.float()
  logp = torch.log_softmax(logits, -1)[:, :-1]
  return logp.gather(-1, torch.tensor(ids[:, 1:, None], dtype=torch.long))[..., 0].numpy()


def _example_ids(batch: int = 3, length: int = 13, seed: int = 0):
  """Random ids and a right-padding mask (row 1 is 4 tokens shorter)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, VOCAB, (batch, length)).astype(np.int32)
  valid = np.ones((batch, length), bool)
  valid[1, length - 4:] = False
  ids[~valid] = 0
  return ids, valid


@pytest.fixture
def hf_log_probs():
  return _hf_log_probs


@pytest.fixture
def example_ids():
  return _example_ids
