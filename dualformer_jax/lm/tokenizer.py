"""The tokenizer of a Hugging Face checkpoint: `tokenizer.json` via the `tokenizers` package.

Special ids come from the checkpoint's config.json (bos_token_id,
eos_token_id: what the model was trained with), else from the token strings
in tokenizer_config.json (plain or {"content": ...}). `encode` adds no special
tokens by default (math_data.prompt_ids adds bos itself; the tokenizer's
post-processor is never used), so a prompt gets exactly one bos whatever the
tokenizer.json says.

pad_id: config.json's pad_token_id, else tokenizer_config.json's pad_token,
else eos_id. Llama 3 and Mistral checkpoints name no pad, so pad then equals
eos; that is fine for training and scoring, where a `valid` mask, not the pad
id, marks the real tokens.

chat_template: the checkpoint's Jinja chat template (chat_template.jinja, as
transformers 4.43+ saves it, else tokenizer_config.json's "chat_template"),
rendered as transformers renders it (sandboxed, trim_blocks, lstrip_blocks),
for prompting an instruct model; the math format does not use it.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jinja2.sandbox
import tokenizers


class Tokenizer:
  """encode(text) -> ids, decode(ids) -> text, with bos_id, eos_id (eos_ids), pad_id:
  math_data.Tokenizer's protocol over a checkpoint directory."""

  def __init__(self, ckpt_dir: str):
    path = os.path.join(ckpt_dir, "tokenizer.json")
    if not os.path.isfile(path):
      raise ValueError(f"{path}: no such file (the checkpoint has no fast tokenizer)")
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers library raises plain Exception on a bad file
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"{path}: not a tokenizer.json the tokenizers library reads "
                       f"({first})") from None
    cfg = _read_json(os.path.join(ckpt_dir, "config.json"))
    tok_cfg = _read_json(os.path.join(ckpt_dir, "tokenizer_config.json"))
    bos = self._special("bos", cfg.get("bos_token_id"), tok_cfg.get("bos_token"))
    if isinstance(bos, list):
      raise ValueError(f"{ckpt_dir}: bos_token_id={bos}: expected one id")
    self.bos_id: int | None = bos
    eos = self._special("eos", cfg.get("eos_token_id"), tok_cfg.get("eos_token"))
    # Llama 3.1 instruct lists several (end of text, end of turn, ...): any one ends a row.
    self.eos_ids: tuple[int, ...] = tuple(eos) if isinstance(eos, list) else (
        () if eos is None else (eos,))
    if not self.eos_ids:
      raise ValueError(f"{ckpt_dir}: no eos token: config.json has no eos_token_id and "
                       "tokenizer_config.json no eos_token")
    self.eos_id: int = self.eos_ids[0]
    pad = self._special("pad", cfg.get("pad_token_id"), tok_cfg.get("pad_token"))
    if isinstance(pad, list):
      raise ValueError(f"{ckpt_dir}: pad_token_id={pad}: expected one id")
    self.pad_id: int = self.eos_id if pad is None else pad
    # The token strings templates use ({{ bos_token }}, ...), as transformers passes them.
    self._special_tokens = {f"{k}_token": tok_cfg[f"{k}_token"]
                            for k in ("bos", "eos", "pad", "unk")
                            if isinstance(tok_cfg.get(f"{k}_token"), str)}
    self.chat_template: str | None = _chat_template(ckpt_dir, tok_cfg)

  def _special(self, what: str, token_id: Any, token: Any) -> int | list[int] | None:
    """The id(s) config.json gives, else the id of tokenizer_config.json's token string."""
    if token_id is not None:
      ids = token_id if isinstance(token_id, list) else [token_id]
      if not ids or not all(type(i) is int and 0 <= i < self.vocab_size for i in ids):
        raise ValueError(f"config.json: {what}_token_id={token_id!r}: expected ids in "
                         f"[0, {self.vocab_size})")
      return token_id
    if isinstance(token, dict):  # {"content": "<s>", ...} in older tokenizer configs
      token = token.get("content")
    if token is None:
      return None
    token_id = self._tok.token_to_id(token)
    if token_id is None:
      raise ValueError(f"tokenizer_config.json: {what}_token={token!r} is not in tokenizer.json")
    return token_id

  @functools.cached_property
  def max_token_chars(self) -> int:
    """Characters of the longest token string: no token covers more characters of a text
    (byte-level tokens write one character per byte), so len(text) / this bounds its
    token count from below without tokenizing it (math_data.may_fit)."""
    return max(len(t) for t in self._tok.get_vocab(with_added_tokens=True))

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Token ids of `text`, no eos, and bos only if add_bos."""
    ids = self._tok.encode(text, add_special_tokens=False).ids
    if add_bos and self.bos_id is None:
      raise ValueError("encode(add_bos=True): the checkpoint names no bos token")
    return ([self.bos_id] if add_bos else []) + ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def apply_chat_template(self, messages: Sequence[dict[str, str]],
                          add_generation_prompt: bool = False) -> str:
    """The chat as text ({"role", "content"} messages); encode it to get its ids."""
    if self.chat_template is None:
      raise ValueError("apply_chat_template: the checkpoint has no chat template")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)

    def raise_exception(message):
      raise ValueError(f"chat template: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **self._special_tokens)


def _chat_template(ckpt_dir: str, tok_cfg: dict) -> str | None:
  """chat_template.jinja's text, else tokenizer_config.json's (a string, or the "default" of a
  list of {"name", "template"}); None if neither."""
  path = os.path.join(ckpt_dir, "chat_template.jinja")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  t = tok_cfg.get("chat_template")
  if isinstance(t, list):
    t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"),
             None)
  if t is not None and not isinstance(t, str):
    raise ValueError(f"{ckpt_dir}/tokenizer_config.json: chat_template must be a string")
  return t


def _read_json(path: str) -> dict:
  """A JSON object file's contents; {} if the file is absent."""
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
    raise ValueError(f"{path}: not JSON ({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return obj
