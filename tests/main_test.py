"""main.py's command line: a bad value, an unwritable workdir or a full disk is one line
(`error: ...`, exit status 1, no traceback), and a config error writes nothing."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.data.num_train=8", "--config.data.num_test=4", "--config.data.num_shards=1",
        "--config.data.gen_workers=1", "--config.task.size=5", "--config.compilation_cache_dir="]
# Runs main.py with one fault injected: FAULT=readonly (the workdir's file system is
# read-only) or disk_full (every dataset shard is written to /dev/full: no space left).
RUNNER = """
import errno, os, runpy
fault, workdir = os.environ["FAULT"], os.environ["WORKDIR"]
if fault == "readonly":
  makedirs = os.makedirs
  def makedirs_ro(path, *a, **k):
    if os.path.abspath(path).startswith(workdir):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return makedirs(path, *a, **k)
  os.makedirs = makedirs_ro
if fault == "disk_full":
  os.makedirs(os.path.join(workdir, "data"))
  for split in ("train", "valid", "test"):
    name = f"{split}-00000-of-00001.arrayrecord.tmp"
    os.symlink("/dev/full", os.path.join(workdir, "data", name))
runpy.run_module("dualformer_jax.main", run_name="__main__", alter_sys=True)
"""
CASES = {  # name -> (config and flags, fault, a regex of the error line)
    "mesh": (["--config=configs/maze.py", "--config.mesh.fsdp=3", *TINY], None,
             r"error: config.mesh: fsdp\*tensor=3 does not divide the 2 devices"),
    "readonly": (["--config=configs/maze.py", *TINY], "readonly",
                 r"error: \[Errno 30\] Read-only file system: "),
    "disk_full": (["--config=configs/maze.py", "--mode=generate", *TINY], "disk_full",
                  r"error: cannot write dataset shard .*-00000-of-00001\.arrayrecord "
                  ".*No space left on device"),
    "math_cpu_devices": (["--config=configs/math.py", "--config.mesh.cpu_devices=0"], None,
                         "config.mesh.cpu_devices=0: must be >= 1"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """name -> (return code, stderr, workdir) of every case, the processes run side by side."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the config's own devices
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  procs = {}
  for name, (args, fault, _) in CASES.items():
    workdir = str(tmp_path_factory.mktemp(name) / "run")
    cmd = ([sys.executable, "-c", RUNNER] if fault else
           [sys.executable, "-m", "dualformer_jax.main"]) + [*args, f"--workdir={workdir}"]
    procs[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env={**env, "FAULT": fault or "", "WORKDIR": workdir}),
                   workdir)
  out = {}
  for name, (proc, workdir) in procs.items():
    _, err = proc.communicate(timeout=300)
    out[name] = (proc.returncode, err, workdir)
  return out


@pytest.mark.parametrize("name", CASES)
def test_an_error_is_one_line_and_a_nonzero_status(outcomes, name):
  code, err, _ = outcomes[name]
  assert code != 0 and "Traceback" not in err, err[-3000:]
  assert re.search(CASES[name][2], err), err[-3000:]


@pytest.mark.parametrize("name", ["mesh", "math_cpu_devices"])
def test_a_config_error_writes_nothing(outcomes, name):
  """Checked before the dataset is generated and before checkpoints/ is made (the model
  fields too: tests/train/trainer_test.py, test_preflight_names_a_bad_value)."""
  assert not os.path.exists(outcomes[name][2])
