"""data/records.py: shard writes are atomic, and a failed one is an OSError naming the shard."""

import os

import pytest

from dualformer_jax.data import records


def test_a_shard_round_trips(tmp_path):
  path = str(tmp_path / records.shard_name("test", 0, 1))
  assert records.write_shard(path, [b"a", b"bc"]) == 2
  source = records.read_shards([path])
  assert [source[i] for i in range(len(source))] == [b"a", b"bc"]
  assert os.listdir(tmp_path) == [os.path.basename(path)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_an_oserror_naming_the_shard_and_leaves_nothing(tmp_path):
  """array_record says RuntimeError; the run's one-line handler (main.py) takes OSError."""
  path = str(tmp_path / records.shard_name("train", 0, 1))
  os.symlink("/dev/full", path + ".tmp")  # every write there fails with ENOSPC
  with pytest.raises(OSError, match=f"cannot write dataset shard {path} .*No space left"):
    records.write_shard(path, [b"x" * 1000] * 100)
  assert os.listdir(tmp_path) == []
