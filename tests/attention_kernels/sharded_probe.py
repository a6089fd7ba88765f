"""Runs `kernels.attention` per shard on 8 CPU devices; prints JSON.

Launched by `test_attention_sharded.py` in a subprocess, because the device
count is fixed when jax starts (`--xla_force_host_platform_device_count`).
For each implementation and mesh: the largest differences of the outputs
(and the log-sum-exp) and of the q/k/v gradients from the unsharded call,
and the collectives in the compiled forward and backward programs. Then
concrete sharded inputs without `mesh=` (the shardings detected), and the
messages of refused calls.
"""

import importlib
import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import kernels  # noqa: E402

COLLECTIVES = re.compile(r"all-gather|all-to-all|collective-permute|"
                         r"all-reduce|reduce-scatter")
BATCH, SEQ, HEADS, KV_HEADS, HEAD_DIM = 8, 16, 4, 2, 32


def _inputs():
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (BATCH, SEQ, HEADS, HEAD_DIM))
  k = jax.random.normal(keys[1], (BATCH, SEQ, KV_HEADS, HEAD_DIM))
  v = jax.random.normal(keys[2], (BATCH, SEQ, KV_HEADS, HEAD_DIM))
  lengths = jax.random.randint(keys[3], (BATCH,), 1, SEQ + 1)
  segments = (jnp.arange(SEQ)[None, :] >= SEQ // 2).astype(jnp.int32)
  segments = jnp.broadcast_to(segments, (BATCH, SEQ))
  return q, k, v, lengths, segments


def _options(implementation):
  options = dict(causal=True, implementation=implementation)
  if implementation != "xla":  # jax.nn has no softcap
    options.update(window=(5, 0), softcap=20.0, return_residuals=True)
  return options


def _loss(outputs):
  if isinstance(outputs, tuple):
    out, lse = outputs
    return jnp.sum(out ** 2) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0))
  return jnp.sum(outputs ** 2)


def run(implementation, mesh_shape, batch_axes, head_axes):
  mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape),
              ("data", "model")[:len(mesh_shape)])
  q, k, v, lengths, segments = _inputs()
  options = _options(implementation)
  b, h = batch_axes or None, head_axes or None
  shard = NamedSharding(mesh, P(b, None, h, None))
  q, k, v = (jax.device_put(x, shard) for x in (q, k, v))
  lengths = jax.device_put(lengths, NamedSharding(mesh, P(b)))
  segments = jax.device_put(segments, NamedSharding(mesh, P(b, None)))

  def call(q, k, v, lengths, segments, sharded):
    extra = dict(mesh=mesh, batch_axes=batch_axes,
                 head_axes=head_axes) if sharded else {}
    return kernels.attention(q, k, v, key_lengths=lengths,
                             segment_ids=segments, **options, **extra)

  results, collectives = {}, {}
  for sharded in (False, True):
    forward = jax.jit(lambda *a, s=sharded: call(*a, s))
    backward = jax.jit(jax.grad(
        lambda q, k, v, lengths, segments, sh=sharded: _loss(
            call(q, k, v, lengths, segments, sh)), argnums=(0, 1, 2)))
    args = (q, k, v, lengths, segments)
    results[sharded] = (forward(*args), backward(*args))
    texts = [f.lower(*args).compile().as_text() for f in (forward, backward)]
    collectives[sharded] = sorted({m.group(0) for t in texts
                                   for m in COLLECTIVES.finditer(t)})
  (plain_out, plain_grads), (out, grads) = results[False], results[True]
  leaves = zip(jax.tree.leaves((plain_out, plain_grads)),
               jax.tree.leaves((out, grads)))
  diff = max(float(jnp.max(jnp.abs(jnp.where(jnp.isfinite(a), a - b, 0))))
             for a, b in leaves)
  return {"max_abs_diff": diff, "collectives": collectives[True],
          "unsharded_collectives": collectives[False],
          "out_sharding": str(jax.tree.leaves(out)[0].sharding.spec)}


