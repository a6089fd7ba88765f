"""`linear_scan` / `log_linear_scan` with time split over 8 CPU devices equal
the single-device scan, and communicate O(devices x batch x features).

The cases run in one child process (`sequence_parallel_probe.py`): the
device count is fixed when jax starts.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_transformer.recurrences import linear_recurrence as lr
from tests.parallel.sharding_helpers import run_report

PROBE = __file__.replace("test_sequence_parallel.py",
                         "sequence_parallel_probe.py")
BATCH, TIME, FEATURES = 4, 256, 3


def test_time_split_over_8_devices_equals_one_device():
  """One child process for every case (jax starts once)."""
  report = run_report([PROBE])
  _check_values(report["rows"])
  _check_communication(report["rows"])
  time_error, batch_error = report["refusals"]
  assert time_error.startswith("a: time 60 is not divisible by the 8 shards "
                               "of time_axis ('time',); pad the sequences")
  assert batch_error.startswith("a: batch 3 is not divisible by the 2 shards "
                                "of batch_axes ('batch',)")


def _check_values(rows):
  """Outputs, final carries and gradients equal the single-device scan."""
  assert len(rows) == 10
  for row in rows:
    label = {k: row[k] for k in ("scan", "dtype", "mesh", "method",
                                 "reverse", "masks")}
    # float32 sums regrouped across 8 devices: a few ulps of the values.
    assert row["output"] <= 2e-6 * max(1.0, row["scale"]), label
    assert row["final"] <= 2e-6 * max(1.0, row["scale"]), label
    assert row["grads"] <= 2e-5 * max(1.0, row["grad_scale"]), label


def _check_communication(rows):
  """Every collective moves at most the (devices, batch, features) summaries
  (the backward: their transposes), never a time axis."""
  for row in rows:
    devices_on_time = row["mesh"][-1]
    batch_per_group = BATCH // (row["mesh"][0] if len(row["mesh"]) == 2
                                else 1)
    bound = devices_on_time * batch_per_group * FEATURES
    for direction in ("forward", "backward"):
      largest, kinds = row[direction]
      assert "all-gather" in kinds, (row, direction)
      assert largest <= bound < TIME, (row, direction, largest)


def _mesh(axes):
  return jax.sharding.Mesh(np.asarray(jax.devices()[:1], dtype=object)
                           .reshape((1,) * len(axes)), axes)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(time_axis="time"), ValueError, r"mesh: time_axis and batch_axes "
     r"need a jax.sharding.Mesh"),
    (dict(mesh="mesh", time_axis="time"), TypeError, r"mesh: expected a "
     r"jax.sharding.Mesh"),
    (dict(mesh=_mesh(("time",)), time_axis="context"), ValueError,
     r"time_axis: expected axis names of the mesh"),
    (dict(mesh=_mesh(("time",))), ValueError, r"time_axis: expected the "
     r"mesh axis"),
    (dict(mesh=_mesh(("time",)), time_axis="time", batch_axes="time"),
     ValueError, r"batch_axes: .* overlaps time_axis"),
])
def test_bad_sequence_parallel_arguments_are_named(kwargs, error, message):
  a = jnp.ones((2, 6, 3))
  with pytest.raises(error, match=message):
    lr.linear_scan(a, a, **kwargs)


def test_one_device_mesh_equals_the_plain_scan():
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.uniform(key_a, (2, 6, 3))
  b = jax.random.normal(key_b, (2, 6, 3))
  mesh = _mesh(("time",))
  want = lr.linear_scan(a, b, reverse=True)
  got = lr.linear_scan(a, b, reverse=True, mesh=mesh, time_axis="time")
  for x, y in zip(got, want):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
