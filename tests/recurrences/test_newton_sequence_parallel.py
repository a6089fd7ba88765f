"""`newton_rnn` and `RNN(evaluation="newton")` with time split over 8 CPU
devices equal the single-device scan, and no collective moves a time axis.

The cases run in one child process (`newton_sequence_parallel_probe.py`):
the device count is fixed when jax starts.
"""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_transformer as rt
import tolerances
from rnn_transformer import parallel
from rnn_transformer.recurrences import newton_recurrence as nr
from tests.parallel.sharding_helpers import run_report

PROBE = __file__.replace("test_newton_sequence_parallel.py",
                         "newton_sequence_parallel_probe.py")
BATCH, TIME, HIDDEN = 4, 128, 4


def test_time_split_over_8_devices_equals_one_device():
  """One child process for every case (jax starts once)."""
  report = run_report([PROBE])
  _check_values(report["rows"])
  _check_communication(report["rows"])
  axis_error, time_error = report["refusals"]
  assert axis_error == ("time_axis: expected axis names of the mesh "
                        "('time',), got 'context'")
  assert time_error.startswith("inputs: time 60 is not divisible by the 8 "
                               "shards of time_axis ('time',); pad the "
                               "sequences")


def _check_values(rows):
  """Outputs, final carries and gradients (parameters, inputs, initial
  carry) equal the single-device `RNN` scan; Newton converged, except the
  row whose two iterations force the fallback."""
  assert len(rows) == 5
  out, grad = tolerances.output_tol(jnp.float32), tolerances.gradient_tol(
      jnp.float32)
  for row in rows:
    label = {k: row[k] for k in ("cell", "mesh", "method", "adjoint",
                                 "reverse", "masks", "via", "max_iters")}
    if row["max_iters"] is None:
      assert row["converged"] and not row["fell_back"], row
      assert 1 <= row["iterations"] <= 30, row
    else:
      assert row["fell_back"] and row["iterations"] == row["max_iters"], row
    # Converged to tol = 1e-5: the states are within ~tol of the scan's.
    assert row["output"] <= out["atol"], (label, row["output"])
    assert row["final"] <= out["atol"], (label, row["final"])
    assert row["grads"] <= grad["rtol"] * max(1.0, row["grad_scale"]), (
        label, row["grads"])


def _check_communication(rows):
  """The largest collective of the compiled forward and backward is one
  device-count of (batch, S) summaries ((batch, S, S) for the dense
  Jacobians), the parameters' gradient or one (batch, S) step: never a time
  axis."""
  for row in rows:
    devices_on_time = row["mesh"][-1]
    batch = BATCH // (row["mesh"][0] if len(row["mesh"]) == 2 else 1)
    state = row["state"]
    dense = {"forward": row["method"] == "full",
             "backward": row["method"] == "full" or (
                 row["adjoint"] == "associative")}
    sequence = batch * TIME * state  # one batch shard's states
    for direction in ("forward", "backward"):
      sizes = row[direction]
      summaries = devices_on_time * batch * state * (
          state if dense[direction] else 1)
      # the backward also holds the forward's summaries
      if direction == "backward" and dense["forward"]:
        summaries = max(summaries, devices_on_time * batch * state ** 2)
      assert sizes["all-gather"] == summaries, (row, direction)
      assert sizes["collective-permute"] <= batch * state, (row, direction)
      bound = max(summaries, row["largest_param"], batch * state)
      assert max(sizes.values()) <= bound < sequence, (row, direction)


def _mesh(axes):
  return jax.sharding.Mesh(np.asarray(jax.devices()[:1], dtype=object)
                           .reshape((1,) * len(axes)), axes)


def _gru(time=8):
  cell = rt.GRUCell(HIDDEN)
  x = jax.random.normal(jax.random.key(0), (2, time, 3))
  variables = cell.init(jax.random.key(1), jnp.zeros((2, HIDDEN)), x[:, 0])
  return cell, variables, x


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(time_axis="time"), ValueError, r"mesh: time_axis and batch_axes "
     r"need a jax.sharding.Mesh"),
    (dict(mesh="mesh", time_axis="time"), TypeError, r"mesh: expected a "
     r"jax.sharding.Mesh"),
    (dict(mesh=_mesh(("time",)), time_axis="context"), ValueError,
     r"time_axis: expected axis names of the mesh \('time',\), got "
     r"'context'"),
    (dict(mesh=_mesh(("time",))), ValueError, r"time_axis: expected the "
     r"mesh axis"),
    (dict(mesh=_mesh(("batch", "time")), time_axis="time",
          batch_axes="data"), ValueError, r"batch_axes: expected axis names "
     r"of the mesh"),
])
def test_bad_sequence_parallel_arguments_are_named(kwargs, error, message):
  cell, variables, x = _gru()
  with pytest.raises(error, match=message):
    nr.newton_rnn(cell, variables, x, **kwargs)


@pytest.mark.parametrize("method", ["quasi", "full"])
def test_one_device_mesh_equals_no_mesh(method):
  """The sharded code path (shard_map, the in-turn fallback) on a
  one-device mesh, against the plain path: outputs and gradients."""
  cell, variables, x = _gru()
  mesh = _mesh(("time",))

  def loss(variables, x, **sharded):
    carry, y, _ = nr.newton_rnn(cell, variables, x, method=method,
                                reverse=True, **sharded)
    return jnp.sum(y ** 2) + jnp.sum(carry), (carry, y)

  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  want = jax.jit(grad)(variables, x)
  got = jax.jit(lambda v, x: grad(v, x, mesh=mesh, time_axis="time"))(
      variables, x)
  chex.assert_trees_all_close(got, want, **tolerances.gradient_tol(
      jnp.float32))


def test_rnn_layer_reads_the_context_axis():
  """Under `activation_sharding` with a one-device `context` axis the layer
  takes the sequence-parallel path and equals the scan."""
  _, _, x = _gru()
  mesh = _mesh(("data", "context"))
  scan = rt.RNN(rt.GRUCell(HIDDEN))
  newton = rt.RNN(rt.GRUCell(HIDDEN), evaluation="newton")
  variables = scan.init(jax.random.key(1), x)
  with parallel.activation_sharding(mesh, parallel.strategy_rules("dp",
                                                                  mesh)):
    assert parallel.current().scan_across_devices()["time_axis"] == (
        "context",)
    got = jax.jit(newton.apply)(variables, x)
  chex.assert_trees_all_close(got, scan.apply(variables, x),
                              **tolerances.output_tol(jnp.float32))
