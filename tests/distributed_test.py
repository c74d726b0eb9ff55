"""Multi-host code paths: launch detection, the launch scripts, and a real 2-process run.

The 2-process test runs the normal entry point through launch/local_multiprocess.sh
(2 processes x 2 CPU devices) and compares it with one process holding 4 CPU
devices on the same data: same per-step losses, same evaluation table, no host
collective while training, and the 2-process checkpoint restores in one process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import maze as maze_configs
from dualformer_jax import config as config_lib
from dualformer_jax import distributed
from dualformer_jax.data import dataset, train_stream
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.train import step as step_lib

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"

# The tiny run of both setups. Every process reads the global stream and keeps its
# rows of each global batch, so one process and two see the same batches (at any
# bucket_pool; 1 keeps the run small).
OVERRIDES = {
    "task.size": 5, "data.num_train": 64, "data.num_test": 8, "data.num_shards": 2,
    "data.gen_workers": 1, "data.bucket_pool": 1, "data.num_buckets": 2,
    "data.max_prompt_len": 64, "data.max_decoder_len": 320,  # no 5x5 maze is longer
    # data=2 over the processes, tensor=2 within each: params are sharded, and every
    # batch row sits on two devices (evaluation must count each prompt once).
    "mesh.data": 2, "mesh.tensor": 2,
    # float32 throughout, so the losses compare at LOSS_RTOL (the default trains in bfloat16).
    "model.dtype": "float32", "eval.dtype": "",
    "train.batch_size": 8, "train.num_steps": 4, "train.warmup_steps": 1, "train.log_every": 1,
    "train.eval_every": 4, "train.eval_batches": 1, "train.checkpoint_every": 4,
    "eval.num_samples": 2, "eval.num_tasks": 8, "eval.prompts_per_batch": 4,
    "eval.max_decode_len": 64, "eval.num_pictures": 1, "compilation_cache_dir": "",
}
NUM_STEPS = OVERRIDES["train.num_steps"]
# float32 sums in another order (rows sit on other devices): observed ~1e-7 relative.
LOSS_RTOL = 1e-5


def flags(**more) -> list[str]:
  return (["--config=configs/maze.py"]
          + [f"--config.{k}={v}" for k, v in {**OVERRIDES, **more}.items()])


def config():
  c = maze_configs.get_config("default")
  c.update_from_flattened_dict(OVERRIDES)
  return c


# Read by the launch scripts: a test sets what it needs, the caller's values never leak in.
SCRIPT_VARIABLES = ("TPU_NAME", "ZONE", "WORKDIR", "ACCELERATOR_TYPE", "PROJECT", "SPOT",
                    "REPO_URL", "REPO_REF", "REMOTE_DIR", "MOUNT_ROOT", "GCSFUSE_FLAGS", "STEPS",
                    "DRY_RUN", "PER", "GPUS_PER_NODE", "REPO_DIR", "VENV", "PYTHON", "SRUN_FLAGS",
                    "CPU_DEVICES", "PORT", "LOG_DIR", "KILL_AFTER", "XLA_FLAGS")


def env(**extra) -> dict:
  e = {k: v for k, v in os.environ.items()
       if k not in SCRIPT_VARIABLES and not k.startswith(("SLURM_", "TPU_"))}
  return {**e, "JAX_PLATFORMS": "cpu", **extra}


def run(cmd: list[str], **env_extra) -> str:
  """Runs cmd from the repository root; fails the test with its output if it fails."""
  p = subprocess.run(cmd, cwd=REPO, env=env(**env_extra), capture_output=True, text=True)
  if p.returncode:
    pytest.fail(f"{cmd[:4]} exited with {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
  return p.stdout + p.stderr


def main_cmd(*args: str) -> list[str]:
  return [sys.executable, "-m", "dualformer_jax.main", *args]


def losses(workdir: Path) -> dict:
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  return {(("eval_" if "eval_loss" in r else "") + str(r["step"])):
          r.get("loss", r.get("eval_loss")) for r in rows}


def restored_params(workdir: Path, step: int) -> list[np.ndarray]:
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  vocab = json.load(open(workdir / "data" / "meta.json"))["vocab"]
  run = config_lib.validate(config())
  assert run.model.vocab_size == len(vocab)
  abstract = step_lib.abstract_train_state(run.model, run.train, mesh, 0)
  with ocp.CheckpointManager(workdir / "checkpoints") as m:
    state = m.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
  return jax.tree.leaves(jax.device_get(state.params))


# Runs dualformer_jax.main counting the calls of distributed.allgather (this code's host
# collective; allgather_objects uses it too), those made inside trainer.train apart;
# writes $COUNT_DIR/gathers_<process>.json at exit. (Orbax's own syncs at checkpoint
# saves are not counted: they come once per save, not per step.)
COUNTING_MAIN = """
import atexit, json, os, runpy, sys
import jax
from dualformer_jax import distributed
from dualformer_jax.train import trainer

