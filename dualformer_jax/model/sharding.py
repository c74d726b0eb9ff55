"""Device mesh from `config.mesh`, logical-axis sharding of params, batches and activations.

One mesh with axes (data, fsdp, tensor) covers 1 CPU device up to a pod. Params
name their axes logically (model/layers.py `param`); LOGICAL_RULES maps the
names to mesh axes. A dimension that a mesh axis does not divide (e.g. 3 heads
over tensor=2) stays replicated instead of failing, so every preset runs on
every mesh. Batches are split along their first axis over data x fsdp; inside
the models, `constrain_batch` keeps activations split the same way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """`config.mesh`, typed (field comments: config.mesh_group); its sizes are checked against
  the devices by mesh_shape, when a mesh is made."""
  data: int  # -1: all devices not used by the other axes
  fsdp: int
  tensor: int
  cpu_devices: int  # applied by config.configure_jax, not here

  def __post_init__(self):
    if self.cpu_devices < 1:
      raise ValueError(f"config.mesh.cpu_devices={self.cpu_devices!r}: must be >= 1 "
                       "(CPU devices of this host)")

  @classmethod
  def from_config(cls, mesh_cfg: Any) -> "MeshConfig":
    return cls(**{f.name: int(mesh_cfg[f.name]) for f in dataclasses.fields(cls)})


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; data=-1 takes all devices left by the others."""
  data, fsdp, tensor = int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)
  if fsdp < 1 or tensor < 1 or data == 0 or data < -1:
    raise ValueError(f"config.mesh=(data={data}, fsdp={fsdp}, tensor={tensor}): sizes must be "
                     ">= 1 (data may be -1 for the rest of the devices)")
  if data == -1:
    if num_devices % (fsdp * tensor):
      raise ValueError(f"config.mesh: fsdp*tensor={fsdp * tensor} does not divide the "
                       f"{num_devices} devices")
    data = num_devices // (fsdp * tensor)
  if data * fsdp * tensor != num_devices:
    raise ValueError(f"config.mesh=(data={data}, fsdp={fsdp}, tensor={tensor}) needs "
                     f"{data * fsdp * tensor} devices, but {num_devices} are given")
  return data, fsdp, tensor


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axes (GSPMD propagation) over `devices`.

  Devices of several TPU slices (multi-slice) get a hybrid mesh: `data` spans the
  slices (the slow data-centre network carries only the gradient all-reduce), fsdp
  and tensor stay inside a slice. An axis that is no product of a slice's physical
  torus axes (8 on a 4x4x4 v5p) splits them rather than failing.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto, not the Explicit default: Flax layers (embedding gathers) need propagation.
  axis_types = (AxisType.Auto,) * len(AXES)
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices > 1:
    if shape[0] % slices:
      raise ValueError(f"config.mesh: data={shape[0]} must be a multiple of the {slices} "
                       "slices (the data axis spans them)")
    grid = mesh_utils.create_hybrid_device_mesh(
        (shape[0] // slices, *shape[1:]), (slices, 1, 1), devices,
        allow_split_physical_axes=True)
    return Mesh(grid, AXES, axis_types=axis_types)
  try:
    return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:  # no physical-axis product fits a logical axis
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, AXES, axis_types=axis_types)


