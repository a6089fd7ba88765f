"""Device meshes from a config: `shape` with one -1 for "the rest", axis names.

    make_mesh((-1, 2), ("fsdp", "tensor"))   # 8 devices: fsdp 4, tensor 2

The mesh axes this library's strategies know are `data` (replicas of the
parameters, batch split), `fsdp` (parameters and batch split), `tensor`
(attention heads, MLP and vocabulary split), as in MaxText's
`ici_*_parallelism`, and `context` (time steps split; the linear
recurrences so far). Devices follow `jax.devices()` order (`mesh_utils`
would reorder them for a TPU's torus; on CPU and one GPU host the order is
the identity), so a process's devices are contiguous along the first axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
CONTEXT = "context"  # the sequence (time) axis: context parallelism
MESH_AXES = (DATA, FSDP, TENSOR, CONTEXT)


def resolve_shape(shape: Sequence[int], num_devices: int,
                  name: str = "mesh.shape") -> tuple[int, ...]:
  """`shape` with its -1 (at most one) replaced so the product is `num_devices`."""
  if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
    raise TypeError(f"{name}: expected a sequence of ints such as (-1,) or "
                    f"(4, 2), got {shape!r}")
  shape = tuple(shape)
  if not shape or not all(isinstance(s, (int, np.integer)) and not
                          isinstance(s, bool) for s in shape):
    raise ValueError(f"{name}: expected a non-empty sequence of ints, got "
                     f"{shape!r}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"{name}: expected positive sizes and at most one -1 "
                     f"(the rest of the devices), got {shape!r}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"{name}: the fixed sizes of {shape!r} multiply to "
                       f"{known}, which does not divide the {num_devices} "
                       f"devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"{name}: {shape!r} holds {math.prod(shape)} devices, "
                     f"but there are {num_devices} (jax.device_count()); use "
                     f"-1 for one axis to take the rest")
  return tuple(int(s) for s in shape)


def check_axis_names(axes: Sequence[str], name: str = "mesh.axes"
                     ) -> tuple[str, ...]:
  if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
    raise TypeError(f"{name}: expected a sequence of axis names such as "
                    f"('data',) or ('fsdp', 'tensor'), got {axes!r}")
  axes = tuple(axes)
  unknown = [a for a in axes if a not in MESH_AXES]
  if not axes or unknown:
    raise ValueError(f"{name}: expected names among {MESH_AXES}, got "
                     f"{axes!r}")
  if len(set(axes)) != len(axes):
    raise ValueError(f"{name}: axis names must be distinct, got {axes!r}")
  return axes


def make_mesh(shape: Sequence[int], axes: Sequence[str],
              devices: Sequence[jax.Device] | None = None
              ) -> jax.sharding.Mesh:
  """A `jax.sharding.Mesh` of `devices` (default: all, every process's).

  Args:
    shape: sizes per axis, one of them -1 for the remaining devices.
    axes: names among `MESH_AXES`, one per size.
    devices: defaults to `jax.devices()`.

  Raises:
    ValueError/TypeError naming `mesh.shape` or `mesh.axes`.
  """
  axes = check_axis_names(axes)
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_shape(shape, len(devices))
  if len(shape) != len(axes):
    raise ValueError(f"mesh.shape: expected one size per axis of {axes!r}, "
                     f"got {shape!r}")
  return jax.sharding.Mesh(np.asarray(devices, dtype=object).reshape(shape),
                           axes)
