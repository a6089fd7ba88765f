"""Sweeps Triton attention block sizes on a CUDA GPU; prints table rows.

For every (kernel, head_dim, dtype, causal) it times the candidates (forward
alone for "fwd"; forward+backward for the backward kernels, the other kernels
keeping their table rows), skips candidates that fail to compile (e.g. too
much shared memory), and prints the winners in the format of
`kernels/triton/block_sizes.py`'s TABLE, also written to --out. Rows that win only
on this GPU's compute capability belong in `block_sizes.CAPABILITY_TABLE`
under it (the first line printed names it); rerun the compile gate either
way.

  python scripts/tune_attention.py --head_dims=64,128 --dtypes=bfloat16
"""

import itertools
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

import kernels
from kernels.triton import block_sizes
from kernels.triton import launch as triton_launch

_HEAD_DIMS = flags.DEFINE_list("head_dims", ["32", "64", "128", "256"], "")
_DTYPES = flags.DEFINE_list("dtypes", ["float16", "bfloat16", "float32"], "")
_KERNELS = flags.DEFINE_list("kernels", list(block_sizes.KERNELS), "")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 4096, "q_len == kv_len.")
_BATCH = flags.DEFINE_integer("batch", 4, "")
_HEADS = flags.DEFINE_integer("num_heads", 16, "")
_ITERS = flags.DEFINE_integer("iters", 20, "Timed calls per candidate.")
_OUT = flags.DEFINE_string("out", "block_sizes_tuned.txt", "Rows go here.")
# The full grid is 160 candidates per table row; narrow it to fit a short lease.
_BLOCK_MS = flags.DEFINE_list("block_ms", ["16", "32", "64", "128"],
                              "Candidate BLOCK_M (query tile rows).")
_BLOCK_NS = flags.DEFINE_list("block_ns", ["16", "32", "64", "128"],
                              "Candidate BLOCK_N (key tile rows).")
_WARPS = flags.DEFINE_list("num_warps", ["4", "8"], "Candidate warps.")
_STAGES = flags.DEFINE_list("num_stages", ["1", "2", "3", "4", "5"],
                            "Candidate software-pipelining stages.")
_CAUSAL = flags.DEFINE_list("causal", ["false", "true"],
                            "Which masks to tune: false, true or both.")


def _ints(flag) -> list[int]:
  return [int(x) for x in flag.value]


def _bools(flag) -> list[bool]:
  """`flag`'s entries as bools; raises on anything but true/false."""
  values = []
  for x in flag.value:
    if x.lower() not in ("true", "false"):
      raise app.UsageError(f"--{flag.name}: expected true or false entries, "
                           f"got {x!r}")
    values.append(x.lower() == "true")
  return values


def _time(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_ITERS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _candidate_time(kernel, head_dim, dtype, causal, cand):
  key = (kernel, head_dim, dtype, causal)
  shape = (_BATCH.value, _SEQ_LEN.value, _HEADS.value, head_dim)
  q, k, v = (jax.random.normal(kk, shape, dtype)
             for kk in jax.random.split(jax.random.key(0), 3))

  def fwd(q, k, v):
    return kernels.attention(q, k, v, causal=causal, implementation="triton")

  fn = fwd if kernel == "fwd" else jax.grad(
      lambda q, k, v: fwd(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))
  with block_sizes.override({key: cand}), kernels.triton_interpret(False):
    return _time(jax.jit(fn), q, k, v)


def main(argv):
  del argv
  if jax.default_backend() != "gpu":
    raise app.UsageError("tune_attention.py needs a CUDA GPU")
  candidates = [block_sizes.BlockSizes(*c) for c in itertools.product(
      _ints(_BLOCK_MS), _ints(_BLOCK_NS), _ints(_WARPS), _ints(_STAGES))]
  capability = triton_launch.target_capability()
  where = ("TABLE" if capability is None
           else f"TABLE or block_sizes.CAPABILITY_TABLE[{capability}]")
  lines = [f"# {jax.devices()[0].device_kind}, compute capability "
           f"{capability}: rows for {where}"]
  print(lines[0], flush=True)
  for kernel, head_dim, dtype, causal in itertools.product(
      _KERNELS.value, _ints(_HEAD_DIMS), _DTYPES.value, _bools(_CAUSAL)):
    if (kernel, head_dim, dtype, causal) not in block_sizes.TABLE:
      continue
    best = None
    for cand in candidates:
      try:
        t = _candidate_time(kernel, head_dim, dtype, causal, cand)
      except Exception as e:  # pylint: disable=broad-except
        print(f"skip {kernel} d={head_dim} {dtype} causal={causal} {cand}: "
              f"{type(e).__name__}", flush=True)
        continue
      print(f"  {kernel} d={head_dim} {dtype} causal={causal} {cand}: "
            f"{t * 1e3:.3f} ms", flush=True)
      if best is None or t < best[0]:
        best = (t, cand)
    if best is None:
      continue
    c = best[1]
    line = (f'    ("{kernel}", {head_dim}, "{dtype}", {causal}): BlockSizes('
            f"{c.block_m}, {c.block_n}, {c.num_warps}, {c.num_stages}),"
            f"  # {best[0] * 1e3:.3f} ms on {jax.devices()[0].device_kind}")
    print(line, flush=True)
    lines.append(line)
  with open(_OUT.value, "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
