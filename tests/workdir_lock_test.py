"""workdir_lock: one writer per workdir, and a busy workdir names the process that holds it."""

import os
import subprocess
import sys

import pytest

from dualformer_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _holding(script: str, lock_dir, *args) -> subprocess.Popen:
  """A python process running `script` that prints 'held' once it has the lock."""
  proc = subprocess.Popen([sys.executable, "-c", script, str(lock_dir), *args],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_writer_is_refused_with_the_holders_note(tmp_path):
  proc = _holding("import sys, time\nfrom dualformer_jax import workdir_lock\n"
                  "with workdir_lock.hold(sys.argv[1], 'generation'):\n"
                  "  print('held', flush=True); time.sleep(60)", tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"in use by pid {proc.pid} on .* "
                       r"\(generation, since"):
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    proc.kill()
    proc.wait()
  with workdir_lock.hold(str(tmp_path)):  # the kernel dropped the lock with its process
    pass


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
def test_a_stale_note_is_not_reported_as_the_holder(tmp_path):
  """The lock file still says which run last held it; another process (flock(1), a tool)
  holds the lock now: that process is named, and the note called stale."""
  path = tmp_path / workdir_lock.LOCK_NAME
  path.write_text("pid 999999 on somewhere (training, since 2020-01-01 00:00:00)\n")
  proc = _holding("import fcntl, os, sys, time\n"
                  "fd = os.open(os.path.join(sys.argv[1], 'run.lock'), os.O_RDWR)\n"
                  "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True); time.sleep(60)",
                  tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirBusy) as e:
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    proc.kill()
    proc.wait()
  assert f"in use by pid {proc.pid} (" in str(e.value)
  assert "'pid 999999 on somewhere (training, since 2020-01-01 00:00:00)', is stale" in \
      str(e.value)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
def test_a_lock_inherited_by_a_child_names_the_child(tmp_path):
  """A run forks a child that inherits its lock, then dies: the child holds the workdir,
  not the run the note names."""
  proc = _holding("import os, sys, time\nfrom dualformer_jax import workdir_lock\n"
                  "with workdir_lock.hold(sys.argv[1], 'training'):\n"
                  "  child = os.fork()\n"
                  "  if child == 0:\n"
                  "    time.sleep(60); os._exit(0)\n"
                  "  print('held', flush=True); print(child, flush=True)\n"
                  "  os._exit(0)", tmp_path)
  child = int(proc.stdout.readline())
  proc.wait()
  try:
    with pytest.raises(workdir_lock.WorkdirBusy) as e:
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    os.kill(child, 9)
  assert f"in use by pid {child} (" in str(e.value)
  assert f"inherited from pid {proc.pid}, which has exited" in str(e.value)
  assert f"'pid {proc.pid} on" in str(e.value) and "is stale" in str(e.value)
