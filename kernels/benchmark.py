"""Timing, FLOP and memory figures of the attention implementations.

FLOP convention: forward = 4 * batch * heads * q_len * kv_len * head_dim (two
matmuls, 2 flops per multiply-add), halved for causal attention;
forward+backward = 3.5 x forward (the backward does 5 matmuls where the
forward does 2, plus the forward itself). A sliding window of `w` keys
(`window=(w, 0)` on causal rows, `(w, w)` otherwise) counts the (query,
key) pairs it allows exactly in place of q_len * kv_len (/ 2).
"""

from __future__ import annotations

import csv
import importlib.util
import dataclasses
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

import kernels
from kernels import backends


@dataclasses.dataclass
class Row:
  implementation: str
  pass_: str  # "fwd" or "fwd+bwd"
  seq_len: int
  batch: int
  num_heads: int
  head_dim: int
  causal: bool
  dtype: str
  window: int | None = None  # w: window (w, 0) causal, (w, w) otherwise
  ms: float | None = None
  tflops: float | None = None
  peak_mib: float | None = None
  status: str = "ok"  # "ok", "OOM", or "unsupported: <reason>"


def window_pairs(seq: int, window: int, causal: bool) -> int:
  """(query, key) pairs a square self-attention of `seq` allows with a
  window of `window` keys before (and, not causal, after) each query."""
  before = sum(min(i, window) for i in range(seq))
  return seq + before * (1 if causal else 2)


def flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool,
          backward: bool, window: int | None = None) -> float:
  if window is None:
    pairs = seq * seq / (2 if causal else 1)
  else:
    pairs = window_pairs(seq, window, causal)
  f = 4.0 * batch * heads * pairs * head_dim
  return f * 3.5 if backward else f


def _window(window: int | None, causal: bool):
  if window is None:
    return None
  return (window, 0 if causal else window)


def available_implementations() -> list[str]:
  """Implementations worth timing on this device (never the interpreter)."""
  names = ["triton", "xla", "cudnn", "reference", "blockwise"]
  if jax.default_backend() != "gpu":
    names = [n for n in names if n not in ("triton", "cudnn")]
  if importlib.util.find_spec("tokamax") is not None:
    names.append("tokamax")
  return names


def _fn(implementation: str, causal: bool, backward: bool,
        window: int | None = None):
  if implementation == "tokamax":
    import tokamax  # pylint: disable=g-import-not-at-top

    if window is not None:
      raise ValueError("window: the tokamax rows time dense attention only; "
                       f"got window={window}")

    def fwd(q, k, v):
      return tokamax.dot_product_attention(q, k, v, is_causal=causal)
  else:
    def fwd(q, k, v):
      return kernels.attention(q, k, v, causal=causal,
                               window=_window(window, causal),
                               implementation=implementation)
  if not backward:
    return fwd
  return jax.grad(lambda q, k, v: fwd(q, k, v).astype(jnp.float32).sum(),
                  argnums=(0, 1, 2))


def is_oom(e: Exception) -> bool:
  """Whether `e` is XLA running out of device memory."""
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
  """Bytes XLA's buffer assignment reserves for one compiled program (per
  device for an SPMD program): `CompiledMemoryStats`' fields by their short
  names. `aliased` is the part of `outputs` that reuses donated arguments;
  `generated_code` the executable itself (0 where a backend says nothing)."""
  temp: int
  arguments: int
  outputs: int
  aliased: int = 0
  generated_code: int = 0

  @property
  def total(self) -> int:
    """temp + arguments + outputs: the program's footprint while it runs."""
    return self.temp + self.arguments + self.outputs


def compile_attention(implementation: str, shape: Sequence[int], dtype,
                      *, causal: bool, backward: bool,
                      window: int | None = None):
  """Compiles attention for q, k, v of `shape` without allocating them.

  Args:
    implementation: a `kernels.IMPLEMENTATIONS` name, or "tokamax".
    shape: `(batch, seq, heads, head_dim)` of q, k and v.
    dtype: their dtype.
    causal: causal masking.
    backward: compile `jax.grad` of the output's sum w.r.t. q, k and v (the
      forward runs inside it) instead of the forward alone.
    window: a sliding window of this many keys (see the module docstring).

  Returns:
    The `jax.stages.Compiled` program, called as `compiled(q, k, v)`.
  """
  spec = jax.ShapeDtypeStruct(tuple(shape), dtype)
  return jax.jit(_fn(implementation, causal, backward, window)).lower(
      spec, spec, spec).compile()