calls, training = {"all": 0, "in_train": 0}, [False]
gather, train = distributed.allgather, trainer.train

def counting_gather(*args, **kwargs):
  calls["all"] += 1
  calls["in_train"] += training[0]
  return gather(*args, **kwargs)

def counting_train(*args, **kwargs):
  training[0] = True
  try:
    return train(*args, **kwargs)
  finally:
    training[0] = False

def write():
  path = os.path.join(os.environ["COUNT_DIR"], f"gathers_{jax.process_index()}.json")
  with open(path, "w") as f:
    json.dump(calls, f)

distributed.allgather, trainer.train = counting_gather, counting_train
atexit.register(write)
runpy.run_module("dualformer_jax.main", run_name="__main__", alter_sys=True)
"""


def counting_python(tmp_path: Path) -> str:
  """A PYTHON for local_multiprocess.sh: `-m dualformer_jax.main` runs COUNTING_MAIN."""
  (tmp_path / "counting_main.py").write_text(COUNTING_MAIN)
  wrapper = tmp_path / "python"
  wrapper.write_text(
      "#!/bin/sh\n"
      "if [ \"$1\" = -m ] && [ \"$2\" = dualformer_jax.main ]; then shift 2; "
      f"exec {sys.executable} {tmp_path / 'counting_main.py'} \"$@\"; fi\n"
      f"exec {sys.executable} \"$@\"\n")  # this interpreter, even from an unactivated venv
  wrapper.chmod(0o755)
  return str(wrapper)


def test_two_processes_train_and_evaluate_like_one(tmp_path):
  base, one, two = tmp_path / "base", tmp_path / "one", tmp_path / "two"
  run(main_cmd(*flags(), f"--workdir={base}", "--mode=generate"))
  for w in (one, two):
    shutil.copytree(base / "data", w / "data")

  # The premise: each process's rows of a step are its share of the batch one process
  # reads, at that batch's widths, so the processes agree on shapes without asking.
  c, ds = DataConfig.from_config(config()), dataset.open_dataset(str(base / "data"))
  single = train_stream.train_iterator(c, ds, 8, 0, 1)
  halves = [train_stream.train_iterator(c, ds, 4, p, 2) for p in range(2)]
  for _ in range(NUM_STEPS):
    whole, parts = next(single), [next(h) for h in halves]
    for k in whole:
      np.testing.assert_array_equal(np.concatenate([b[k] for b in parts]), whole[k])
  assert single.stats == halves[0].stats == halves[1].stats

  # One process with 4 devices, next to two processes with 2 devices each.
  reference = subprocess.Popen(main_cmd(*flags(), f"--workdir={one}", "--mode=train"), cwd=REPO,
                               env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    out = run(["bash", str(LAUNCH / "local_multiprocess.sh"), "2", *flags(), f"--workdir={two}",
               "--mode=all"], CPU_DEVICES="2", LOG_DIR=str(tmp_path / "logs"),  # a free port
              PYTHON=counting_python(tmp_path), COUNT_DIR=str(tmp_path))
  finally:
    ref_out, _ = reference.communicate()
  assert reference.returncode == 0, ref_out[-4000:]
  assert "evaluation at step 4" in out
  # No per-step collective: training itself gathers nothing across processes (the
  # evaluation afterwards does, to collect verdicts, so the counter is live).
  counts = [json.load(open(tmp_path / f"gathers_{p}.json")) for p in range(2)]
  assert [x["in_train"] for x in counts] == [0, 0], counts
  assert all(x["all"] > 0 for x in counts), counts

  a, b = losses(one), losses(two)
  assert sorted(a) == sorted(b) == sorted([str(s) for s in range(1, NUM_STEPS + 1)] + ["eval_4"])
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=LOSS_RTOL, err_msg=f"loss at step {k}")
  meta = json.load(open(two / "checkpoints" / "4" / "meta" / "metadata"))
  assert meta["process_count"] == 2
  assert sorted(os.listdir(two / "checkpoints" / "4" / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  table_two = json.load(open(two / "eval" / "4" / "results.json"))

  # One process takes over the 2-process run: it resumes training from checkpoint 4
  # (the per-process data streams cannot carry over) and evaluates checkpoint 4 again.
  out = run(main_cmd(*flags(**{"train.num_steps": 5, "eval.checkpoint_step": 4}),
                     f"--workdir={two}", "--mode=all"),
            XLA_FLAGS="--xla_force_host_platform_device_count=4")
  assert "checkpoint 4 was written by 2 processes, this run has 1" in out
  assert json.load(open(two / "eval" / "4" / "results.json")) == table_two
  assert np.isfinite(losses(two)["5"])

  # Adam divides by sqrt(v): elements with near-zero gradients turn reduction-order noise
  # (gloo across processes vs one process) into ~1e-5 differences, as in step_test.
  for x, y in zip(restored_params(one, 4), restored_params(two, 4)):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- detection

SLURM_2 = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("environ,on_tpu,source", [
    ({}, False, None),  # a plain run never initializes
    ({**SLURM_2, "SLURM_NTASKS": "1"}, False, None),  # srun -n1, salloc shells
    (SLURM_2, False, "slurm"),
    ({"TPU_WORKER_HOSTNAMES": "h0,h1"}, False, "tpu"),
    ({}, True, "tpu"),
])
def test_detect_from_environment(environ, on_tpu, source):
  launch = distributed.detect("auto", environ=environ, on_tpu_vm=on_tpu)
  assert (launch and launch.source) == source
  if launch:  # jax finds coordinator, count and id itself
    assert launch.coordinator_address is launch.num_processes is launch.process_id is None
  assert distributed.detect("off", environ=environ, on_tpu_vm=on_tpu) is None


def test_detect_explicit_flags():
  launch = distributed.detect("auto", "127.0.0.1:1234", 2, 1, environ=SLURM_2, on_tpu_vm=True)
  assert launch == distributed.Launch("flags", "127.0.0.1:1234", 2, 1)
  assert distributed.detect("on", environ={}, on_tpu_vm=False).source == "forced"
  for args, match in [(("127.0.0.1:1234", 2, None), r"without \['--process_id'\]"),
                      ((None, 2, 0), "--coordinator_address"),
                      (("127.0.0.1:1234", 2, 2), "0 <= process_id < num_processes"),
                      (("127.0.0.1", 2, 0), "host:port")]:
    with pytest.raises(distributed.DistributedError, match=match):
      distributed.detect("auto", *args, environ={}, on_tpu_vm=False)
  with pytest.raises(distributed.DistributedError, match="contradicts"):
    distributed.detect("off", "127.0.0.1:1234", 2, 0, environ={}, on_tpu_vm=False)


def test_single_process_helpers_do_not_communicate():
  assert distributed.allgather([3, 4]).tolist() == [[3, 4]]
  assert distributed.allgather_objects({"a": (1, 2)}) == [{"a": (1, 2)}]


@pytest.mark.parametrize("args,message", [
    (["--num_processes=2"], "without ['--coordinator_address', '--process_id']"),
    (["--workdir=gs://bucket/run"], "URLs are not supported"),
])
def test_main_rejects_bad_launch_flags(tmp_path, args, message):
  cmd = main_cmd("--config=configs/maze.py", f"--workdir={tmp_path}", *args)
  p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
  assert p.returncode != 0 and message in p.stderr, p.stderr[-2000:]


# ----------------------------------------------------------------------------- launchers

def test_local_launcher_stops_everyone_when_one_process_fails(tmp_path):
  """Process 1 fails at once; process 0 hangs ignoring SIGTERM, like one blocked in a
  collective whose peer died: the launcher kills it and exits with process 1's status."""
  fake = tmp_path / "fake_python"
  fake.write_text("#!/bin/sh\n"
                  "case \"$*\" in *--process_id=1*) echo 'process 1 gives up' >&2; exit 3;; esac\n"
                  "trap '' TERM\nexec sleep 300\n")
  fake.chmod(0o755)
  p = subprocess.run(["bash", str(LAUNCH / "local_multiprocess.sh"), "2", "--flag"], cwd=tmp_path,
                     env=env(PYTHON=str(fake), PORT="1", KILL_AFTER="1",
                             LOG_DIR=str(tmp_path / "logs")),
                     capture_output=True, text=True, timeout=60)
  assert p.returncode == 3, p.stderr
  assert "process 1 exited with status 3" in p.stderr
  assert "process 1 gives up" in p.stderr  # the failed process's log tail


