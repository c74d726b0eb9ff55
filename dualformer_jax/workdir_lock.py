"""One writer per workdir: an flock on `<workdir>/run.lock`, held for a training or generation.

Two trainings on one workdir would interleave their metrics and checkpoints;
the second one is refused with a line that names the holder. The kernel drops
the lock when its process dies (even by kill -9), so a stale file never blocks.
Stdlib only: cheap to import anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time

LOCK_NAME = "run.lock"


class WorkdirBusy(RuntimeError):
  """Another process holds the workdir's lock."""


@contextlib.contextmanager
def hold(workdir: str, what: str = "run"):
  """Holds the workdir's lock for the `with` body; WorkdirBusy when another process has it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
        # Some network file systems (gcsfuse) have no locks: run unguarded, but say so.
        print(f"warning: cannot lock {path} ({e.strerror}); make sure no other run uses "
              "this workdir", file=sys.stderr)
        yield
        return
      holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "an unknown process"
      raise WorkdirBusy(f"workdir {workdir} is in use by {holder}; wait for it to finish, "
                        "stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} ({what}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n").encode(), 0)
    yield
  finally:
    os.close(fd)  # closing releases the flock
