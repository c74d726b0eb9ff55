"""Atomic file writes: a reader (or a later run) sees the old file or the new one, never half.

A file written in place and cut short (disk full, kill -9) breaks every later
run that reads it; writing a temporary file beside it and renaming it over the
old one (os.replace is atomic on POSIX) makes that impossible.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file in the same directory and a rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any, **dump_kwargs) -> None:
  """json.dump(obj) to `path`, atomically (see write_text)."""
  write_text(path, json.dumps(obj, **dump_kwargs))


def read_json(path: str, what: str = "file") -> Any:
  """json.load of `path`; ValueError names the file when it is empty or not JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{what} {path} is unreadable ({e}); it may be truncated: "
                     "delete it to have it rebuilt") from None
