"""Multi-host JAX: when to call jax.distributed.initialize, and small cross-process helpers.

`--distributed=auto` (main.py) initializes only when a multi-process launch is
visible, so a plain single-process run never waits for a coordinator:
  * explicit --coordinator_address, --num_processes, --process_id
    (launch/local_multiprocess.sh, or a launcher of your own);
  * a SLURM job step with more than one task (srun, launch/slurm_gpu.sbatch);
  * a Cloud TPU VM (TPU devices, or the TPU_WORKER_HOSTNAMES /
    MEGASCALE_COORDINATOR_ADDRESS variables of GKE and queued resources).
For SLURM and TPU, jax.distributed.initialize() runs without arguments and
finds the coordinator, process count and id itself (on a one-host TPU slice
that is one process). `--distributed=on` forces that call (e.g. Open MPI or
Kubernetes, which jax also detects); `off` never initializes.

After initialization jax.devices() spans every process, so the mesh of
model/sharding.py covers the whole slice unchanged. The helpers below are the
few places where processes must agree on host-side values: a barrier, and
gathering evaluation results. None runs per training step (the train stream
decides batch widths from the global batch). They are no-ops, without
communication, in a single process.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import pickle
from typing import Any, Mapping, Sequence

import numpy as np

MODES = ("auto", "on", "off")
# Variables the SLURM cluster detection of jax reads (jax/_src/clusters/slurm_cluster.py).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
# Set on multi-host TPU slices run by GKE or queued resources.
_TPU_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")


class DistributedError(RuntimeError):
  """A multi-process launch that is misconfigured or cannot connect."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """Arguments for jax.distributed.initialize; None fields are detected by jax."""
  source: str  # flags | slurm | tpu | forced
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def tpu_vm_present() -> bool:
  """TPU chips on this host: /dev/accel* (v2-v4) or vfio groups with libtpu installed (v5+)."""
  if glob.glob("/dev/accel[0-9]*"):
    return True
  return bool(glob.glob("/dev/vfio/[0-9]*")) and importlib.util.find_spec("libtpu") is not None


def detect(mode: str = "auto", coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None,
           environ: Mapping[str, str] | None = None,
           on_tpu_vm: bool | None = None) -> Launch | None:
  """The launch this process is part of, or None for a plain single-process run.

  Raises DistributedError when the explicit flags are incomplete or inconsistent.
  """
  if mode not in MODES:
    raise DistributedError(f"--distributed={mode!r}: expected one of {MODES}")
  coordinator_address = coordinator_address or None
  explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
              "--process_id": process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if mode == "off":
    if given:
      raise DistributedError(f"--distributed=off contradicts {sorted(given)}")
    return None
  if given:
    missing = sorted(set(explicit) - set(given))
    if missing:
      raise DistributedError(f"{sorted(given)} given without {missing}: a multi-process "
                             "launch needs all three flags")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(f"--process_id={process_id} --num_processes={num_processes}: "
                             "need 0 <= process_id < num_processes")
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
      raise DistributedError(f"--coordinator_address={coordinator_address!r}: expected "
                             "host:port, e.g. 10.0.0.2:8476 (the address of process 0)")
    return Launch("flags", coordinator_address, num_processes, process_id)
  if mode == "on":
    return Launch("forced")
  env = os.environ if environ is None else environ
  if all(k in env for k in _SLURM_VARS):
    try:
      tasks = int(env["SLURM_NTASKS"])
    except ValueError:
      raise DistributedError(f"SLURM_NTASKS={env['SLURM_NTASKS']!r} is not a number") from None
    if tasks > 1:
      return Launch("slurm")
  if any(env.get(k) for k in _TPU_VARS):
    return Launch("tpu")
  if on_tpu_vm if on_tpu_vm is not None else tpu_vm_present():
    return Launch("tpu")
  return None


def initialize(launch: Launch | None) -> None:
  """Connects this process to the others (blocks until all have joined); None: nothing."""
  if launch is None:
    return
  import jax
  kwargs = {}
  if launch.source == "flags":
    kwargs = dict(coordinator_address=launch.coordinator_address,
                  num_processes=launch.num_processes, process_id=launch.process_id)
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # jax raises RuntimeError / ValueError subclasses from C++
    raise DistributedError(
        f"jax.distributed.initialize failed for a {launch.source} launch "
        f"({type(e).__name__}: {e}). Check that every process got the same coordinator "
        "address and process count and that process 0 is reachable; "
        "--distributed=off runs a single process.") from None


def process_count() -> int:
  import jax
  return jax.process_count()


def allgather(values: Sequence[float], dtype: Any = np.int32) -> np.ndarray:
  """[process_count, k] of `dtype`: row p holds process p's `values` (all processes call this).

  int32 or float32: jax runs without x64.
  """
  local = np.asarray(values, dtype).reshape(1, -1)
  if process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(local[0])).reshape(process_count(), -1)


def allgather_objects(obj: Any) -> list[Any]:
  """[process 0's obj, process 1's, ...] on every process (pickled; keep it small)."""
  if process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = allgather([data.size])[:, 0]
  buf = np.zeros(int(sizes.max()), np.uint8)  # process_allgather needs equal shapes
  buf[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(buf))  # [P, max size]
  # The peers are processes of this same program: unpickling their bytes is safe.
  return [pickle.loads(gathered[p, :sizes[p]].tobytes()) for p in range(len(sizes))]


def barrier(name: str, timeout_s: float = 24 * 3600) -> None:
  """All processes wait here until every one has arrived (each name is used once).

  A barrier of the coordination service, not a device collective: on CPU, gloo
  gives up when a peer is more than 30 s late to its first collective, and a
  process may wait here much longer (e.g. while process 0 generates the data).
  """
  if process_count() > 1:
    import orbax.checkpoint as ocp
    client = ocp.multihost.get_jax_distributed_client()
    try:
      client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # XlaRuntimeError from the coordination service
      raise DistributedError(f"barrier {name!r}: not every process arrived within "
                             f"{timeout_s:.0f} s ({type(e).__name__}: {e})") from None


def check_batch_split(mesh: Any, batch_size: int) -> None:
  """Raises DistributedError unless this process's devices hold 1/process_count of the batch.

  Each process feeds its own rows (batch_size / process_count of them, from its
  share of the data). A mesh whose batch axes (data x fsdp) have fewer shards
  than there are processes would make processes share rows instead.
  """
  n = process_count()
  if n == 1:
    return
  import jax
  from dualformer_jax.model import sharding
  rows: set[int] = set()
  for device, index in sharding.batch_sharding(mesh).devices_indices_map((batch_size,)).items():
    if device.process_index == jax.process_index():
      rows.update(range(*index[0].indices(batch_size)))
  if len(rows) * n != batch_size:
    raise DistributedError(
        f"mesh {dict(mesh.shape)}: this process's devices hold {len(rows)} of the {batch_size} "
        f"batch rows, not 1/{n}: the batch axes data x fsdp must be split over the processes "
        "(put tensor parallelism within a host, e.g. config.mesh.tensor <= devices per host)")

