"""Ring (context-parallel) attention on 8 CPU devices; prints JSON.

Launched by `test_ring_attention.py` in a subprocess (the device count is
fixed when jax starts). For each implementation and mesh: the largest
differences of the output, the log-sum-exp and the q/k/v gradients from the
single-device call, and the collectives of the compiled forward+backward.
"""

import contextlib
import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kernels  # noqa: E402

BATCH, SEQ, HEADS, KV_HEADS, HEAD_DIM = 2, 64, 4, 2, 16
GATHER = re.compile(r"= ([^=]*?) all-gather(-start)?\(")
SHAPE = re.compile(r"[a-z]\w*\[([\d,]*)\]")


def _inputs():
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (BATCH, SEQ, HEADS, HEAD_DIM))
  k = jax.random.normal(keys[1], (BATCH, SEQ, KV_HEADS, HEAD_DIM))
  v = jax.random.normal(keys[2], (BATCH, SEQ, KV_HEADS, HEAD_DIM))
  lengths = jnp.array([SEQ, 45])
  segments = (jnp.arange(SEQ)[None, :] >= 20).astype(jnp.int32) + (
      jnp.arange(SEQ)[None, :] >= 50)
  return q, k, v, lengths, jnp.broadcast_to(segments, (BATCH, SEQ))


def run(implementation, mesh_shape, causal):
  axes = ("context",) if len(mesh_shape) == 1 else ("data", "context")
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
  q, k, v, lengths, segments = _inputs()
  options = dict(causal=causal, key_lengths=lengths, segment_ids=segments,
                 softcap=20.0, return_residuals=True,
                 implementation=implementation)
  ring = dict(mesh=mesh, context_axis="context",
              batch_axes=None if len(mesh_shape) == 1 else "data")

  def loss(q, k, v, **extra):
    out, lse = kernels.attention(q, k, v, **options, **extra)
    return jnp.sum(out ** 2) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0))

  want_out, want_lse = kernels.attention(q, k, v, **options)
  got_out, got_lse = jax.jit(lambda q, k, v: kernels.attention(
      q, k, v, **options, **ring))(q, k, v)
  want_grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  grad = jax.jit(jax.grad(lambda q, k, v: loss(q, k, v, **ring),
                          argnums=(0, 1, 2)))
  got_grads = grad(q, k, v)
  finite = np.isfinite(np.asarray(want_lse))
  text = grad.lower(q, k, v).compile().as_text()
  gathered = [int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
              for m in GATHER.finditer(text)
              for dims in SHAPE.findall(m.group(1))]
  return dict(
      implementation=implementation, mesh=list(mesh_shape), causal=causal,
      output=float(jnp.max(jnp.abs(got_out - want_out))),
      lse=float(np.max(np.abs(np.asarray(got_lse) - np.asarray(want_lse))[
          finite])),
      lse_inf_match=bool(np.array_equal(np.isfinite(np.asarray(got_lse)),
                                        finite)),
      grads=max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(got_grads, want_grads)),
      permutes=len(re.findall(r"collective-permute(-start)?\(", text)),
      largest_gather=max(gathered, default=0))


def refusals():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("context",))
  q, k, v, _, _ = _inputs()
  out = {}
  for name, kwargs, args in (
      ("xla", dict(implementation="xla"), (q, k, v)),
      ("window", dict(window=(4, 0), causal=True), (q, k, v)),
      ("length", {}, (q[:, :60], k[:, :60], v[:, :60])),
      ("axis", dict(context_axis="time"), (q, k, v))):
    try:
      kernels.attention(*args, mesh=mesh, **{"context_axis": "context",
                                             **kwargs})
      out[name] = None
    except ValueError as e:
      out[name] = str(e)
  return out


def main():
  implementations = sys.argv[1].split(",")
  rows = []
  for impl in implementations:
    # The Triton kernels run under Triton's interpreter on this CPU.
    with (kernels.triton_interpret() if impl == "triton" else
          contextlib.nullcontext()):
      rows += [run(impl, shape, causal) for shape in ((8,), (2, 4))
               for causal in (True, False)
               if impl != "triton" or (shape == (8,) and causal)]
  print(json.dumps({"rows": rows, "refusals": refusals()}))


if __name__ == "__main__":
  main()
