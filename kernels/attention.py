"""The attention entry point: argument validation and dispatch."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels import backends
from kernels import masking
from kernels import mesh_axes
from kernels import ring

_DTYPES = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16),
           np.dtype(jnp.float32))
IMPLEMENTATIONS = tuple(backends.REGISTRY)

SegmentIds = jax.Array | tuple[jax.Array, jax.Array]


def _check_int_array(name: str, x, shape: Sequence[int], *,
                     low: int | None = None, high: int | None = None,
                     high_name: str | None = None) -> jax.Array:
  """`x` as int32 of `shape`. Concrete values are checked against the int32
  range (int64 ones would wrap in the cast) and `[low, high]` where given;
  traced ones cannot be."""
  if isinstance(x, jax.core.Tracer) or (
      isinstance(x, jax.Array) and not x.is_fully_addressable):
    concrete, dtype = None, x.dtype  # values unknown here
  else:
    concrete = np.asarray(x) if not isinstance(x, (str, bytes)) else None
    dtype = None if concrete is None else concrete.dtype
  if dtype is None or not np.issubdtype(dtype, np.integer):
    got = f"{type(x).__name__} {x!r}" if dtype is None else (
        f"{type(x).__name__} of dtype {dtype}")
    raise TypeError(f"{name} must be an integer array, got {got}")
  if tuple(np.shape(x)) != tuple(shape):
    raise ValueError(f"{name} must have shape {tuple(shape)}, got "
                     f"{tuple(np.shape(x))}")
  if concrete is not None and concrete.size:
    info = np.iinfo(np.int32)
    lo = info.min if low is None else low
    hi = info.max if high is None else high
    if concrete.min() < lo or concrete.max() > hi:
      upper = f"{high_name}={hi}" if high_name else f"{hi}"
      raise ValueError(f"{name} must lie in [{lo}, {upper}], got min "
                       f"{concrete.min()} and max {concrete.max()}")
  return jnp.asarray(x).astype(jnp.int32)


def _canonical_segments(segment_ids, batch: int, q_len: int, kv_len: int):
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError("segment_ids must be one array or a pair "
                       f"(q_segment_ids, kv_segment_ids), got {len(segment_ids)} items")
    q_seg, kv_seg = segment_ids
  else:
    if q_len != kv_len:
      raise ValueError(
          f"segment_ids as one array needs q_len == kv_len, got {q_len} and "
          f"{kv_len}; pass a pair (q_segment_ids, kv_segment_ids)")
    q_seg = kv_seg = segment_ids
  return (_check_int_array("q_segment_ids", q_seg, (batch, q_len)),
          _check_int_array("kv_segment_ids", kv_seg, (batch, kv_len)))


# Positions plus window sides must fit int32 in every kernel: a larger side
# is None (unbounded) in effect, and saying None is what the error asks.
_MAX_WINDOW = 2**30 - 1


def _check_window(window) -> tuple[int | None, int | None]:
  if window is None:
    return None, None
  if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
    window = (window, window)  # jax.nn's local_window_size=w: (w, w)
  if not isinstance(window, (tuple, list)) or len(window) != 2:
    raise ValueError(f"window must be an int >= 0 or a pair (left, right) "
                     f"of ints >= 0 or None, got {window!r}")
  for side, value in zip(("left", "right"), window):
    if value is not None and (isinstance(value, bool) or not isinstance(
        value, (int, np.integer)) or not 0 <= value <= _MAX_WINDOW):
      raise ValueError(f"window {side} side must be an int in [0, "
                       f"{_MAX_WINDOW}] or None (unbounded), got {value!r}")
  return tuple(None if w is None else int(w) for w in window)


def _check_scale(scale, head_dim: int) -> float:
  """`scale` as a Python float (default `1 / sqrt(head_dim)`). It is
  compiled into the kernels, so it must be concrete: a Python or numpy
  number, or a concrete 0-d array."""
  if scale is None:
    return 1.0 / math.sqrt(head_dim)
  if isinstance(scale, jax.core.Tracer):
    raise TypeError("scale must be a concrete number (it is compiled into "
                    "the kernels), got a traced value; fold a traced scale "
                    "into q instead")
  if (isinstance(scale, (bool, np.bool_)) or np.ndim(scale) != 0 or not (
      isinstance(scale, numbers.Real) or np.issubdtype(
          np.asarray(scale).dtype, np.number))):
    raise TypeError(f"scale must be a real number, got "
                    f"{type(scale).__name__} {scale!r}")
  value = float(scale)
  if not math.isfinite(value) or abs(value) > float(np.finfo(np.float32).max):
    raise ValueError(f"scale must be finite in float32, got {scale!r}")
  return value


def _check_causal(causal) -> None:
  if not isinstance(causal, (bool, np.bool_)):
    raise TypeError(f"causal must be a bool, got {type(causal).__name__} "
                    f"{causal!r}")


def _check_softcap(softcap) -> float | None:
  if softcap is None:
    return None
  if isinstance(softcap, bool) or not isinstance(
      softcap, (int, float, np.floating, np.integer)) or not (
          math.isfinite(softcap) and softcap > 0):
    raise ValueError(f"softcap must be a positive finite Python float or None, "
                     f"got {softcap!r}")
  return float(softcap)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
              causal: bool = False,
              key_lengths: jax.Array | None = None,
              segment_ids: SegmentIds | None = None,
              scale: float | None = None,
              window: int | tuple[int | None, int | None] | None = None,
              softcap: float | None = None,
              return_residuals: bool = False,
              implementation: str | None = None,
              mesh: jax.sharding.Mesh | None = None,
              batch_axes: str | Sequence[str] | None = None,
              head_axes: str | Sequence[str] | None = None,
              context_axis: str | None = None,
              context_layout: str = "contiguous",
              q_offset: jax.Array | None = None):
  """Scaled dot-product attention `softmax(cap(scale * Q K^T) + mask) V`.

  Args:
    q: queries `(batch, q_len, num_heads, head_dim)`.
    k: keys `(batch, kv_len, num_kv_heads, head_dim)`; `num_kv_heads` divides
      `num_heads` (grouped-query / multi-query attention): query head `h` uses
      kv head `h // (num_heads // num_kv_heads)`.
    v: values, same shape as `k`. q, k and v share one dtype of float16,
      bfloat16 or float32; accumulation is float32, the output has their dtype.
    causal: query `i` sees key `j` only if `j <= i + kv_len - q_len` (aligned
      at the bottom-right, as in decoding and FlashAttention >= 2.1; the
      usual lower triangle when `q_len == kv_len`). tokamax aligns causal
      cross-attention at the top-left (`j <= i`) instead. To get that here:
      with `q_len <= kv_len` no query sees a key past `q_len - 1`, so pass
      `k[:, :q_len], v[:, :q_len]` with `causal=True`; with `q_len > kv_len`
      pass `causal=False, window=(None, q_len - kv_len)`.
    key_lengths: `(batch,)` integer; keys at positions `>= key_lengths[b]` are
      padding.
    segment_ids: `(batch, seq)` integer when `q_len == kv_len`, or a pair
      `((batch, q_len), (batch, kv_len))`; a query attends only to keys of its
      own segment.
    scale: softmax scale, a concrete real number (compiled into the
      kernels; a traced scale raises); default `1 / sqrt(head_dim)`.
    window: `(left, right)`: query `i` sees key `j` only if `i' - left <= j
      <= i' + right`, `i' = i + kv_len - q_len` (the causal alignment); a
      side None is unbounded; an int `w` is `(w, w)`, as jax.nn's
      `local_window_size`. `(w, 0)` with `causal` is sliding-window
      attention over the query and its `w` predecessors. Combines with
      every other mask.
    q_offset: `(batch,)` integer, the key position of each example's first
      query (FlashAttention's `cache_seqlens` in `flash_attn_with_kvcache`):
      the causal and window masks then align query `i` at `i' = i +
      q_offset[b]` instead of `i + kv_len - q_len`. For decoding a chunk of
      `q_len` tokens written at cache index `t` of a `max_len` cache, pass
      `q_offset=t` (and `key_lengths=t + q_len`): only the chunk's rows are
      computed, and the Triton kernels skip the key blocks the offset masks.
      Not expressible through jax.nn.dot_product_attention (xla, cudnn).
    softcap: Gemma 2's logit soft-capping: the scaled scores become
      `softcap * tanh(scores / softcap)` before masking (exact backward).
    return_residuals: also return the log-sum-exp of each row's capped,
      masked scores, `(batch, num_heads, q_len)` float32 whatever the input
      dtype, natural log, `-inf` for a row without any allowed key.
      Partial attentions over disjoint key sets merge with it: `o = sum_i
      exp(lse_i - lse) o_i`, `lse = logaddexp(lse_1, lse_2, ...)`.
      Differentiable. (`jax.nn.dot_product_attention(return_residual=True)`
      gives `(batch, q_len, num_heads)` in the input dtype, without
      gradient, about -2.4e38 for an empty row; `lse.transpose(0, 2, 1)`
      maps ours onto its layout.)
    implementation: one of `IMPLEMENTATIONS`: "triton" (fused Triton kernels;
      compiled on CUDA GPUs, under Triton's interpreter where requested, see
      `kernels.triton_interpret`), "xla" / "cudnn"
      (`jax.nn.dot_product_attention`), "reference" (n x n scores, float32),
      "blockwise" (online softmax in `lax.scan`, O(n) memory). None picks:
      the compiled Triton kernels on CUDA GPUs; otherwise "xla" while the
      float32 score matrix fits in `backends.XLA_SCORE_BYTES_LIMIT` bytes
      ("reference" if xla cannot express the mask), else "blockwise". A named
      implementation that cannot serve the call raises ValueError.
    mesh, batch_axes, head_axes: run per shard. With a `jax.sharding.Mesh`,
      the batch is split over the mesh axes `batch_axes` and the heads over
      `head_axes` (names or tuples of names, each optional), and the chosen
      implementation runs on every device's shard inside `jax.shard_map`,
      with no collective forward or backward: attention is independent
      across batch rows and heads. Query heads split with their kv heads
      (grouped-query attention stays exact), so `num_kv_heads` must divide
      by the head split. The sequence axes are never split here (context
      parallelism is a separate, collective algorithm).
      Without a mesh, concrete q, k and v (`jax.Array`s, not tracers) whose
      `NamedSharding` splits the batch (dimension 0) or the heads
      (dimension 2) run per shard on their mesh as if `mesh`, `batch_axes`
      and `head_axes` had been passed; k and v must then be sharded like q
      (same mesh, batch axes and head axes), else ValueError. Under `jit`,
      `grad` or `vmap` the inputs are tracers and carry no usable sharding,
      so pass `mesh=` there (as MaxText and tokamax do): otherwise the call
      is unchanged and XLA gathers whatever an opaque kernel (Triton,
      cuDNN) cannot partition. Replicated and single-device inputs are
      unchanged. A concrete q, k or v whose `NamedSharding` splits the
      sequence (dimension 1) or head_dim (dimension 3) raises ValueError,
      with or without `mesh`.

    context_axis: context parallelism (ring attention, `kernels.ring`):
      with `mesh`, the sequences of q, k and v are split over this mesh
      axis (the batch and heads over `batch_axes` and `head_axes` as
      above); key blocks travel round the ring and the partial outputs
      merge by their log-sum-exp, so no device holds the whole sequence.
      Needs an implementation that returns the log-sum-exp (triton,
      reference, blockwise; None picks one), lengths divisible by the
      axis size. Every mask (causal, window, key lengths, segments,
      `q_offset`) means what it means without the axis: each ring step
      masks its block pair with the blocks' offset, and steps whose block
      pair is wholly masked are skipped. `context_layout="zigzag"` balances
      causal work (see `kernels.ring`).
    context_layout: "contiguous" (device `d` holds the `d`-th block of the
      sequence) or "zigzag" (it holds chunks `d` and `2c - 1 - d` of `2c`;
      permute with `kernels.ring.to_zigzag` / `from_zigzag`). Only with
      `context_axis`.

  Returns:
    `(batch, q_len, num_heads, head_dim)`, and the log-sum-exp when
    `return_residuals`. A query with no allowed key gives a zero row and zero
    gradients.
  """
  a = _checked_arguments(q, k, v, causal=causal, key_lengths=key_lengths,
                         segment_ids=segment_ids, scale=scale, window=window,
                         softcap=softcap, return_residuals=return_residuals,
                         implementation=implementation, q_offset=q_offset)
  checked = dict(causal=a.causal, key_lengths=a.key_lengths,
                 segment_ids=a.segment_ids, scale=a.scale, window=a.window,
                 softcap=a.softcap, return_residuals=a.return_residuals,
                 implementation=implementation, q_offset=a.q_offset)
  if context_axis is not None:
    return _context_parallel(
        q, k, v, mesh=mesh, context_axis=context_axis,
        context_layout=context_layout, batch_axes=batch_axes,
        head_axes=head_axes, **checked)
  if context_layout not in ring.LAYOUTS:
    raise ValueError(f"context_layout must be one of {ring.LAYOUTS}, got "
                     f"{context_layout!r}")
  if context_layout != "contiguous":
    raise ValueError(f"context_layout: {context_layout!r} needs "
                     f"context_axis; without it the sequence is whole")
  if mesh is None and batch_axes is None and head_axes is None:
    mesh, batch_axes, head_axes = _detect_sharding(q, k, v)
  if mesh is not None or batch_axes is not None or head_axes is not None:
    return _per_shard(q, k, v, mesh=mesh, batch_axes=batch_axes,
                      head_axes=head_axes, **checked)

  batch, q_len, num_heads, head_dim = q.shape
  _, kv_len, num_kv_heads, _ = k.shape
  q_seg, kv_seg = a.segment_ids or (None, None)
  window_left, window_right = a.window
  call = backends.AttentionCall(
      batch=batch, q_len=q_len, kv_len=kv_len, num_heads=num_heads,
      num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=np.dtype(q.dtype),
      causal=a.causal, has_key_lengths=a.key_lengths is not None,
      has_segments=q_seg is not None, platform=jax.default_backend(),
      window=a.window, softcap=a.softcap is not None,
      return_residuals=a.return_residuals,
      has_q_offset=a.q_offset is not None)
  if implementation is None:
    backend = backends.select(call)
  else:
    backend = backends.REGISTRY[implementation]
    reason = backend.supports(call)
    if reason is not None:
      raise ValueError(f"implementation={implementation!r} cannot serve this "
                       f"call: {reason}")
  mask = masking.Mask(causal=a.causal, key_lengths=a.key_lengths,
                      q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                      window_left=window_left, window_right=window_right,
                      q_offset=a.q_offset)
  return backend.fn(q, k, v, mask, a.scale, softcap=a.softcap,
                    return_residuals=a.return_residuals)


class _Arguments(NamedTuple):
  """`attention`'s arguments, checked and in canonical form."""
  causal: bool
  key_lengths: jax.Array | None
  q_offset: jax.Array | None
  segment_ids: tuple[jax.Array, jax.Array] | None
  scale: float
  window: tuple[int | None, int | None]
  softcap: float | None
  return_residuals: bool


def _checked_arguments(q, k, v, *, causal, key_lengths, segment_ids, scale,
                       window, softcap, return_residuals, implementation,
                       q_offset) -> _Arguments:
  """Every check of `attention`'s arguments, made once on the global arrays
  whichever path (one device, per shard, ring) then runs them."""
  def check_dtype(name, x):
    if np.dtype(x.dtype) not in _DTYPES:
      raise TypeError(f"{name} must be float16, bfloat16 or float32, got "
                      f"{x.dtype}")

  _check_rank4(q, k, v, each=check_dtype)
  if not q.dtype == k.dtype == v.dtype:
    raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype} "
                    f"and {v.dtype}")
  batch, q_len, num_heads, head_dim = q.shape
  _, kv_len, num_kv_heads, _ = k.shape
  if k.shape[0] != batch:
    raise ValueError(f"k must have the batch of q ({batch}), got "
                     f"{k.shape[0]}")
  for name, size in (("num_heads of q", num_heads),
                     ("num_kv_heads of k and v", num_kv_heads),
                     ("head_dim", head_dim)):
    if size < 1:
      raise ValueError(f"{name} must be at least 1, got {size}")
  if k.shape[3] != head_dim:
    raise ValueError(f"head_dim of k ({k.shape[3]}) must equal head_dim of q "
                     f"({head_dim})")
  if v.shape != k.shape:
    raise ValueError(f"v must have the shape of k {k.shape}, got {v.shape}")
  if num_heads % num_kv_heads:
    raise ValueError(f"num_heads of q ({num_heads}) must be divisible by the "
                     f"num_kv_heads of k and v ({num_kv_heads})")
  if key_lengths is not None:
    key_lengths = _check_int_array("key_lengths", key_lengths, (batch,),
                                   low=0, high=kv_len, high_name="kv_len")
  _check_causal(causal)
  window = _check_window(window)
  if q_offset is not None:
    q_offset = _check_int_array("q_offset", q_offset, (batch,),
                                low=-_MAX_WINDOW - 1, high=_MAX_WINDOW + 1)
    if not causal and window == (None, None):
      raise ValueError("q_offset only moves the causal and window masks; "
                       "it needs causal=True or a window, got neither")
  q_seg, kv_seg = _canonical_segments(segment_ids, batch, q_len, kv_len)
  if not isinstance(return_residuals, (bool, np.bool_)):
    raise TypeError(f"return_residuals must be a bool, got "
                    f"{type(return_residuals).__name__}")
  if implementation is not None and (
      not isinstance(implementation, str)
      or implementation not in backends.REGISTRY):
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or "
                     f"None, got {implementation!r}")
  return _Arguments(
      causal=bool(causal), key_lengths=key_lengths, q_offset=q_offset,
      segment_ids=None if q_seg is None else (q_seg, kv_seg),
      scale=_check_scale(scale, head_dim), window=window,
      softcap=_check_softcap(softcap),
      return_residuals=bool(return_residuals))


