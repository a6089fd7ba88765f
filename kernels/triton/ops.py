"""JAX wrapper of the Triton kernels: `jax.custom_vjp` and batching.

Forward: `_attn_fwd` returns the output and the base-2 log-sum-exp per row.
Backward: `_attn_bwd_preprocess` computes `delta = rowsum(dO * O)`, then
`_attn_bwd_dkdv` (one program per key block and kv head) and `_attn_bwd_dq`
(one program per query block and query head) recompute the probabilities from
the saved log-sum-exp, so no n x n matrix is ever stored. Where a
"bwd_fused" row exists, `_attn_bwd_fused` does both in one kernel (dQ by
float32 atomic adds). Where a "fwd_tma" row exists and the call allows it,
the forward is `attention_hopper._attn_fwd_tma`.

jax-triton's primitive refuses `jax.vmap`, so every launch is wrapped in a
`jax.custom_batching.custom_vmap` whose rule folds the mapped axis into the
batch axis (all kernel operands carry batch first) and launches once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernels import masking
from kernels import reference
from kernels.triton import block_sizes
from kernels.triton import launch as triton_launch

MAX_BACKWARD_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class _Static:
  """Trace-time configuration of one attention call."""

  causal: bool
  has_segments: bool
  scale: float
  interpret: bool
  window_left: int | None
  window_right: int | None
  softcap: float | None
  has_q_offset: bool
  # Kernel name -> its block sizes, resolved before tracing so that a change
  # of table row (an override) is a new cache key, never a stale trace.
  blocks: tuple[tuple[str, block_sizes.BlockSizes], ...]

  def block(self, kernel: str) -> block_sizes.BlockSizes:
    return dict(self.blocks)[kernel]


def _fold_vmap(fn: Callable[..., tuple[jax.Array, ...]]):
  """Batches `fn` (batch-first operands) by merging the vmapped axis."""
  fn = jax.custom_batching.custom_vmap(fn)

  @fn.def_vmap
  def _rule(axis_size, in_batched, *args):
    merged = []
    for x, batched in zip(args, in_batched):
      if not batched:
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
      merged.append(x.reshape((-1,) + x.shape[2:]))
    outs = fn(*merged)
    outs = tuple(o.reshape((axis_size, -1) + o.shape[1:]) for o in outs)
    return outs, tuple(True for _ in outs)

  return fn


def _kernels(st: _Static):
  return triton_launch.import_kernels("kernels.triton.attention",
                                      st.interpret)


def _tile_constexprs(st: _Static, q, k, bs) -> dict:
  """Constexprs every attention kernel takes: head counts, head_dim, the
  tile, and whether the interpreter widens bfloat16 (numpy has none)."""
  return dict(NUM_HEADS=q.shape[2], NUM_KV_HEADS=k.shape[2],
              HEAD_DIM=q.shape[-1], BLOCK_M=bs.block_m, BLOCK_N=bs.block_n,
              WIDEN=st.interpret and q.dtype == jnp.bfloat16)


def _common(st: _Static, q, k, kernel: str):
  """Block sizes and constexprs of the kernels in `attention.py`."""
  head_dim = q.shape[-1]
  bs = st.block(kernel)
  constexprs = dict(
      _tile_constexprs(st, q, k, bs),
      HEAD_DIM_PAD=block_sizes.padded_head_dim(head_dim),
      CAUSAL=st.causal, HAS_SEGMENTS=st.has_segments,
      WINDOW_LEFT=-1 if st.window_left is None else st.window_left,
      WINDOW_RIGHT=-1 if st.window_right is None else st.window_right,
      HAS_SOFTCAP=st.softcap is not None,
      HAS_Q_OFFSET=st.has_q_offset,
      # float32: three tf32 tensor-core products (a_hi b_hi + a_hi b_lo +
      # a_lo b_hi), about float32 accuracy; plain "tf32" would round operands
      # to 10 mantissa bits, and "ieee" (FMA) spills registers on every
      # float32 tile the compile gate tried (BUILD_NOTES).
      DOT_PRECISION="tf32x3" if q.dtype == jnp.float32 else "tf32")
  return bs, constexprs


@functools.cache
def _forward_op(st: _Static):
  def op(q, k, v, key_lengths, q_offsets, q_seg, kv_seg):
    batch, q_len, num_heads, _ = q.shape
    kv_len = k.shape[1]
    if block_sizes.TMA_KERNEL in dict(st.blocks):
      # `attention_hopper._attn_fwd_tma`: TMA loads and a warp-specialized
      # loop, through the library's own call (global scratch, 12 warps).
      bs = st.block(block_sizes.TMA_KERNEL)
      kernel = triton_launch.import_kernels(
          "kernels.triton.attention_hopper", st.interpret)._attn_fwd_tma
      args = (q, k, v, key_lengths, st.scale, q_len, kv_len)
      constexprs = dict(_tile_constexprs(st, q, k, bs), WARP_SPECIALIZE=True)
      own_call = True
    else:
      bs, constexprs = _common(st, q, k, "fwd")
      kernel = _kernels(st)._attn_fwd
      args = (q, k, v, key_lengths, q_offsets, q_seg, kv_seg, st.scale,
              _softcap_arg(st), q_len, kv_len)
      own_call = False
    return triton_launch.launch(
        kernel, *args,
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch, num_heads, q_len),
                                        jnp.float32)),
        grid=(_cdiv(q_len, bs.block_m), batch * num_heads),
        num_warps=bs.num_warps, num_stages=bs.num_stages,
        interpret=st.interpret, own_call=own_call, **constexprs)

  return _fold_vmap(op)


@functools.cache
def _backward_op(st: _Static):
  def op(q, k, v, key_lengths, q_offsets, q_seg, kv_seg, o, lse, do, dlse):
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    kern = _kernels(st)
    pre = st.block("bwd_dq")
    (delta,) = triton_launch.launch(
        kern._attn_bwd_preprocess, o, do, q_len,
        out_shape=(jax.ShapeDtypeStruct((batch, num_heads, q_len),
                                        jnp.float32),),
        grid=(_cdiv(q_len, pre.block_m), batch * num_heads),
        num_warps=pre.num_warps, num_stages=1, interpret=st.interpret,
        NUM_HEADS=num_heads, HEAD_DIM=head_dim,
        HEAD_DIM_PAD=block_sizes.padded_head_dim(head_dim),
        BLOCK_M=pre.block_m)
    # The log-sum-exp's own cotangent: d lse2 / d s = P / ln 2, so it joins
    # dS = P * (dP - delta) as delta - dlse2 * log2(e).
    delta = delta - dlse * np.float32(np.log2(np.e))
    operands = (q, k, v, key_lengths, q_offsets, q_seg, kv_seg, do, lse,
                delta,
                st.scale, _softcap_arg(st), q_len, kv_len)

    if block_sizes.FUSED_BWD_KERNEL in dict(st.blocks):
      bs, constexprs = _common(st, q, k, block_sizes.FUSED_BWD_KERNEL)
      dk, dv, dq = triton_launch.launch(
          kern._attn_bwd_fused, *operands,
          out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype),
                     jax.ShapeDtypeStruct(v.shape, v.dtype),
                     jax.ShapeDtypeStruct(q.shape, jnp.float32)),
          grid=(_cdiv(kv_len, bs.block_n), batch * num_kv_heads),
          num_warps=bs.num_warps, num_stages=bs.num_stages,
          interpret=st.interpret, zeroed_outputs=(2,), **constexprs)
      return dq.astype(q.dtype), dk, dv

    bs, constexprs = _common(st, q, k, "bwd_dkdv")
    dk, dv = triton_launch.launch(
        kern._attn_bwd_dkdv, *operands,
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)),
        grid=(_cdiv(kv_len, bs.block_n), batch * num_kv_heads),
        num_warps=bs.num_warps, num_stages=bs.num_stages,
        interpret=st.interpret, **constexprs)

    bs, constexprs = _common(st, q, k, "bwd_dq")
    (dq,) = triton_launch.launch(
        kern._attn_bwd_dq, *operands,
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),),
        grid=(_cdiv(q_len, bs.block_m), batch * num_heads),
        num_warps=bs.num_warps, num_stages=bs.num_stages,
        interpret=st.interpret, **constexprs)
    return dq, dk, dv

  return _fold_vmap(op)


def _hopper_serves(q: jax.Array, mask: masking.Mask,
                   softcap: float | None) -> bool:
  """Whether `attention_hopper._attn_fwd_tma` computes this call: 16-bit,
  a power-of-two head_dim, non-causal, no segments, window, soft-cap or
  query offsets (key lengths and grouped-query heads are served)."""
  head_dim = q.shape[-1]
  return (q.dtype in (jnp.float16, jnp.bfloat16)
          and head_dim == block_sizes.padded_head_dim(head_dim)
          and not mask.causal and not mask.has_segments
          and mask.window_left is None and mask.window_right is None
          and mask.q_offset is None and softcap is None)


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _softcap_arg(st: _Static) -> float:
  """The kernels' `softcap` scalar; read only when HAS_SOFTCAP."""
  return 1.0 if st.softcap is None else st.softcap


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, q, k, v, key_lengths, q_offsets, q_seg, kv_seg):
  """`(output, base-2 log-sum-exp (batch, heads, q_len), +inf if empty)`."""
  return _forward_op(st)(q, k, v, key_lengths, q_offsets, q_seg, kv_seg)