def compiled_memory(compiled) -> CompiledMemory | None:
  """XLA's `memory_analysis()` of `compiled`; None where the backend
  reports none. Some jax versions return one entry per device: the first
  (an SPMD program's devices hold the same sizes)."""
  mem = compiled.memory_analysis()
  if isinstance(mem, (list, tuple)):
    mem = mem[0] if mem else None
  if mem is None:
    return None
  return CompiledMemory(
      mem.temp_size_in_bytes, mem.argument_size_in_bytes,
      mem.output_size_in_bytes,
      int(getattr(mem, "alias_size_in_bytes", 0) or 0),
      int(getattr(mem, "generated_code_size_in_bytes", 0) or 0))


def measure(row: Row, *, warmup: int, iters: int) -> Row:
  """Fills `row` in place with the median time, TFLOP/s and peak memory."""
  shape = (row.batch, row.seq_len, row.num_heads, row.head_dim)
  keys = jax.random.split(jax.random.key(0), 3)
  backward = row.pass_ == "fwd+bwd"
  try:
    if row.implementation in backends.REGISTRY:
      call = backends.AttentionCall(
          row.batch, row.seq_len, row.seq_len, row.num_heads, row.num_heads,
          row.head_dim, jnp.dtype(row.dtype), row.causal, False, False,
          jax.default_backend(),
          window=_window(row.window, row.causal) or (None, None))
      reason = backends.REGISTRY[row.implementation].supports(call)
      if reason:
        row.status = f"unsupported: {reason}"
        return row
    q, k, v = (jax.random.normal(key, shape, row.dtype) for key in keys)
    compiled = compile_attention(row.implementation, shape, row.dtype,
                                 causal=row.causal, backward=backward,
                                 window=row.window)
    mem = compiled_memory(compiled)
    if mem is not None:
      row.peak_mib = mem.total / 2**20
    for _ in range(warmup):
      jax.block_until_ready(compiled(q, k, v))
    times = []
    for _ in range(iters):
      start = time.perf_counter()
      jax.block_until_ready(compiled(q, k, v))
      times.append(time.perf_counter() - start)
  except Exception as e:  # pylint: disable=broad-except
    if is_oom(e):
      row.status = "OOM"
      return row
    raise
  row.ms = statistics.median(times) * 1e3
  row.tflops = flops(row.batch, row.num_heads, row.seq_len, row.head_dim,
                     row.causal, backward, row.window) / (row.ms * 1e-3) / 1e12
  return row


def grid(seq_lens: Sequence[int], head_dims: Sequence[int],
         implementations: Sequence[str], *, tokens: int, num_heads: int,
         dtype: str, causal: Sequence[bool] = (False, True),
         passes: Sequence[str] = ("fwd", "fwd+bwd"),
         window: int | None = None) -> list[Row]:
  return [Row(impl, p, s, max(1, tokens // s), num_heads, d, c, dtype, window)
          for s in seq_lens for d in head_dims for c in causal
          for p in passes for impl in implementations]


_COLUMNS = ("implementation", "pass", "seq_len", "batch", "num_heads",
            "head_dim", "causal", "dtype", "window", "ms", "tflops",
            "peak_mib", "status")


def cells(row: Row) -> list[str]:
  def fmt(x, spec):
    return "" if x is None else format(x, spec)
  return [row.implementation, row.pass_, str(row.seq_len), str(row.batch),
          str(row.num_heads), str(row.head_dim), str(row.causal), row.dtype,
          fmt(row.window, "d"), fmt(row.ms, ".3f"),
          fmt(row.tflops, ".3f"), fmt(row.peak_mib, ".1f"), row.status]


def write_csv(rows: Sequence[Row], path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(_COLUMNS)
    writer.writerows(cells(r) for r in rows)


def markdown(rows: Sequence[Row]) -> str:
  lines = ["| " + " | ".join(_COLUMNS) + " |",
           "| " + " | ".join("---" for _ in _COLUMNS) + " |"]
  lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
  return "\n".join(lines) + "\n"
