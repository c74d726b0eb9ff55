"""SIGTERM/SIGINT as a flag the training loop (train/loop.py) reads between steps."""

from __future__ import annotations

import contextlib
import signal

from tqdm import tqdm


class StopFlag:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps.

  A signal inside a step would leave the donated state half-consumed; the
  loop instead saves a checkpoint after the step and stops.
  """

  def __init__(self):
    self.signum = 0

  @contextlib.contextmanager
  def installed(self):
    handlers = {}

    def handle(signum, frame):
      if self.signum:  # a second signal: stop at once
        raise KeyboardInterrupt
      self.signum = signum
      tqdm.write(f"signal {signum}: saving a checkpoint, then stopping")

    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        handlers[sig] = signal.signal(sig, handle)
      except ValueError:  # not the main thread (e.g. some notebooks): no handler
        pass
    try:
      yield self
    finally:
      for sig, h in handlers.items():
        signal.signal(sig, h)
