"""The checkpoint error family, with no heavy imports: the Hugging Face loader
(lm/hf_checkpoint.py) raises it without loading orbax or grain, and our own
checkpoints (train/checkpoint.py) raise the same classes."""


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used by this run: ours (orbax) or a Hugging Face one."""


class CorruptCheckpoint(CheckpointError):
  """One step cannot be used (unreadable, checksum mismatch, NaN/Inf); an earlier one may."""