def _attention_fwd(st, q, k, v, key_lengths, q_offsets, q_seg, kv_seg):
  o, lse = _forward_op(st)(q, k, v, key_lengths, q_offsets, q_seg, kv_seg)
  return (o, lse), (q, k, v, key_lengths, q_offsets, q_seg, kv_seg, o, lse)


def _attention_bwd(st, res, cotangents):
  q = res[0]
  do, dlse = cotangents
  if q.shape[-1] > MAX_BACKWARD_HEAD_DIM:
    raise ValueError(
        f"the Triton attention backward supports head_dim <= "
        f"{MAX_BACKWARD_HEAD_DIM}, got head_dim={q.shape[-1]}; use "
        "implementation='blockwise' or 'xla' to differentiate")
  dq, dk, dv = _backward_op(st)(*res, do.astype(q.dtype),
                                dlse.astype(jnp.float32))
  return dq, dk, dv, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention_triton(q: jax.Array, k: jax.Array, v: jax.Array,
                     mask: masking.Mask, scale: float, *,
                     interpret: bool, softcap: float | None = None,
                     return_residuals: bool = False):
  """Fused attention `softmax(cap(scale * Q K^T) + mask) V` with Triton
  kernels (`cap`: optional soft-capping, `reference.soft_cap`).

  Args:
    q: `(batch, q_len, num_heads, head_dim)`, float16/bfloat16/float32.
    k: `(batch, kv_len, num_kv_heads, head_dim)`, num_kv_heads divides
      num_heads.
    v: `(batch, kv_len, num_kv_heads, head_dim)`.
    mask: masking arguments (see `kernels.masking`).
    scale: softmax scale.
    interpret: run under Triton's interpreter instead of compiling for GPU.
    softcap: soft-capping of the scaled scores, or None.
    return_residuals: also return the natural-log log-sum-exp per row,
      `(batch, num_heads, q_len)` float32, `-inf` for empty rows.

  Returns:
    `(batch, q_len, num_heads, head_dim)` in the dtype of `q` (and the
    log-sum-exp). Differentiable w.r.t. q, k, v for head_dim <= 128.
  """
  batch, q_len, _, _ = q.shape
  kv_len = k.shape[1]
  key_lengths = mask.key_lengths
  if key_lengths is None:
    key_lengths = jnp.full((batch,), kv_len, jnp.int32)
  q_offsets = mask.q_offset
  if q_offsets is None:  # Never read (HAS_Q_OFFSET=False): a pointer.
    q_offsets = jnp.zeros((batch,), jnp.int32)
  if mask.has_segments:
    q_seg = mask.q_segment_ids.astype(jnp.int32)
    kv_seg = mask.kv_segment_ids.astype(jnp.int32)
  else:  # Never read (HAS_SEGMENTS=False); the launch needs a pointer.
    q_seg = kv_seg = jnp.zeros((batch, 1), jnp.int32)
  head_dim = q.shape[-1]
  kernels_ = block_sizes.KERNELS
  if head_dim > MAX_BACKWARD_HEAD_DIM:
    kernels_ = ("fwd",)  # No backward rows; the VJP raises a named error.
  capability = None if interpret else triton_launch.target_capability()
  blocks = tuple((k, block_sizes.lookup(
      k, block_sizes.row_head_dim(head_dim), q.dtype, mask.causal,
      interpret, masked=block_sizes.padded_head_dim(head_dim) != head_dim,
      capability=capability)) for k in kernels_)
  if _hopper_serves(q, mask, softcap):
    tma = block_sizes.optional_row(block_sizes.TMA_KERNEL,
                                   block_sizes.row_head_dim(head_dim),
                                   q.dtype, mask.causal, interpret,
                                   capability)
    if tma is not None:
      if not interpret and (capability is None or capability < 90):
        raise ValueError(
            f"a {block_sizes.TMA_KERNEL!r} block-size row selects the Hopper "
            "forward kernel (TMA, warp specialization), which needs a "
            f"compute capability >= 90; this launch targets {capability}")
      blocks += ((block_sizes.TMA_KERNEL, tma),)
  # The fused backward's candidates are compiled for tile-width head dims;
  # a padded one (e.g. 96) keeps the separate kernels and their padded rows.
  if (head_dim <= MAX_BACKWARD_HEAD_DIM
      and head_dim == block_sizes.padded_head_dim(head_dim)):
    fused = block_sizes.optional_row(
        block_sizes.FUSED_BWD_KERNEL, block_sizes.row_head_dim(head_dim),
        q.dtype, mask.causal, interpret, capability)
    if fused is not None:
      blocks += ((block_sizes.FUSED_BWD_KERNEL, fused),)
  st = _Static(causal=mask.causal, has_segments=mask.has_segments,
               scale=float(np.float32(scale)), interpret=interpret,
               window_left=mask.window_left, window_right=mask.window_right,
               softcap=None if softcap is None else float(np.float32(softcap)),
               has_q_offset=mask.q_offset is not None, blocks=blocks)
  o, lse = _attention(st, q, k, v, key_lengths.astype(jnp.int32),
                      q_offsets.astype(jnp.int32), q_seg, kv_seg)
  if not return_residuals:
    return o
  return o, reference.public_lse(lse * np.float32(np.log(2.0)))
