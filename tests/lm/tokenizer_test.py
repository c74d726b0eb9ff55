"""lm/tokenizer.py over a tiny tokenizer.json built with the `tokenizers` package itself."""

import json

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from dualformer_jax.lm import math_data as md
from dualformer_jax.lm.tokenizer import Tokenizer

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "<|eot|>", "x", "=", "+", "1", "2", "3", "so",
         "answer", "is", "Problem", ":", "Solution"]


def _write(tmp_path, config=None, tok_config=None, post_bos=True):
  """A checkpoint directory with a WordLevel tokenizer.json (whitespace/punctuation split).

  post_bos: the tokenizer's post-processor prepends <s>, as Llama's does; `encode`
  must not use it.
  """
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)},
                                              unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(["<s>", "</s>", "<pad>", "<|eot|>"])
  if post_bos:
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
        ("<s>", 1)])
  tok.save(str(tmp_path / "tokenizer.json"))
  for name, obj in (("config.json", config), ("tokenizer_config.json", tok_config)):
    if obj is not None:
      (tmp_path / name).write_text(json.dumps(obj))
  return str(tmp_path)


def test_ids_from_config_json(tmp_path):
  """config.json wins over tokenizer_config.json; a list of eos ids keeps all, first is eos_id."""
  tok = Tokenizer(_write(tmp_path, {"bos_token_id": 1, "eos_token_id": [4, 2],
                                    "pad_token_id": 3},
                         {"bos_token": "</s>", "eos_token": "<s>", "pad_token": "<s>"}))
  assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.pad_id) == (1, 4, (4, 2), 3)
  assert tok.vocab_size == len(WORDS)


def test_ids_from_tokenizer_config_strings(tmp_path):
  """Token strings, plain and in the {"content": ...} form; no pad anywhere: pad = eos."""
  tok = Tokenizer(_write(tmp_path, {"model_type": "llama"},
                         {"bos_token": {"content": "<s>", "lstrip": False},
                          "eos_token": "<|eot|>"}))
  assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.pad_id) == (1, 4, (4,), 4)
  tok = Tokenizer(_write(tmp_path, {"eos_token_id": 2}, {"pad_token": {"content": "<pad>"}}))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, 2, 3)


def test_bad_special_tokens(tmp_path):
  with pytest.raises(ValueError, match="no eos token"):
    Tokenizer(_write(tmp_path, {"bos_token_id": 1}))
  with pytest.raises(ValueError, match="eos_token='<end>' is not in tokenizer.json"):
    Tokenizer(_write(tmp_path, None, {"eos_token": "<end>"}))
  with pytest.raises(ValueError, match=r"eos_token_id=99: expected ids in \[0, 17\)"):
    Tokenizer(_write(tmp_path, {"eos_token_id": 99}))
  with pytest.raises(ValueError, match="bos_token_id=\\[1, 2\\]: expected one id"):
    Tokenizer(_write(tmp_path, {"bos_token_id": [1, 2], "eos_token_id": 2}))
  (tmp_path / "config.json").write_text("{nope")
  with pytest.raises(ValueError, match="config.json: not JSON"):
    Tokenizer(str(tmp_path))


def test_encode_decode_round_trip(tmp_path):
  tok = Tokenizer(_write(tmp_path, {"bos_token_id": 1, "eos_token_id": 2}))
  ids = tok.encode("x = 1 + 2 so answer is 3")
  assert ids == [5, 6, 8, 7, 9, 11, 12, 13, 10]  # no bos, though the post-processor adds one
  assert tok.encode("x = 1", add_bos=True) == [1, 5, 6, 8]
  assert tok.decode(ids) == "x = 1 + 2 so answer is 3"
  assert tok.decode([1, *ids, 2]) == "x = 1 + 2 so answer is 3"  # specials skipped
  assert tok.decode([1, 5, 2], skip_special=False) == "<s> x </s>"
  assert tok.encode("x y") == [5, 0]  # unknown word -> <unk>


def test_math_prompt_gets_exactly_one_bos(tmp_path):
  """math_data adds bos itself and encodes the text with the protocol's encode(text)."""
  tok = Tokenizer(_write(tmp_path, {"bos_token_id": 1, "eos_token_id": 2}))
  prompt = list(md.prompt_ids(tok, "1 + 2"))
  assert prompt == [1, 14, 15, 8, 7, 9, 16, 15]  # <s> Problem : 1 + 2 Solution :


def test_missing_tokenizer_json(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
  with pytest.raises(ValueError, match="tokenizer.json: no such file"):
    Tokenizer(str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"model": {"type": "Nope"}}',
                                     b"\xff\xfe"])
def test_a_garbage_tokenizer_json_is_one_line_naming_it(tmp_path, content):
  (tmp_path / "tokenizer.json").write_bytes(content)
  with pytest.raises(ValueError, match=f"{tmp_path}/tokenizer.json: not a tokenizer.json"):
    Tokenizer(str(tmp_path))


def test_max_token_chars_bounds_the_token_count(tmp_path):
  tok = Tokenizer(_write(tmp_path, {"eos_token_id": 2}))
  assert tok.max_token_chars == max(len(w) for w in WORDS)
  text = "Problem : 1 + 2 = 3 so answer is 3 Solution"
  assert len(tok.encode(text)) >= len(text) / tok.max_token_chars


def test_chat_template_sources_and_rendering(tmp_path):
  """chat_template.jinja wins over tokenizer_config.json's (string or named list); the
  template sees the special tokens and renders with trim_blocks / lstrip_blocks."""
  chat = [{"role": "user", "content": "1 + 2"}, {"role": "assistant", "content": "3"}]
  template = ("{{ bos_token }}{% for m in messages %}\n{{ m['role'] }}: {{ m['content'] }}"
              "{{ eos_token }}\n  {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
  tok_cfg = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}
  tok = Tokenizer(_write(tmp_path, {"eos_token_id": 2}, tok_cfg))
  assert tok.apply_chat_template(chat) == "<s>user: 1 + 2</s>\nassistant: 3</s>\n"
  assert tok.apply_chat_template(chat[:1], add_generation_prompt=True) == (
      "<s>user: 1 + 2</s>\nassistant:")
  tok_cfg["chat_template"] = [{"name": "tool_use", "template": "T"},
                              {"name": "default", "template": "D{{ messages | length }}"}]
  assert Tokenizer(_write(tmp_path, {"eos_token_id": 2}, tok_cfg)).apply_chat_template(chat) == "D2"
  (tmp_path / "chat_template.jinja").write_text("J{{ messages[0]['content'] }}")
  assert Tokenizer(str(tmp_path)).apply_chat_template(chat) == "J1 + 2"
  (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('no system role') }}")
  with pytest.raises(ValueError, match="chat template: no system role"):
    Tokenizer(str(tmp_path)).apply_chat_template(chat)
  # Sandboxed: a template cannot reach Python internals.
  (tmp_path / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
  with pytest.raises(Exception, match="unsafe|access"):
    Tokenizer(str(tmp_path)).apply_chat_template(chat)


def test_no_chat_template(tmp_path):
  tok = Tokenizer(_write(tmp_path, {"eos_token_id": 2}))
  assert tok.chat_template is None
  with pytest.raises(ValueError, match="has no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "x"}])
  with pytest.raises(ValueError, match="chat_template must be a string"):
    Tokenizer(_write(tmp_path, {"eos_token_id": 2}, {"chat_template": 3}))
