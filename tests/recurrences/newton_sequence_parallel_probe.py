"""`newton_rnn` / `RNN(evaluation="newton")` with time split over 8 CPU
devices; prints JSON.

Launched by `test_newton_sequence_parallel.py` in a subprocess, because the
device count is fixed when jax starts. For every case: the largest
differences of outputs, final carry and gradients (parameters, inputs,
initial carry) from the single-device `RNN` scan, the Newton iterations, and
the largest element count each kind of collective moves in the compiled
forward and backward.
"""

import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import rnn_transformer as rt  # noqa: E402
from rnn_transformer import parallel  # noqa: E402
from rnn_transformer.recurrences import newton_recurrence as nr  # noqa: E402
from tests.recurrences.sequence_parallel_probe import (  # noqa: E402
    collective_sizes)

BATCH, TIME, FEATURES, HIDDEN = 4, 128, 3, 4
CELLS = {"rnn": rt.SimpleRNNCell, "gru": rt.GRUCell, "lstm": rt.LSTMCell}
LENGTHS = np.array([TIME, 77, 1, 100])


def _inputs():
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (BATCH, TIME, FEATURES))
  reset = np.asarray(jax.random.bernoulli(keys[1], 0.03, (BATCH, TIME)))
  out_weights = jax.random.normal(keys[2], (BATCH, TIME, HIDDEN))
  return x, jnp.asarray(reset), out_weights, keys[3]


def _weighted_sum(tree, weights):
  return sum(jnp.sum(a * w) for a, w in zip(jax.tree.leaves(tree),
                                            jax.tree.leaves(weights)))


def run(cell_name, mesh_shape, method, adjoint, reverse, masks, via,
        max_iters=None):
  """One case: `via` "newton_rnn" (explicit mesh) or "layer" (`RNN` under
  `activation_sharding` with a `context` axis)."""
  if via == "layer":
    axes = ("context",) if len(mesh_shape) == 1 else ("data", "context")
  else:
    axes = ("time",) if len(mesh_shape) == 1 else ("batch", "time")
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
  batch_axes = None if len(mesh_shape) == 1 else axes[0]
  cell = CELLS[cell_name](HIDDEN)
  x, reset, out_weights, carry_key = _inputs()
  scan = rt.RNN(cell, reverse=reverse, keep_order=True, return_carry=True)
  variables = scan.init(jax.random.key(1), x)
  carry0 = jax.tree.map(
      lambda leaf: 0.5 * jax.random.normal(carry_key, leaf.shape),
      cell.initialize_carry(jax.random.key(0), x[:, 0].shape))
  mask_args = dict(seq_lengths=jnp.asarray(LENGTHS), reset=reset) if masks \
      else {}
  options = dict(method=method, adjoint=adjoint, on_failure="fallback",
                 max_iters=max_iters)

  def loss(result):
    carry, outputs = result[:2]
    return (_weighted_sum(outputs, out_weights) +
            _weighted_sum(carry, jax.tree.map(jnp.ones_like, carry)))

  def oracle(variables, x, carry0):
    result = scan.apply(variables, x, initial_carry=carry0, **mask_args)
    return loss(result), result

  if via == "layer":
    layer = rt.RNN(cell, reverse=reverse, keep_order=True, return_carry=True,
                   evaluation="newton", newton=options)
    rules = parallel.strategy_rules("dp", mesh)

    def newton(variables, x, carry0):
      with parallel.activation_sharding(mesh, rules):
        (carry, y), state = layer.apply(variables, x, initial_carry=carry0,
                                        mutable=["intermediates"],
                                        **mask_args)
      (info,) = state["intermediates"]["newton_info"]
      return loss((carry, y)), (carry, y, info)
  else:
    def newton(variables, x, carry0):
      result = nr.newton_rnn(
          cell, {"params": variables["params"]["cell"]}, x,
          initial_carry=carry0, reverse=reverse, mesh=mesh, time_axis=axes[-1],
          batch_axes=batch_axes, **mask_args, **options)
      return loss(result), result

  steps = NamedSharding(mesh, P(batch_axes, axes[-1]))
  x_split = jax.device_put(x, steps)
  carry_split = jax.device_put(carry0, NamedSharding(mesh, P(batch_axes)))
  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2),
                                              has_aux=True))
  (_, want), want_grads = grad(oracle)(variables, x, carry0)
  sharded = grad(newton)
  (_, got), got_grads = sharded(variables, x_split, carry_split)
  info = got[2]
  forward = jax.jit(newton).lower(variables, x_split, carry_split).compile()
  backward = sharded.lower(variables, x_split, carry_split).compile()

  def diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  def scale(tree):
    return max(float(np.max(np.abs(np.asarray(u))))
               for u in jax.tree.leaves(tree))

  return dict(
      cell=cell_name, mesh=list(mesh_shape), method=method, adjoint=adjoint,
      reverse=reverse, masks=masks, via=via, max_iters=max_iters,
      state=sum(leaf.shape[-1] for leaf in jax.tree.leaves(carry0)),
      output=diff(got[1], want[1]), final=diff(got[0], want[0]),
      grads=diff(got_grads, want_grads), grad_scale=scale(want_grads),
      iterations=int(info.iterations), residual=float(info.residual),
      converged=bool(info.converged), fell_back=bool(info.fell_back),
      largest_param=max(int(np.prod(leaf.shape)) for leaf in
                        jax.tree.leaves(variables)),
      forward=collective_sizes(forward.as_text()),
      backward=collective_sizes(backward.as_text()))


CASES = (  # (cell, mesh, method, adjoint, reverse, masks, via[, max_iters])
    # quasi: diagonal solve by linear_scan; sequential adjoint in turn.
    ("lstm", (8,), "quasi", None, False, True, "newton_rnn"),
    # full: the matrix scan across devices, forward and adjoint; reversed.
    ("gru", (2, 4), "full", None, True, True, "newton_rnn"),
    # damped with the associative adjoint; reversed, no masks.
    ("rnn", (8,), "damped", "associative", True, False, "newton_rnn"),
    # The layer under a data x context activation_sharding context.
    ("lstm", (2, 4), "quasi", None, False, True, "layer"),
    # Two iterations cannot converge: the fallback scans in turn.
    ("gru", (8,), "quasi", None, False, True, "newton_rnn", 2),
)


def refusals():
  """The messages of an unknown time axis and of a time the mesh does not
  divide."""
  cell = rt.GRUCell(HIDDEN)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("time",))
  out = []
  for time, time_axis in ((TIME, "context"), (60, "time")):
    x = jnp.zeros((BATCH, time, FEATURES))
    variables = cell.init(jax.random.key(0), jnp.zeros((BATCH, HIDDEN)),
                          x[:, 0])
    try:
      nr.newton_rnn(cell, variables, x, mesh=mesh, time_axis=time_axis)
      out.append(None)
    except ValueError as e:
      out.append(str(e))
  return out


def main():
  print(json.dumps({"rows": [run(*case) for case in CASES],
                    "refusals": refusals()}))


if __name__ == "__main__":
  main()
