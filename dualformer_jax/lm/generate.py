"""Text from a Hugging Face checkpoint through the evaluation's sampler (greedy by default).

  python -m dualformer_jax.lm.generate --checkpoint=DIR --prompt="What is 7 * 8?" \
      [--prompt=...] [--chat=true] [--max_new_tokens=64] [--top_k=1] [--temperature=1.0] \
      [--num_samples=1] [--seed=0] [--dtype=float32]

--chat (default): each prompt is one user message put through the
checkpoint's chat template with the assistant's turn opened, as an instruct
model expects; --chat=false: bos + the raw text (a base model, or the math
format "Problem: ...\\nSolution:"). Every prompt and sample is one row of one
`sampler.sample` call, the call `lm/math_eval.py` makes, so what this prints is
what Greedy@1 (top_k = 1) and Pass@k (top_k 0, a temperature) score.
"""

from __future__ import annotations

import sys
from typing import Sequence

import jax
import numpy as np
from absl import app, flags

from dualformer_jax.infer import sampler as sampler_lib
from dualformer_jax.lm import hf_checkpoint
from dualformer_jax.lm.model import LM
from dualformer_jax.lm.tokenizer import Tokenizer

def prompt_ids(tok: Tokenizer, prompt: str, chat: bool) -> list[int]:
  """The chat-templated user turn (the template writes its own specials), or bos + prompt."""
  if chat:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                   add_generation_prompt=True)
    return tok.encode(text)
  return tok.encode(prompt, add_bos=True)


def generate_ids(model: LM, tok: Tokenizer, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int, top_k: int = 1, temperature: float = 1.0,
                 num_samples: int = 1, seed: int = 0) -> list[list[list[int]]]:
  """[prompt][sample] -> the generated ids, eos excluded (at most max_new_tokens each)."""
  if max_new_tokens < 1 or num_samples < 1:
    raise ValueError(f"need max_new_tokens >= 1 and num_samples >= 1, got {max_new_tokens}, "
                     f"{num_samples}")
  rows = [list(p) for p in prompts for _ in range(num_samples)]
  prefix_RxK, plen_R = sampler_lib.stack_prefixes(rows)
  out = sampler_lib.sample_model(
      model, None, prefix_RxK, plen_R, jax.random.key(seed), num_samples=num_samples,
      max_len=prefix_RxK.shape[1] + max_new_tokens, temperature=temperature, top_k=top_k,
      eos_id=tok.eos_ids, pad_id=None if tok.pad_id in tok.eos_ids else tok.pad_id)
  ids_RxL, len_R, done_R = (np.asarray(x) for x in jax.device_get(tuple(out)))
  gen = [ids_RxL[r, plen_R[r]:len_R[r] - int(done_R[r])].tolist()[:max_new_tokens]
         for r in range(len(rows))]
  return [gen[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def cli() -> None:
  """python -m dualformer_jax.lm.generate; its flags exist only in this process (lm.score
  defines --checkpoint and --dtype too, and tests import both)."""
  checkpoint = flags.DEFINE_string("checkpoint", None, "Hugging Face checkpoint directory "
                                   "(config.json, safetensors, tokenizer.json).")
  prompt = flags.DEFINE_multi_string("prompt", None, "A prompt (repeat the flag for more).")
  chat = flags.DEFINE_bool("chat", True, "Wrap each prompt in the checkpoint's chat template.")
  max_new = flags.DEFINE_integer("max_new_tokens", 64, "Most tokens generated per row.")
  top_k = flags.DEFINE_integer("top_k", 1, "1: greedy; 0: no top-k filter; k: the k likeliest.")
  temperature = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (top_k != 1).")
  num_samples = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
  seed = flags.DEFINE_integer("seed", 0, "Sampling key.")
  dtype = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                            "Compute and parameter dtype.")

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not checkpoint.value or not prompt.value:
      raise app.UsageError("--checkpoint and --prompt are required")
    try:
      tok = Tokenizer(checkpoint.value)
      model = hf_checkpoint.load(checkpoint.value, dtype=dtype.value, param_dtype=dtype.value)
      prompts = [prompt_ids(tok, p, chat.value) for p in prompt.value]
      out = generate_ids(model, tok, prompts, max_new_tokens=max_new.value, top_k=top_k.value,
                         temperature=temperature.value, num_samples=num_samples.value,
                         seed=seed.value)
    except (hf_checkpoint.CheckpointError, OSError, ValueError) as e:
      sys.exit(f"generate: {e}")
    for text, samples in zip(prompt.value, out):
      for s, ids in enumerate(samples):
        print(f"--- {text!r}" + (f" (sample {s + 1})" if len(samples) > 1 else ""))
        print(tok.decode(ids))

  app.run(main)


if __name__ == "__main__":
  cli()
