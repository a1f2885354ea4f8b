"""Meshes and the one rules table that maps logical axis names onto mesh axes.

Mesh axes: data (pure data parallel), fsdp (data parallel with sharded weights and
optimizer state), tensor (heads / mlp / vocab split across devices).
"""

import logging
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or a tuple of them, or None for replicated).
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "norm": None,
    "lora_rank": None,  # adapters: small, their other dim shards as the weight's
}


def resolve_mesh_shape(shape, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes for `num_devices`; one size may be -1 (the rest of them).
    Raises ValueError naming the shape when it cannot fit."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"{shape}: three sizes (data, fsdp, tensor), at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"{shape}: {num_devices} devices are not divisible by {known}")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"{shape} needs {math.prod(shape)} devices, {num_devices} exist")
    return shape


def make_mesh(shape: tuple[int, int, int], devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default all); see resolve_mesh_shape."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(shape, len(devices))
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes.

    A dimension that the mesh axes do not divide stays replicated (e.g. 2 kv heads on a
    tensor axis of 4), logged once per shape so the choice is visible.
    """
    spec = []
    for axis, size in zip(axes, shape, strict=True):
        mesh_axes = RULES.get(axis) if axis is not None else None
        if mesh_axes is None:
            spec.append(None)
            continue
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        names = tuple(n for n in names if mesh.shape[n] > 1)
        ways = math.prod(mesh.shape[n] for n in names)
        if not names:
            spec.append(None)
        elif size % ways:
            log.info("replicating %s dim of size %d: not divisible by %s", axis, size, names)
            spec.append(None)
        else:
            spec.append(names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def state_shardings(state, mesh: Mesh):
    """NamedShardings for a (possibly abstract) pytree: each Variable by its logical axes,
    every other array (step counters, optimizer counts, controller state) replicated."""

    def sharding(leaf):
        if not isinstance(leaf, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        axes = leaf.get_metadata("out_sharding", None) or (None,) * len(leaf.shape)
        return NamedSharding(mesh, logical_spec(tuple(axes), tuple(leaf.shape), mesh))

    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain_rows(x: jax.Array, rows: NamedSharding | None) -> jax.Array:
    """x with its leading (row) dim split as `rows`; unchanged when `rows` is None or the
    devices don't divide it (a group's guided or unguided rows need not fill every device)."""
    if rows is None:
        return x
    ways = math.prod(rows.mesh.shape[a] for a in jax.tree.leaves(rows.spec[0]))
    if x.shape[0] % ways:
        return x
    return jax.lax.with_sharding_constraint(x, rows)
