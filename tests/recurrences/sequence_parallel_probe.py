"""`linear_scan` / `log_linear_scan` with time split over 8 CPU devices;
prints JSON.

Launched by `test_sequence_parallel.py` in a subprocess, because the
device count is fixed when jax starts. For every case: the largest
differences of outputs, final carry and gradients from the single-device
scan, and the collectives of the compiled forward and backward with the
largest element count any of them moves.
"""

import json
import os
import re

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rnn_transformer.recurrences import linear_recurrence as lr  # noqa: E402

BATCH, TIME, FEATURES = 4, 256, 3
COLLECTIVE = re.compile(
    r"= ([^=]*?) (all-gather|all-reduce|reduce-scatter|all-to-all|"
    r"collective-permute)(-start)?\(")
SHAPE = re.compile(r"[a-z]\w*\[([\d,]*)\]")


def _inputs(dtype, key=0):
  keys = jax.random.split(jax.random.key(key), 6)
  shape = (BATCH, TIME, FEATURES)
  a = jax.random.uniform(keys[0], shape, minval=0.5, maxval=1.0)
  b = jax.random.normal(keys[1], shape)
  h0 = jax.random.normal(keys[2], (BATCH, FEATURES))
  if dtype == "complex64":
    phase = jax.random.uniform(keys[3], shape, maxval=0.3)
    a = a * jnp.exp(1j * phase)
    b = b + 1j * jax.random.normal(keys[4], shape)
    h0 = h0 + 1j * h0[::-1]
  lengths = jnp.array([TIME, 37, 1, 50])
  reset = jax.random.bernoulli(keys[5], 0.05, (BATCH, TIME))
  return a.astype(dtype), b.astype(dtype), h0.astype(dtype), lengths, reset


# HLO marks every fifth element of a long tuple type with /*index=N*/,
# whose "=" would hide that collective from COLLECTIVE.
COMMENT = re.compile(r"/\*.*?\*/")


def collective_sizes(text):
  """`{kind: elements of the largest array a collective of that kind
  produces}` in compiled HLO text."""
  sizes = {}
  for match in COLLECTIVE.finditer(COMMENT.sub("", text)):
    kind = match.group(2)
    for dims in SHAPE.findall(match.group(1)):
      size = int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
      sizes[kind] = max(sizes.get(kind, 0), size)
  return sizes


def largest_collective(text):
  """Elements of the largest array any collective produces, and the kinds."""
  sizes = collective_sizes(text)
  return max(sizes.values(), default=0), sorted(sizes)


def run(scan, dtype, mesh_shape, method, reverse, masks):
  axes = ("time",) if len(mesh_shape) == 1 else ("batch", "time")
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
  batch_axes = None if len(mesh_shape) == 1 else "batch"
  a, b, h0, lengths, reset = _inputs(dtype)
  if scan == "log":
    a, b, h0 = jnp.log(a), jnp.log(jnp.abs(b) + 0.1), jnp.log(jnp.abs(h0))
  fn = lr.log_linear_scan if scan == "log" else lr.linear_scan
  options = dict(reverse=reverse, method=method, chunk_size=8)
  if masks:
    options.update(seq_lengths=lengths, reset=reset)

  def call(a, b, h0, **sharded):
    carry_name = "log_initial_carry" if scan == "log" else "initial_carry"
    return fn(a, b, **{carry_name: h0}, **options, **sharded)

  def loss(a, b, h0, **sharded):
    final, h = call(a, b, h0, **sharded)
    h = jnp.where(jnp.isfinite(h.real), h, 0)
    return jnp.sum(jnp.abs(h) ** 2) + jnp.sum(jnp.abs(final))

  sharded = dict(mesh=mesh, time_axis="time", batch_axes=batch_axes)
  want = call(a, b, h0)
  got = jax.jit(lambda a, b, h0: call(a, b, h0, **sharded))(a, b, h0)
  grad = jax.grad(loss, argnums=(0, 1, 2))
  want_grads = grad(a, b, h0)
  sharded_grad = jax.jit(lambda a, b, h0: jax.grad(
      lambda *x: loss(*x, **sharded), argnums=(0, 1, 2))(a, b, h0))
  got_grads = sharded_grad(a, b, h0)

  def diff(x, y):
    x, y = np.asarray(x), np.asarray(y)
    same_inf = np.isinf(x) & np.isinf(y) & (np.sign(x.real) == np.sign(
        y.real))
    return float(np.max(np.where(same_inf, 0, np.abs(x - y)), initial=0))

  forward_text = jax.jit(lambda a, b, h0: call(a, b, h0, **sharded)).lower(
      a, b, h0).compile().as_text()
  backward_text = sharded_grad.lower(a, b, h0).compile().as_text()
  return dict(
      scan=scan, dtype=dtype, mesh=list(mesh_shape), method=method,
      reverse=reverse, masks=masks,
      output=diff(got[1], want[1]), final=diff(got[0], want[0]),
      grads=max(diff(x, y) for x, y in zip(got_grads, want_grads)),
      grad_scale=max(float(np.max(np.abs(np.asarray(x)))) for x in
                     want_grads),
      scale=float(np.max(np.abs(np.asarray(want[1]).real[
          np.isfinite(np.asarray(want[1]).real)]))),
      forward=largest_collective(forward_text),
      backward=largest_collective(backward_text))


CASES = (  # (scan, dtype, mesh, method, reverse, masks)
    ("linear", "float32", (8,), "associative", False, False),
    ("linear", "float32", (8,), "associative", True, True),
    ("linear", "float32", (8,), "chunked", False, True),
    ("linear", "float32", (8,), "sequential", True, True),
    ("linear", "float32", (2, 4), "associative", False, True),
    ("linear", "complex64", (8,), "associative", True, True),
    ("linear", "complex64", (2, 4), "associative", False, True),
    ("log", "float32", (8,), "associative", False, True),
    ("log", "float32", (8,), "sequential", True, True),
    ("log", "float32", (2, 4), "chunked", True, False),
)


def refusals():
  """The messages of a time or batch the mesh does not divide."""
  out = []
  for shape, mesh_shape, batch_axes in (((4, 60, 3), (8,), None),
                                        ((3, 64, 3), (2, 4), "batch")):
    axes = ("time",) if len(mesh_shape) == 1 else ("batch", "time")
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(mesh_shape),
                             axes)
    try:
      lr.linear_scan(jnp.ones(shape), jnp.ones(shape), mesh=mesh,
                     time_axis="time", batch_axes=batch_axes)
      out.append(None)
    except ValueError as e:
      out.append(str(e))
  return out


def main():
  print(json.dumps({"rows": [run(*case) for case in CASES],
                    "refusals": refusals()}))


if __name__ == "__main__":
  main()
