"""`kernels.mesh_axes`: the one reader of mesh-axis arguments (attention's
batch/head axes, the recurrences' time axis, sharding rules)."""

import jax
import numpy as np
import pytest

from kernels import mesh_axes


@pytest.fixture(scope="module")
def mesh():
  devices = np.array(jax.devices()[:1]).reshape(1, 1)
  return jax.sharding.Mesh(devices, ("data", "tensor"))


@pytest.mark.parametrize("value, expected", [
    (None, ()),
    ("data", ("data",)),
    (("data", "tensor"), ("data", "tensor")),
    (["tensor"], ("tensor",)),
    ((), ()),
])
def test_accepts_the_partition_spec_forms(mesh, value, expected):
  assert mesh_axes.mesh_axis_names("batch_axes", value, mesh) == expected


@pytest.mark.parametrize("value", [
    "model", ("data", "model"), 3, ("data", 3), b"data", 2.5,
])
def test_refuses_naming_the_argument_and_the_mesh(mesh, value):
  with pytest.raises(ValueError) as error:
    mesh_axes.mesh_axis_names("head_axes", value, mesh)
  assert str(error.value) == (
      "head_axes: expected axis names of the mesh ('data', 'tensor'), got "
      f"{value!r}")


def test_refuses_an_axis_named_twice(mesh):
  with pytest.raises(ValueError, match="each mesh axis at most once"):
    mesh_axes.mesh_axis_names("batch_axes", ("data", "data"), mesh)