def _input_sharding(name: str, x, wanted: tuple | None = None):
  """`(mesh, batch_axes, head_axes)` of a concrete rank-4 `x` laid out by a
  `NamedSharding`; None for a tracer or any other array or layout.

  Raises ValueError if the sharding splits the sequence (dimension 1) or
  head_dim (dimension 3): only batch rows and heads are independent. The
  message suggests `wanted` (batch axes, head axes), by default x's own.
  """
  if (isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array)
      or x.ndim != 4
      or not isinstance(x.sharding, jax.sharding.NamedSharding)):
    return None
  mesh, spec = x.sharding.mesh, x.sharding.spec
  axes = [mesh_axes.axis_tuple(e) for e in spec] + [()] * (4 - len(spec))
  for dim, what in ((1, "the sequence"), (3, "head_dim")):
    if _split(mesh, axes[dim]) > 1:
      b, h = wanted or (axes[0], axes[2])
      spec_wanted = jax.sharding.PartitionSpec(b or None, None, h or None,
                                               None)
      raise ValueError(
          f"{name} is sharded {spec}, which splits {what} (dimension {dim}) "
          f"over mesh axes {axes[dim]}; attention runs per (batch, heads) "
          f"shard only: reshard q, k and v to {spec_wanted}, or wait for "
          f"context-parallel attention (issue 26)")
  return mesh, axes[0], axes[2]


