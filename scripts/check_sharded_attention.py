r"""The attention hot path per shard against the unsharded call: same
outputs and gradients, and the time of each (issue 25's GPU step).

    python scripts/check_sharded_attention.py --implementation=triton \
        --batch=4 --seq_len=4096 --heads=16 --head_dim=128 --dtype=bfloat16

The sharded call is `kernels.attention(..., mesh=, batch_axes="data")` on a
mesh of every visible device along `data` (one GPU: a 1-device mesh, so the
difference is only the `shard_map` wrapper, which should cost nothing).
Forward and forward+backward are timed after compilation, interleaved
round by round, `--repeats` times; the ratio's median and min-max are
printed. Timings from a busy machine are flagged and not figures.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

import kernels
from rnn_transformer.benchmarks import timing

_IMPLEMENTATION = flags.DEFINE_string(
    "implementation", None, "kernels.IMPLEMENTATIONS; default: the dispatch's "
    "choice")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch, divisible by the devices.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 4096, "Query and key length.")
_HEADS = flags.DEFINE_integer("heads", 16, "Query heads.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", None, "Key/value heads "
                                 "(default: heads).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dimension.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16",
                           ["bfloat16", "float16", "float32"], "q/k/v dtype.")
_CAUSAL = flags.DEFINE_bool("causal", True, "Causal mask.")
_ITERS = flags.DEFINE_integer("iters", 20, "Timed calls per round.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved comparisons.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON here.")


def _calls(mesh):
  options = dict(causal=_CAUSAL.value, implementation=_IMPLEMENTATION.value)
  if mesh is not None:
    options.update(mesh=mesh, batch_axes="data")

  def forward(q, k, v):
    return kernels.attention(q, k, v, **options)

  def loss(q, k, v):
    return forward(q, k, v).astype(jnp.float32).sum()
  return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.asarray(devices, dtype=object), ("data",))
  if _BATCH.value % len(devices):
    raise app.UsageError(f"--batch={_BATCH.value} must divide by the "
                         f"{len(devices)} devices")
  dtype = jnp.dtype(_DTYPE.value)
  kv_heads = _KV_HEADS.value or _HEADS.value
  keys = jax.random.split(jax.random.key(0), 3)
  shape = (_BATCH.value, _SEQ_LEN.value)
  q = jax.random.normal(keys[0], shape + (_HEADS.value, _HEAD_DIM.value),
                        dtype)
  k = jax.random.normal(keys[1], shape + (kv_heads, _HEAD_DIM.value), dtype)
  v = jax.random.normal(keys[2], shape + (kv_heads, _HEAD_DIM.value), dtype)
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data"))
  q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))

  plain_fwd, plain_grad = _calls(None)
  shard_fwd, shard_grad = _calls(mesh)
  out_diff = float(jnp.max(jnp.abs(
      plain_fwd(q, k, v).astype(jnp.float32) -
      shard_fwd(q, k, v).astype(jnp.float32))))
  grad_diff = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) -
                                        b.astype(jnp.float32))))
                  for a, b in zip(plain_grad(q, k, v), shard_grad(q, k, v)))
  load = timing.load_average()
  calls = {
      ("forward", "unsharded"): lambda: plain_fwd(q, k, v),
      ("forward", "per shard"): lambda: shard_fwd(q, k, v),
      ("forward+backward", "unsharded"): lambda: plain_grad(q, k, v),
      ("forward+backward", "per shard"): lambda: shard_grad(q, k, v),
  }
  ms = timing.repeated_interleaved_ms(
      {key: (lambda f=f: jax.block_until_ready(f())) for key, f in
       calls.items()}, warmup=3, iters=_ITERS.value, repeats=_REPEATS.value)
  device = f"{len(devices)} x {devices[0].device_kind}"
  print(f"device: {device}; jax {jax.__version__}; "
        f"{timing.load_average_report(load)}")
  print(f"shape q {tuple(q.shape)}, k/v {tuple(k.shape)}, {_DTYPE.value}, "
        f"causal={_CAUSAL.value}, implementation={_IMPLEMENTATION.value}")
  print(f"max |per shard - unsharded|: output {out_diff:.3g}, "
        f"q/k/v gradients {grad_diff:.3g}\n")
  print("| pass | unsharded ms (median) | per shard ms (median) | "
        "per shard / unsharded: median (min-max over repeats) |")
  print("| --- | --- | --- | --- |")
  rows = []
  for kind in ("forward", "forward+backward"):
    plain, shard = ms[(kind, "unsharded")], ms[(kind, "per shard")]
    ratios = [s / p for s, p in zip(shard, plain)]
    rows.append(dict(pass_=kind, unsharded_ms=plain, per_shard_ms=shard,
                     ratios=ratios))
    print(f"| {kind} | {np.median(plain):.3f} | {np.median(shard):.3f} | "
          f"{np.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", encoding="utf-8") as f:
      json.dump(dict(device=device, load=load, output_diff=out_diff,
                     grad_diff=grad_diff, rows=rows), f, indent=2)


if __name__ == "__main__":
  app.run(main)