def test_local_launcher_usage_errors():
  script = ["bash", str(LAUNCH / "local_multiprocess.sh")]
  assert "NUM_PROCESSES" in subprocess.run([*script, "--help"], capture_output=True,
                                           text=True, check=True).stdout
  for args, message in [([], "NUM_PROCESSES is missing"), (["two"], "positive integer")]:
    p = subprocess.run([*script, *args], capture_output=True, text=True)
    assert p.returncode == 2 and message in p.stderr


def test_tpu_pod_dry_run_prints_every_step():
  cmd = ["bash", str(LAUNCH / "tpu_pod.sh"), "--dry-run", "--config=configs/maze.py:paper_30"]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env(
      TPU_NAME="df", ZONE="us-central2-b", ACCELERATOR_TYPE="v4-32", WORKDIR="gs://bkt/maze30"))
  assert p.returncode == 0, p.stderr
  lines = p.stdout.splitlines()
  assert lines[0].startswith("+ gcloud compute tpus tpu-vm describe df --zone=us-central2-b")
  assert ("+ gcloud compute tpus tpu-vm create df --zone=us-central2-b --accelerator-type=v4-32"
          in p.stdout)
  assert "gcsfuse --implicit-dirs" in p.stdout and "bkt /gcs/bkt" in p.stdout
  generate, train = lines[-2], lines[-1]
  assert "--worker=0" in generate and "--mode=generate --distributed=off" in generate
  assert "--worker=all" in train and train.endswith(
      "python3 -m dualformer_jax.main --config=configs/maze.py:paper_30 "
      "--workdir=/gcs/bkt/maze30 --distributed=on'")


