"""One writer per workdir: an flock on `<workdir>/run.lock`, held for a training or generation.

Two trainings on one workdir would interleave their metrics and checkpoints;
the second one is refused with a line that names the holder (checked against
the kernel's lock list, so a stale note is not reported as the holder). The
kernel drops the lock when its process dies (even by kill -9), so a stale file
never blocks.
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


def _holder(fd: int, path: str) -> str:
  """Who holds the lock: the note its taker wrote, checked against the kernel's list.

  The note can be stale: a process that took the lock by other means (flock(1))
  writes none, and a child that inherited the run's descriptor keeps the lock
  after the run that wrote the note died. Linux's /proc/locks names the process
  that took the lock; when that one has exited, the processes that still have
  the file open hold it. Those are reported when the note names another.
  """
  note = os.pread(fd, 512, 0).decode(errors="replace").strip()
  pids = _lock_pids(os.fstat(fd))
  if not pids:  # no /proc/locks (not Linux), or another host holds it (NFS)
    return note or "an unknown process"
  words = note.split()
  noted = int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else None
  alive = {p for p in pids if os.path.exists(f"/proc/{p}")}
  if noted in alive and socket.gethostname() in note:
    return note
  holders = alive or _openers(path)
  if not holders:
    return note or "an unknown process"
  held = ", ".join(f"pid {p}{_command(p)}" for p in sorted(holders))
  if not alive:
    held += f" (inherited from pid {', '.join(map(str, sorted(pids)))}, which has exited)"
  if note:
    held += f"; the lock file's note, '{note}', is stale"
  return held


def _lock_pids(st: os.stat_result) -> set[int]:
  """Pids /proc/locks lists for the lock file of `st` (empty when unknown)."""
  want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
  try:
    with open("/proc/locks") as f:
      lines = f.read().splitlines()
  except OSError:
    return set()
  pids = set()
  for line in lines:
    parts = line.split()
    # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks a waiter: 7 fields on)
    if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want and parts[4].isdigit():
      pids.add(int(parts[4]))
  pids.discard(os.getpid())
  return pids


def _openers(path: str) -> set[int]:
  """Other processes (of this user) with `path` open."""
  real, out = os.path.realpath(path), set()
  for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
      continue
    try:
      fds = os.listdir(f"/proc/{pid}/fd")
      if any(os.readlink(f"/proc/{pid}/fd/{fd}") == real for fd in fds):
        out.add(int(pid))
    except OSError:
      continue
  return out


def _command(pid: int) -> str:
  """' (its command line)', or '' when it cannot be read."""
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
  except OSError:
    return ""
  return f" ({cmd[:120]})" if cmd else ""


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
      raise WorkdirBusy(f"workdir {workdir} is in use by {_holder(fd, path)}; wait for it to "
                        "finish, stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} ({what}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n").encode(), 0)
    yield
  finally:
    os.close(fd)  # closing releases the flock