def _mesh_axes(rule: Any) -> tuple[str, ...]:
  if rule is None:
    return ()
  return (rule,) if isinstance(rule, str) else tuple(rule)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> P:
  """PartitionSpec for an array with logical axis `names`.

  A mesh axis that does not divide its dimension, or was already used by an
  earlier dimension, is dropped (that dimension stays replicated).
  """
  if len(names) != len(shape):
    raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no rule in {tuple(table)}")
    axes = [a for a in _mesh_axes(table.get(name)) if a not in used]
    if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
      used.update(axes)
      spec.append(axes[0] if len(axes) == 1 else tuple(axes))
    else:
      spec.append(None)
  return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES
                   ) -> Any:
  """NamedShardings for a pytree of (abstract) nnx Variables and arrays.

  Variables with `out_sharding` metadata (params, and the optimizer moments that
  copy them) follow their logical names; everything else (step counters) is
  replicated. The result has the tree's structure, as jit in/out_shardings need.
  """
  def one(x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("out_sharding")
      value = x.get_value()
      spec = logical_to_spec(names, value.shape, mesh, rules) if names else P()
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_of(make: Callable[[], Any], mesh: Mesh) -> Any:
  """ShapeDtypeStructs of `make()`'s pytree (params, a train state) with the mesh's shardings
  (tree_shardings): an orbax restore target or a jit out_shardings source; no arrays made."""
  abstract = jax.eval_shape(make)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, tree_shardings(abstract, mesh))


def target_platform() -> str:
  """"cpu", "gpu" or "tpu": the platform of the mesh in context, else of this host.

  Under `jax.set_mesh(mesh)` the abstract mesh names its devices' platform, so a
  program built for TPU chips on a CPU host picks the TPU kernels.
  """
  mesh = jax.sharding.get_abstract_mesh()
  platform = jax.default_backend() if mesh.empty else mesh.abstract_device.platform
  return "gpu" if platform in ("cuda", "rocm") else platform


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  """How many ways a batch is split: data * fsdp."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh, grad_accum: int = 1) -> None:
  """Raises ValueError unless every micro-batch splits evenly over data x fsdp."""
  n = batch_divisor(mesh)
  if grad_accum < 1 or batch_size % grad_accum:
    raise ValueError(f"batch size {batch_size} is not divisible by grad_accum={grad_accum}")
  micro = batch_size // grad_accum
  if micro % n:
    raise ValueError(f"micro-batch size {micro} (batch {batch_size} / grad_accum {grad_accum}) "
                     f"is not divisible by data*fsdp={n} of mesh {dict(mesh.shape)}")


def shard_batch(batch_np: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows (all rows when single-process).

  Each process passes its own slice of the global batch, in process order.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch_np.items()}


# ------------------------------------------------------------------ inside the models

def auto_axes(mesh: Any) -> set[str]:
  """Mesh axes that GSPMD still places (not Manual, as inside an outer shard_map)."""
  return {a for a, kind in zip(mesh.axis_names, mesh.axis_types) if kind == AxisType.Auto}


def batch_axes_dividing(rows: int, mesh: Any) -> tuple[str, ...]:
  """The batch axes GSPMD still places that split `rows` evenly: each, in order, that
  keeps the product of those taken dividing rows (for a shard_map over the rows)."""
  free, axes = auto_axes(mesh), []
  for axis in BATCH_AXES:
    if axis in free and rows % math.prod(mesh.shape[a] for a in (*axes, axis)) == 0:
      axes.append(axis)
  return tuple(axes)


def _mesh_places_batch() -> bool:
  """A mesh in context whose batch axes GSPMD places (not Manual, as inside shard_map)."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and set(BATCH_AXES) <= auto_axes(mesh)


def constrain_batch(x: jax.Array) -> jax.Array:
  """Pins an activation's batch axis to data x fsdp when traced under jax.set_mesh.

  Without it GSPMD may copy the fsdp sharding of the params' embed axis onto
  activations and then reshard them by full rematerialisation. No mesh in
  context (tests), a shard_map body (the sampler's per-device loops), or a
  batch the mesh does not divide: unchanged.
  """
  if not _mesh_places_batch():
    return x
  mesh = jax.sharding.get_abstract_mesh()
  if x.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]):
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *([None] * (x.ndim - 1))))


def replicate_table(w: jax.Array) -> jax.Array:
  """Gathers a sharded table before a row lookup (GSPMD's sharded gather reshards badly)."""
  if not _mesh_places_batch():
    return w
  return jax.lax.with_sharding_constraint(w, P())
