"""Mesh axis arguments (`batch_axes`, `head_axes`, `time_axis`, sharding
rules): one place that normalises them and checks them against a mesh.

A `PartitionSpec` entry names no axis (None), one (`"data"`) or several
(`("data", "fsdp")`); every public function that takes mesh axes accepts
the same three forms.
"""

from typing import Any

import jax


def axis_tuple(entry: Any) -> tuple[Any, ...]:
  """One `PartitionSpec` entry (None, a name or names) as a tuple; anything
  else comes back as a one-element tuple for the caller's check to reject."""
  if entry is None:
    return ()
  if isinstance(entry, (str, bytes)):
    return (entry,)
  try:
    return tuple(entry)
  except TypeError:
    return (entry,)


def mesh_axis_names(name: str, value: Any, mesh: jax.sharding.Mesh
                    ) -> tuple[str, ...]:
  """`value` (None, an axis name or names) as a tuple of `mesh`'s axis names.

  Raises:
    ValueError: naming `name` when `value` holds a non-string or an axis the
      mesh lacks.
  """
  names = axis_tuple(value)
  unknown = [a for a in names
             if not isinstance(a, str) or a not in mesh.axis_names]
  if unknown:
    raise ValueError(f"{name}: expected axis names of the mesh "
                     f"{tuple(mesh.axis_names)}, got {value!r}")
  return names