def _detect_sharding(q, k, v):
  """`(mesh, batch_axes, head_axes)` from q's `NamedSharding` if q, k or v
  is a concrete array split over the batch or the heads, after checking
  that k and v are sharded like q; `(None, None, None)` otherwise."""
  found = {name: _input_sharding(name, x)
           for name, x in (("q", q), ("k", k), ("v", v))}
  if not any(f is not None and _split(f[0], f[1] + f[2]) > 1
             for f in found.values()):
    return None, None, None

  def layout(name, x):
    if found[name] is None:
      kind = type(getattr(x, "sharding", None)).__name__
      return f"{type(x).__name__} with sharding {kind}"
    return f"{x.sharding.spec} on mesh {dict(found[name][0].shape)}"

  for name, x in (("k", k), ("v", v)):
    if found[name] == found["q"]:
      continue
    if found[name] is None or found["q"] is None:
      what = "the kind of sharding"
    else:
      what = ", ".join(field for field, a, b in zip(
          ("mesh", "batch axes (dimension 0)", "head axes (dimension 2)"),
          found[name], found["q"]) if a != b)
    raise ValueError(
        f"{name} and q differ in {what}: {name} is {layout(name, x)}, q is "
        f"{layout('q', q)}; to run per shard from the inputs' shardings, k "
        f"and v must be NamedSharding arrays on q's mesh with q's batch and "
        f"head axes: reshard them, or pass mesh=, batch_axes= and head_axes=")
  return found["q"]