def detected():
  """Concrete q, k, v laid out on a mesh, called without `mesh=`: per
  layout, the largest difference from the unsharded call, the output's
  sharding, and the (mesh, batch_axes, head_axes) `_per_shard` received."""
  module = importlib.import_module("kernels.attention")
  per_shard, calls = module._per_shard, []

  def spy(*args, mesh, batch_axes, head_axes, **kwargs):
    calls.append([dict(mesh.shape), list(batch_axes), list(head_axes)])
    return per_shard(*args, mesh=mesh, batch_axes=batch_axes,
                     head_axes=head_axes, **kwargs)

  q, k, v, lengths, _ = _inputs()
  plain = kernels.attention(q, k, v, causal=True, key_lengths=lengths)
  runs = {}
  module._per_shard = spy
  try:
    for label, mesh_shape, spec in (
        ("(8,)", (8,), P("data")),
        ("(4, 2)", (4, 2), P("data", None, "model", None)),
        ("replicated", (8,), P())):
      mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape),
                  ("data", "model")[:len(mesh_shape)])
      layout = NamedSharding(mesh, spec)
      calls.clear()
      out = kernels.attention(*(jax.device_put(x, layout) for x in (q, k, v)),
                              causal=True, key_lengths=lengths)
      runs[label] = dict(
          max_abs_diff=float(jnp.max(jnp.abs(out - plain))),
          out_sharding=str(out.sharding.spec),
          keeps_sharding=out.sharding.is_equivalent_to(layout, 4),
          per_shard=list(calls))
  finally:
    module._per_shard = per_shard
  return runs


def refusals():
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
  q, k, v, _, _ = _inputs()

  def put(x, *spec):  # on a (4, 2) mesh: `model` splits the 2 kv heads
    return jax.device_put(x, NamedSharding(Mesh(
        mesh.devices.reshape(4, 2), mesh.axis_names), P(*spec)))

  split_q = put(q, "data", None, "model", None)
  split_k = put(k, "data", "model")  # the sequence over `model`
  messages = {}
  for label, kwargs in {
      "heads": dict(head_axes="model"),         # 2 kv heads, 4 ways
      "batch": dict(batch_axes=("data", "model"), q=q[:4], k=k[:4],
                    v=v[:4]),                   # batch 4, 8 ways
      "axis": dict(batch_axes="rows"),
      "no_mesh": dict(mesh=None, batch_axes="data"),
      "sequence": dict(mesh=None, q=put(q, "data"), k=split_k,
                       v=put(v, "data")),
      "sequence_with_mesh": dict(batch_axes="data", k=split_k),
      "head_dim": dict(mesh=None, q=put(q, None, None, None, "model")),
      "kv_heads": dict(mesh=None, q=split_q, k=put(k, "data"), v=put(
          v, "data", None, "model")),        # k's heads not split like q's
      "kv_unsharded": dict(mesh=None, q=split_q, k=put(
          k, "data", None, "model"), v=v),  # v on one device
  }.items():
    args = (kwargs.pop("q", q), kwargs.pop("k", k), kwargs.pop("v", v))
    kwargs.setdefault("mesh", mesh)
    try:
      kernels.attention(*args, **kwargs)
      messages[label] = None
    except (TypeError, ValueError) as e:
      messages[label] = f"{type(e).__name__}: {e}"
  return messages


def main():
  implementations = sys.argv[1].split(",")
  report = {"refusals": refusals(), "detected": detected(), "runs": {}}
  for implementation in implementations:
    for mesh_shape, batch_axes, head_axes in (((8,), "data", None),
                                              ((4, 2), "data", "model")):
      label = f"{implementation} {mesh_shape}"
      with kernels.triton_interpret(implementation == "triton"):
        report["runs"][label] = run(implementation, mesh_shape, batch_axes,
                                    head_axes)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
