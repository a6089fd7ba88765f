"""Ring (context-parallel) attention on 8 CPU devices; prints JSON.

Launched by `test_ring_attention.py` in a subprocess (the device count is
fixed when jax starts). For each implementation, mesh and mask case
(`CASES`: causal, full, zigzag layout, sliding window, window with query
offsets, causal cross-attention with q_len < kv_len): the largest
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


# name -> attention options beyond the shared ones, the layout, and the
# query length (keys always SEQ long).
CASES = {
    "causal": (dict(causal=True), "contiguous", SEQ),
    "full": (dict(causal=False), "contiguous", SEQ),
    "zigzag": (dict(causal=True), "zigzag", SEQ),
    "sliding": (dict(causal=True, window=(12, 0)), "contiguous", SEQ),
    "window_offset": (dict(causal=False, window=(5, 7),
                           q_offset=jnp.array([3, -9])), "contiguous", SEQ),
    "cross": (dict(causal=True), "contiguous", SEQ // 2),
}


# The reference runs every case on both meshes; the slower blockwise and
# Triton-interpreter paths the cases that exercise their own masking.
GRID = {
    "reference": [(shape, case) for shape in ((8,), (2, 4))
                  for case in CASES],
    "blockwise": [((8,), "zigzag"), ((8,), "sliding"),
                  ((8,), "window_offset"), ((2, 4), "cross")],
    "triton": [((8,), "zigzag"), ((8,), "window_offset")],
}


def run(implementation, mesh_shape, case):
  axes = ("context",) if len(mesh_shape) == 1 else ("data", "context")
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
  extra, layout, q_len = CASES[case]
  q, k, v, lengths, segments = _inputs()
  q = q[:, SEQ - q_len:]
  segments = (segments[:, SEQ - q_len:], segments)
  options = dict(key_lengths=lengths, segment_ids=segments, softcap=20.0,
                 return_residuals=True, implementation=implementation,
                 **extra)
  ring = dict(mesh=mesh, context_axis="context", context_layout=layout,
              batch_axes=None if len(mesh_shape) == 1 else "data")
  devices = mesh.shape["context"]
  if layout == "zigzag":  # the caller holds sequences in zigzag order
    order = lambda x, axis=1: kernels.to_zigzag(x, devices, axis)
    unorder = lambda x, axis=1: kernels.from_zigzag(x, devices, axis)
  else:
    order = unorder = lambda x, axis=1: x

  def ring_call(q, k, v):
    ring_options = dict(options, segment_ids=tuple(
        order(s) for s in segments))
    return kernels.attention(q, k, v, **ring_options, **ring)

  def loss(out, lse):
    return jnp.sum(out ** 2) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0))

  want_out, want_lse = kernels.attention(q, k, v, **options)
  got_out, got_lse = jax.jit(ring_call)(order(q), order(k), order(v))
  got_out, got_lse = unorder(got_out), unorder(got_lse, 2)
  want_grads = jax.grad(lambda *a: loss(*kernels.attention(*a, **options)),
                        argnums=(0, 1, 2))(q, k, v)
  grad = jax.jit(jax.grad(lambda *a: loss(*ring_call(*a)), argnums=(0, 1, 2)))
  ordered = (order(q), order(k), order(v))
  got_grads = [unorder(g) for g in grad(*ordered)]
  finite = np.isfinite(np.asarray(want_lse))
  text = grad.lower(*ordered).compile().as_text()
  gathered = [int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
              for m in GATHER.finditer(text)
              for dims in SHAPE.findall(m.group(1))]
  return dict(
      implementation=implementation, mesh=list(mesh_shape), case=case,
      output=float(jnp.max(jnp.abs(got_out - want_out))),
      lse=float(np.max(np.abs(np.asarray(got_lse) - np.asarray(want_lse))[
          finite])),
      lse_inf_match=bool(np.array_equal(np.isfinite(np.asarray(got_lse)),
                                        finite)),
      grads=max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(got_grads, want_grads)),
      permutes=len(re.findall(r"collective-permute(-start)?\(", text)),
      largest_gather=max(gathered, default=0))


def bfloat16_errors():
  """Errors from the float32 answer of one device and of the ring
  (reference, causal, zigzag, (8,)) with bfloat16 inputs: the ring rounds
  each pair's output to bfloat16 before merging, one device once."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("context",))
  q, k, v, lengths, _ = _inputs()
  options = dict(causal=True, key_lengths=lengths,
                 implementation="reference")

  def loss(q, k, v, **extra):
    return jnp.sum(kernels.attention(q, k, v, **options, **extra).astype(
        jnp.float32) ** 2)

  ring = dict(mesh=mesh, context_axis="context")
  exact = (kernels.attention(q, k, v, **options),
           jax.grad(loss, argnums=(0, 1, 2))(q, k, v))
  low = tuple(x.astype(jnp.bfloat16) for x in (q, k, v))
  got = {}
  for name, extra in (("one_device", {}), ("ring", ring)):
    out = jax.jit(lambda *a, extra=extra: kernels.attention(
        *a, **options, **extra))(*low)
    grads = jax.jit(jax.grad(lambda *a, extra=extra: loss(*a, **extra),
                             argnums=(0, 1, 2)))(*low)
    got[name] = dict(
        output=float(jnp.max(jnp.abs(out.astype(jnp.float32) - exact[0]))),
        grads=max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - e)))
                  for g, e in zip(grads, exact[1])),
        dtype=str(out.dtype))
  return got


def layout_round_trip():
  x = jnp.arange(2 * 32).reshape(2, 32)
  zig = kernels.to_zigzag(x, 4)
  return dict(first_block=[int(i) for i in zig[0, :8]],
              round_trip=bool(jnp.array_equal(kernels.from_zigzag(
                  zig, 4), x)))


def refusals():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("context",))
  q, k, v, _, _ = _inputs()
  out = {}
  for name, kwargs, args in (
      ("xla", dict(implementation="xla"), (q, k, v)),
      ("length", {}, (q[:, :60], k[:, :60], v[:, :60])),
      ("zigzag_length", dict(context_layout="zigzag"),
       (q[:, :56], k[:, :56], v[:, :56])),
      ("layout", dict(context_layout="striped"), (q, k, v)),
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
      rows += [run(impl, shape, case) for shape, case in GRID[impl]]
  report = {"rows": rows, "refusals": refusals(),
            "layout": layout_round_trip()}
  if "reference" in implementations:
    report["bfloat16"] = bfloat16_errors()
  print(json.dumps(report))


if __name__ == "__main__":
  main()