@pytest.mark.parametrize("variables,message", [
    ({"ZONE": "z", "WORKDIR": "gs://b/r"}, "TPU_NAME is not set"),
    ({"TPU_NAME": "t", "ZONE": "z", "WORKDIR": "/local/dir"}, "is not gs://BUCKET/PATH"),
    ({"TPU_NAME": "t", "ZONE": "z", "WORKDIR": "gs://b"}, "give a path inside the bucket"),
])
def test_tpu_pod_fails_early_on_missing_variables(variables, message):
  cmd = ["bash", str(LAUNCH / "tpu_pod.sh"), "--dry-run", "--config=configs/maze.py"]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env(**variables))
  assert p.returncode == 2 and message in p.stderr, p.stderr


def test_slurm_dry_run_and_missing_workdir():
  script = ["bash", str(LAUNCH / "slurm_gpu.sbatch")]
  p = subprocess.run([*script, "--dry-run", "--config=configs/maze.py"], capture_output=True,
                     text=True, env=env(WORKDIR="/shared/run", PER="node", GPUS_PER_NODE="4"))
  assert p.returncode == 0, p.stderr
  assert p.stdout.splitlines() == [
      "+ export JAX_LOCAL_DEVICE_IDS=0,1,2,3",
      "+ srun --nodes=1 --ntasks=1 --export=ALL,JAX_PLATFORMS=cpu python -m dualformer_jax.main "
      "--config=configs/maze.py --workdir=/shared/run --mode=generate --distributed=off",
      "+ srun --kill-on-bad-exit=1 python -m dualformer_jax.main --config=configs/maze.py "
      "--workdir=/shared/run --distributed=on"]
  p = subprocess.run([*script, "--dry-run", "--config=configs/maze.py"], capture_output=True,
                     text=True, env=env())
  assert p.returncode == 2 and "WORKDIR is not set" in p.stderr