def _check_rank4(q, k, v, each=None) -> None:
  """Raises unless q, k and v have rank 4 `(batch, seq, heads, head_dim)`;
  `each(name, x)` runs on each right after its own rank check."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if getattr(x, "ndim", None) != 4:
      raise ValueError(f"{name} must have rank 4 (batch, seq, heads, "
                       f"head_dim), got shape {jnp.shape(x)}")
    if each is not None:
      each(name, x)


def _check_mesh_axes(mesh, batch_axes, head_axes, given: str
                     ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """`mesh` a `jax.sharding.Mesh` (TypeError saying it is needed when
  `given` is), and the batch and head axes as tuples of its axis names."""
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh when {given} is "
                    f"given, got {type(mesh).__name__}")
  return (mesh_axes.mesh_axis_names("batch_axes", batch_axes, mesh),
          mesh_axes.mesh_axis_names("head_axes", head_axes, mesh))


def _check_shard_split(q, k, mesh, batch_axes, head_axes) -> None:
  """Raises unless the batch axes divide the batch and the head axes both
  head counts (each shard keeps whole query groups with their kv head)."""
  batch, num_heads, num_kv_heads = q.shape[0], q.shape[2], k.shape[2]
  batch_split, head_split = _split(mesh, batch_axes), _split(mesh, head_axes)
  if batch % batch_split:
    raise ValueError(f"batch_axes {batch_axes} split the batch {batch_split} "
                     f"ways; q has batch {batch}, not divisible")
  if num_kv_heads % head_split or num_heads % head_split:
    raise ValueError(
        f"head_axes {head_axes} split the heads {head_split} ways; q has "
        f"{num_heads} heads and k/v {num_kv_heads}: both must divide, so "
        f"each shard keeps whole groups of query heads with their kv head")


def _context_parallel(q, k, v, *, mesh, context_axis, context_layout,
                      batch_axes, head_axes, causal, key_lengths, segment_ids,
                      scale, window, softcap, return_residuals,
                      implementation, q_offset):
  """`attention` with the sequence split over `context_axis`: `ring`."""
  batch_axes, head_axes = _check_mesh_axes(mesh, batch_axes, head_axes,
                                           "context_axis")
  if not isinstance(context_axis, str) or context_axis not in (
      mesh.axis_names):
    raise ValueError(f"context_axis must name an axis of the mesh "
                     f"{tuple(mesh.axis_names)}, got {context_axis!r}")
  if context_axis in batch_axes + head_axes or set(batch_axes) & set(
      head_axes):
    raise ValueError(f"context_axis {context_axis!r}, batch_axes "
                     f"{batch_axes} and head_axes {head_axes} must be "
                     f"different mesh axes")
  if implementation in ("xla", "cudnn"):
    raise ValueError(f"implementation={implementation!r} cannot serve "
                     f"context_axis: ring attention merges blocks by their "
                     f"log-sum-exp, which it does not return; use triton, "
                     f"reference or blockwise (or None)")
  if context_layout not in ring.LAYOUTS:
    raise ValueError(f"context_layout must be one of {ring.LAYOUTS}, got "
                     f"{context_layout!r}")
  devices = mesh.shape[context_axis]
  chunks = devices * (2 if context_layout == "zigzag" else 1)
  q_len, kv_len = q.shape[1], k.shape[1]
  for name, length in (("q", q_len), ("k", kv_len)):
    if length % chunks:
      raise ValueError(
          f"{name}: sequence length {length} is not divisible by the "
          f"{chunks} chunks of context_layout {context_layout!r} over the "
          f"{devices} devices of context_axis {context_axis!r}; pad it to a "
          f"multiple of {chunks} and mark the padding with key_lengths or "
          f"segment_ids")
  _check_shard_split(q, k, mesh, batch_axes, head_axes)
  # The arguments arrive checked and canonical (`_checked_arguments`).
  q_seg, kv_seg = segment_ids or (None, None)
  return ring.ring_attention(
      attention, q, k, v, mesh=mesh, context_axis=context_axis,
      layout=context_layout, batch_axes=batch_axes, head_axes=head_axes,
      causal=causal, window=window, key_lengths=key_lengths,
      q_offset=q_offset, q_segments=q_seg, kv_segments=kv_seg,
      return_residuals=return_residuals, scale=scale, softcap=softcap,
      implementation=implementation)


def _split(mesh: jax.sharding.Mesh, axes: tuple[str, ...]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _per_shard(q, k, v, *, mesh, batch_axes, head_axes, key_lengths,
               q_offset, segment_ids, **options):
  """`attention` on every device's (batch, heads) shard, in `shard_map`:
  q `(batch, q_len, num_heads, head_dim)`, k and v `(batch, kv_len,
  num_kv_heads, head_dim)`, the batch split over `batch_axes` and both head
  counts over `head_axes`; `options` are `attention`'s other arguments."""
  batch_axes, head_axes = _check_mesh_axes(mesh, batch_axes, head_axes,
                                           "batch_axes or head_axes")
  if set(batch_axes) & set(head_axes):
    raise ValueError(f"batch_axes {batch_axes} and head_axes {head_axes} "
                     f"must be different mesh axes")
  # Refuses a concrete input whose sharding splits the sequence or head_dim.
  _check_rank4(q, k, v, each=lambda name, x: _input_sharding(
      name, x, (batch_axes, head_axes)))
  _check_shard_split(q, k, mesh, batch_axes, head_axes)
  # The arguments arrive checked and canonical (`_checked_arguments`).
  operands = [q, k, v]
  if key_lengths is not None:
    operands.append(key_lengths)
  if q_offset is not None:
    operands.append(q_offset)
  q_seg, kv_seg = segment_ids or (None, None)
  if q_seg is not None:
    operands += [q_seg, kv_seg]
  static = (mesh, batch_axes, head_axes, key_lengths is not None,
            q_offset is not None, q_seg is not None,
            _typed(tuple(sorted(options.items()))))
  try:
    hash(static)
  except TypeError:  # an option of the wrong type, which `attention` names
    return _shard_mapped.__wrapped__(*static)(*operands)
  return _shard_mapped(*static)(*operands)


