"""The one sharding module: device mesh, logical axis rules, sharded state and batches.

Mesh axes are ("data", "fsdp", "tensor"), all `AxisType.Auto` (the compiler propagates
shardings; we annotate parameters and batches). Parameters carry logical axis names in
their `logical_axes` metadata (see `valle_jax.models.layers.make_param`); `LOGICAL_RULES`
maps each name to mesh axes. A dimension whose size is not divisible by its mesh axes is
replicated instead (e.g. an odd vocabulary), which is always correct, only less sharded.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from valle_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axes (None: replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "kv": None,
    "vocab": None,
    "length": None,
    "codebooks": None,
    "layers": None,     # the transformer's stacked blocks (scanned over, never split)
}

BATCH_SPEC = P(("data", "fsdp"))  # leading (batch) dimension over data x fsdp


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh from a config with those three sizes (-1: the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_cfg[name]) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"{len(devices)} devices cannot be split into mesh "
                       f"{dict(zip(MESH_AXES, sizes))}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"but {len(devices)} are available; set --config.mesh.* to match.")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> P:
  """Logical axis names -> PartitionSpec via LOGICAL_RULES.

  With `shape` and `mesh`, a dimension not divisible by its mesh axes' total size is
  replicated.
  """
  spec = []
  for i, name in enumerate(logical_axes):
    if name is not None and name not in LOGICAL_RULES:
      raise KeyError(f"Unknown logical axis {name!r}; add it to sharding.LOGICAL_RULES.")
    axes = None if name is None else LOGICAL_RULES[name]
    if axes is not None and shape is not None and mesh is not None:
      names = (axes,) if isinstance(axes, str) else axes
      if shape[i] % math.prod(mesh.shape[a] for a in names):
        axes = None
    spec.append(axes)
  return P(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def state_specs(state: Any, mesh: Mesh | None = None) -> Any:
  """PartitionSpecs for an nnx.State (or any pytree of Variables / arrays).

  Variables without `logical_axes` metadata (and plain arrays) are replicated.
  """
  def spec(x):
    value = x.get_value() if _is_variable(x) else x
    axes = x.get_metadata().get("logical_axes") if _is_variable(x) else None
    if axes is None:
      return P()
    return logical_to_spec(axes, getattr(value, "shape", None), mesh)
  return jax.tree.map(spec, state, is_leaf=_is_variable)


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """NamedShardings for an nnx.State, from its parameters' logical axes."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state, mesh),
                      is_leaf=lambda x: isinstance(x, P))


def place_state(state: Any, mesh: Mesh) -> Any:
  """An nnx.State (e.g. a loaded model's) moved onto `mesh` in its logical axes' layout (a
  no-op for arrays already there)."""
  return jax.device_put(state, state_shardings(state, mesh))


def create_sharded_model(make_model: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
  """Builds a model directly into its sharded layout (no full copy on one device).

  The model is first traced abstractly to read its parameters' logical axes; the real
  initialisation then runs under `jax.jit` with those output shardings.
  """
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh)

  def init():
    return nnx.state(make_model())

  state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def batch_parallelism(mesh: Mesh) -> int:
  """How many ways `BATCH_SPEC` splits a batch (data x fsdp): a batch's size must be a
  multiple of it."""
  return math.prod(mesh.shape[axis] for axis in BATCH_SPEC[0])


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a batch (pytree of host arrays, leading dim = global batch) on the mesh.

  Single process: the arrays are the global batch. Multi-process: each process passes its
  own slice of the global batch (rows process_index * n .. ), as `data.py` produces it.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), batch)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def param_count(state: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state) if hasattr(x, "shape")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


__all__ = ["BATCH_SPEC", "LOGICAL_RULES", "MESH_AXES", "batch_parallelism", "batch_sharding",
           "create_sharded_model", "logical_to_spec", "make_mesh", "param_count", "place_state",
           "replicated", "shard_batch", "state_shardings", "state_specs"]
