"""A Hopper forward kernel: TMA tile loads and a warp-specialized key loop.

`_attn_fwd_tma` computes what `attention._attn_fwd` computes (O and the
base-2 log-sum-exp, `+inf` for rows without keys) for the calls it serves:
non-causal, no segment ids, window, soft-cap or query offsets; key lengths,
grouped-query heads and ragged lengths are served; 16-bit inputs and a
power-of-two head_dim (>= 16). `ops` picks it only through a `"fwd_tma"`
block-size row (`block_sizes.optional_row`) and only for such calls.

Two Hopper features replace the pointer kernel's loads and scheduling:

* device-side tensor descriptors (`tl.make_tensor_descriptor`): each K/V
  tile is one `cp.async.bulk.tensor` copy into shared memory. Q, K and V are
  described as 2-D `(batch * seq, heads * head_dim)` views, so a tile is the
  rows of one head; rows past the last example read as zeros and rows of the
  next example are masked like keys past the key length. The descriptors
  live in a global scratch buffer (`metadata.global_scratch_size`), which
  only the library's own call passes (`kernel_call`, jaxlib >= 0.11.2).
* `tl.range(..., warp_specialize=True)` over the key blocks: Triton
  splits the loop into a TMA producer warp group and two consumer warp
  groups of 64 rows, so 4 requested warps compile to 12 (`.reqntid 384`);
  the own call launches the compiled count. It is the kernel's only loop
  (a second, masked one stopped the pass), so every block applies the
  key-length mask, as a per-key `-inf` bias.

Unlike the pointer kernels, which load keys past the key length as zeros,
this kernel reads them (and the next example's rows in the last block) and
masks their scores: **keys and values past `key_lengths` must be finite**,
or NaN reaches the output (NaN + -inf is NaN, and 0 * NaN in P V). Padding
with zeros, as a KV cache does, is fine.

The 4-D `(batch, seq, heads, head_dim)` descriptor that would clip rows at
each example's end is not used: reshaping its `[1, BLOCK, 1, HEAD_DIM]`
tiles stops Triton 3.6's warp-specialization pass ("Unexpected op" in
WSDataPartition). The output is stored through masked pointers for the same
reason.

Importing this module imports triton; `ops` imports it lazily.
"""

import triton
import triton.language as tl

from kernels.triton.attention import _LOG2E
from kernels.triton.attention import _operand


@triton.jit
def _attn_fwd_tma(Q, K, V, KEY_LENGTHS, scale, q_len, kv_len, O, LSE,
                  NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                  WIDEN: tl.constexpr):
  """O = softmax(scale * Q K^T + key-length mask) V and LSE (base 2)."""
  start_m = tl.program_id(0)
  off_bh = tl.program_id(1)
  off_b = off_bh // NUM_HEADS
  off_h = off_bh % NUM_HEADS
  off_hk = off_h // (NUM_HEADS // NUM_KV_HEADS)
  batch = tl.num_programs(1) // NUM_HEADS
  desc_q = tl.make_tensor_descriptor(
      Q, shape=[batch * q_len, NUM_HEADS * HEAD_DIM],
      strides=[NUM_HEADS * HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM])
  desc_k = tl.make_tensor_descriptor(
      K, shape=[batch * kv_len, NUM_KV_HEADS * HEAD_DIM],
      strides=[NUM_KV_HEADS * HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
  desc_v = tl.make_tensor_descriptor(
      V, shape=[batch * kv_len, NUM_KV_HEADS * HEAD_DIM],
      strides=[NUM_KV_HEADS * HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
  dtype = Q.dtype.element_ty
  q = _operand(desc_q.load([off_b * q_len + start_m * BLOCK_M,
                            off_h * HEAD_DIM]), dtype, WIDEN)
  kv_row = off_b * kv_len
  kv_col = off_hk * HEAD_DIM
  key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
  qk_scale = scale * _LOG2E

  m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
  l_i = tl.zeros((BLOCK_M,), tl.float32)
  acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
  # One loop (Triton 3.6 warp-specializes a kernel's only loop: a second,
  # masked loop for the last block stopped the pass, an `if` after the loop
  # turned it off), so every block applies the key-length mask.
  for start_n in tl.range(0, key_len, BLOCK_N,
                          warp_specialize=WARP_SPECIALIZE):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _operand(desc_k.load([kv_row + start_n, kv_col]), dtype, WIDEN)
    # The mask as a per-key bias: one select per key, and the scale's
    # multiply becomes a fused multiply-add (a select per score cost 64
    # FSEL per thread and iteration in the consumer warps' SASS).
    bias = tl.where(offs_n < key_len, 0.0, float("-inf"))
    qk = tl.dot(q, k.T) * qk_scale + bias[None, :]
    # Each block holds a key below key_len, so m_new is finite.
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _operand(desc_v.load([kv_row + start_n, kv_col]), dtype, WIDEN)
    acc = acc * alpha[:, None]
    acc = tl.dot(_operand(p, dtype, WIDEN), v, acc)
    m_i = m_new

  has_key = l_i > 0.0
  acc = acc / tl.where(has_key, l_i, 1.0)[:, None]
  lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)),
                 float("inf"))
  offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
  offs_d = tl.arange(0, HEAD_DIM)
  o_rows = (off_b.to(tl.int64) * q_len + offs_m) * NUM_HEADS + off_h
  tl.store(O + (o_rows[:, None] * HEAD_DIM + offs_d[None, :]),
           acc.to(O.dtype.element_ty), mask=offs_m[:, None] < q_len)
  tl.store(LSE + off_bh * q_len + offs_m, lse, mask=offs_m < q_len)