def _typed(value):
  """`value` as a cache key holding the type of every part, so `causal=1`
  does not reuse the function traced for `causal=True` (and skip the
  TypeError `attention` raises); `_untyped` inverts it."""
  if isinstance(value, (tuple, list)):
    return type(value), tuple(_typed(v) for v in value)
  return type(value), value


def _untyped(typed):
  kind, value = typed
  if issubclass(kind, (tuple, list)):
    value = [_untyped(v) for v in value]
    return value if issubclass(kind, list) else tuple(value)
  return value


@functools.lru_cache(maxsize=64)
def _shard_mapped(mesh, batch_axes, head_axes, has_lengths, has_offsets,
                  has_segments, options):
  """`attention` jitted over `shard_map`: q, k, v `(batch, seq, heads,
  head_dim)`, then `(batch,)` key lengths, `(batch,)` query offsets and two
  `(batch, seq)` segment ids where present; `options`, `attention`'s other arguments as `_typed`
  `(name, value)` pairs. Cached, so an eager call compiles once per layout."""
  options = dict(_untyped(options))
  return_residuals = options["return_residuals"]
  b = batch_axes or None
  h = head_axes or None
  P = jax.sharding.PartitionSpec  # noqa: N806
  qkv_spec = P(b, None, h, None)
  specs = ([qkv_spec] * 3 + [P(b)] * (has_lengths + has_offsets) +
           [P(b, None)] * (2 * has_segments))

  def local(q, k, v, *rest):
    rest = list(rest)
    lengths = rest.pop(0) if has_lengths else None
    offsets = rest.pop(0) if has_offsets else None
    segments = (rest.pop(0), rest.pop(0)) if has_segments else None
    return attention(q, k, v, key_lengths=lengths, q_offset=offsets,
                     segment_ids=segments, **options)

  out_specs = (qkv_spec, P(b, h, None)) if return_residuals else qkv_spec
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=tuple(specs),
                               out_specs=out_specs, check_vma=False))
