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
    ValueError: naming `name` when `value` holds a non-string, an axis the
      mesh lacks, or one axis twice.
  """
  names = axis_tuple(value)
  unknown = [a for a in names
             if not isinstance(a, str) or a not in mesh.axis_names]
  if unknown:
    raise ValueError(f"{name}: expected axis names of the mesh "
                     f"{tuple(mesh.axis_names)}, got {value!r}")
  if len(set(names)) != len(names):
    raise ValueError(f"{name}: expected each mesh axis at most once, got "
                     f"{value!r}")
  return names
