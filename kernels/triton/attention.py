"""Fused attention kernels in Triton: forward and backward.

Tensors use the `(batch, seq, heads, head_dim)` layout, contiguous, so element
`[b, s, h, d]` of a tensor with `H` heads lives at `((b * seq + s) * H + h) *
head_dim + d`. Program ids: axis 0 walks blocks of the sequence, axis 1 walks
(batch, head) pairs. Query head `h` reads kv head `h // GROUP`; K and V are
never copied per query head.

Scores are computed in base 2: `qk * scale * log2(e)` so `exp2` replaces
`exp`; the saved log-sum-exp `LSE` is in the same base-2 units and is `+inf`
for rows without any allowed key (so `exp2(qk - LSE) == 0` there).

The mask predicate matches `kernels.masking.allowed`: key `j` is allowed for
query `i` of example `b` when `j < min(key_lengths[b], kv_len)`, and, when
causal, `j <= i'`, and, with segments, the segment ids match, and, with a
window (constexprs `WINDOW_LEFT`/`WINDOW_RIGHT`, -1 unbounded),
`i' - WINDOW_LEFT <= j <= i' + WINDOW_RIGHT`, where `i' = i + Q_OFFSETS[b]`
with the constexpr `HAS_Q_OFFSET` (query offsets given), else `i' = i +
kv_len - q_len`.
Key blocks wholly outside the causal triangle or the window are skipped, so a
window of w keys costs O(n w), not O(n^2).

Loop structure (after Triton's 06-fused-attention tutorial). `_key_range` /
`_query_range` split each program's range into interior blocks, where every
row sees every key of the block, and the edges around them (the diagonal,
the window edges, the key-length and query-length tails). Each kernel runs
two copies of its loop body: the interior without any mask, predicate or
row bound (no `tl.where`, unmasked loads for power-of-two head dims), then
one masked loop that walks both edges, jumping over the interior
(`_skip_interior`). With segment ids any block may be masked, so everything
is edge. Both loops are software-pipelined with the launch's `num_stages`.

With `HAS_SOFTCAP` the scaled scores are soft-capped before masking,
`s <- softcap * tanh(s / softcap)`, and the capped score enters base 2 as
`softcap * log2(e) * tanh(s / softcap)`; the backward multiplies dS by
`1 - tanh^2`.

Any head_dim that is a multiple of 8 runs in a tile of `HEAD_DIM_PAD`
columns, the next power of two (at least 16, `tl.dot`'s minimum): padded
columns load as zeros (so the dot products are unchanged) and are never
stored.

Importing this module imports triton; `kernels` imports it lazily.
"""

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _operand(x, dtype, WIDEN: tl.constexpr):
  """x rounded to the input dtype, as a tl.dot operand.

  WIDEN (set only under the interpreter, whose numpy backend stores bfloat16
  as raw uint16 and cannot do arithmetic on it) then widens it exactly to
  float32, so the interpreted kernel rounds like the compiled one.
  """
  x = x.to(dtype)
  if WIDEN:
    x = x.to(tl.float32)
  return x


@triton.jit
def _in_bounds(offs, length, offs_d, HEAD_DIM: tl.constexpr,
               HEAD_DIM_PAD: tl.constexpr):
  """(rows, HEAD_DIM_PAD) load/store mask: row < length and, in a tile
  padded to a power of two, the head-dim column < HEAD_DIM."""
  ok = offs[:, None] < length
  if HEAD_DIM != HEAD_DIM_PAD:
    ok = ok & (offs_d[None, :] < HEAD_DIM)
  return ok


@triton.jit
def _load_tile(ptr, offs, length, offs_d, dtype, ROW_STRIDE: tl.constexpr,
               HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
               MASK_ROWS: tl.constexpr, WIDEN: tl.constexpr):
  """The (len(offs), HEAD_DIM_PAD) tile of rows `offs` at `ptr`, as a tl.dot
  operand of `dtype`. Rows >= length (with MASK_ROWS) and padded columns
  load as zeros; without MASK_ROWS every row must be in bounds, and a
  power-of-two head dim loads with no predicate at all."""
  # Offsets first, then one pointer add: 32-bit index math, not 64-bit.
  ptrs = ptr + (offs[:, None] * ROW_STRIDE + offs_d[None, :])
  if MASK_ROWS:
    x = tl.load(ptrs, mask=_in_bounds(offs, length, offs_d, HEAD_DIM,
                                      HEAD_DIM_PAD), other=0.0)
  elif HEAD_DIM != HEAD_DIM_PAD:
    x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
  else:
    x = tl.load(ptrs)
  return _operand(x, dtype, WIDEN)


@triton.jit
def _store_tile(ptr, offs, length, offs_d, x, ROW_STRIDE: tl.constexpr,
                HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr):
  """Stores rows `offs` < length of the float32 tile x, in ptr's dtype."""
  tl.store(ptr + (offs[:, None] * ROW_STRIDE + offs_d[None, :]),
           x.to(ptr.dtype.element_ty),
           mask=_in_bounds(offs, length, offs_d, HEAD_DIM, HEAD_DIM_PAD))


@triton.jit
def _allowed(offs_m, offs_n, key_len, q_len, offset, q_seg, kv_seg,
             CAUSAL: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
             WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr):
  """(BLOCK_M, BLOCK_N) mask for query rows offs_m and key columns offs_n."""
  ok = (offs_n[None, :] < key_len) & (offs_m[:, None] < q_len)
  aligned = offs_m[:, None] + offset
  if CAUSAL:
    ok = ok & (offs_n[None, :] <= aligned)
  if WINDOW_LEFT >= 0:
    ok = ok & (offs_n[None, :] >= aligned - WINDOW_LEFT)
  if WINDOW_RIGHT >= 0:
    ok = ok & (offs_n[None, :] <= aligned + WINDOW_RIGHT)
  if HAS_SEGMENTS:
    ok = ok & (q_seg[:, None] == kv_seg[None, :])
  return ok


@triton.jit
def _query_offset(Q_OFFSETS, off_b, q_len, kv_len,
                  HAS_Q_OFFSET: tl.constexpr):
  """Key position of example off_b's first query: Q_OFFSETS[off_b] with
  HAS_Q_OFFSET, else the bottom-right alignment kv_len - q_len (computed
  from the launch's scalars, so it holds no register across the loops:
  the loaded offset cost the float32 backward rows 1-2 spilled registers)."""
  if HAS_Q_OFFSET:
    return tl.load(Q_OFFSETS + off_b)
  else:
    return kv_len - q_len


@triton.jit
def _key_range(start_m, key_len, offset, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
               HAS_SEGMENTS: tl.constexpr):
  """Key ranges of the query block start_m: (lo, mid_lo, mid_hi, hi).

  [lo, hi) holds every key a query of the block may see (blocks right of
  the diagonal or outside the window are skipped), lo a multiple of
  BLOCK_N. [mid_lo, mid_hi), block-aligned, holds the interior key blocks
  that every query row of the block sees in full: there no mask is needed.
  Segment ids can mask anywhere, so with them the interior is empty.
  """
  first = start_m * BLOCK_M + offset  # the block's rows, aligned to keys
  last = first + BLOCK_M - 1
  hi = key_len
  if CAUSAL:
    hi = tl.minimum(hi, last + 1)
  if WINDOW_RIGHT >= 0:
    hi = tl.minimum(hi, last + 1 + WINDOW_RIGHT)
  hi = tl.maximum(hi, 0)
  lo = 0
  if WINDOW_LEFT >= 0:
    lo = tl.maximum(first - WINDOW_LEFT, 0) // BLOCK_N * BLOCK_N
  # Interior: keys in [last - WINDOW_LEFT, first + WINDOW_RIGHT] (causal:
  # WINDOW_RIGHT = 0) and below key_len are allowed for every row.
  end = key_len
  if CAUSAL:
    end = tl.minimum(end, first + 1)
  if WINDOW_RIGHT >= 0:
    end = tl.minimum(end, first + 1 + WINDOW_RIGHT)
  begin = lo
  if WINDOW_LEFT >= 0:
    begin = tl.maximum(begin, last - WINDOW_LEFT)
  mid_lo = tl.minimum(tl.cdiv(begin, BLOCK_N) * BLOCK_N, hi)
  mid_hi = tl.minimum(tl.maximum(tl.maximum(end, 0) // BLOCK_N * BLOCK_N,
                                 mid_lo), hi)
  if HAS_SEGMENTS:
    mid_lo = hi
    mid_hi = hi
  return lo, mid_lo, mid_hi, hi


@triton.jit
def _query_range(start_n, key_len, q_len, offset, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                 HAS_SEGMENTS: tl.constexpr):
  """Query ranges of the key block start_n: (lo, mid_lo, mid_hi, hi).

  [lo, hi) holds every query that may see a key of the block (empty for a
  block past the example's key length), lo a multiple of BLOCK_M.
  [mid_lo, mid_hi), block-aligned and below q_len, holds the interior query
  blocks whose rows all see every key of the block: there no mask is
  needed. Empty with segment ids, and for a block that crosses key_len.
  """
  last_key = start_n + BLOCK_N - 1
  lo = 0
  if CAUSAL:  # queries above the first that sees key start_n are masked
    lo = tl.maximum(start_n - offset, 0)
  if WINDOW_RIGHT >= 0:
    lo = tl.maximum(lo, start_n - offset - WINDOW_RIGHT)
  lo = lo // BLOCK_M * BLOCK_M
  hi = tl.where(start_n < key_len, q_len, 0)
  if WINDOW_LEFT >= 0:
    hi = tl.minimum(hi, start_n + BLOCK_N + WINDOW_LEFT - offset)
  # Interior: rows i with last_key <= i' (+ WINDOW_RIGHT) and
  # i' - WINDOW_LEFT <= start_n, for i' = i + offset.
  begin = lo
  if CAUSAL:
    begin = tl.maximum(begin, last_key - offset)
  if WINDOW_RIGHT >= 0:
    begin = tl.maximum(begin, last_key - offset - WINDOW_RIGHT)
  end = tl.where(last_key < key_len, q_len, 0)
  if WINDOW_LEFT >= 0:
    end = tl.minimum(end, start_n + WINDOW_LEFT - offset + 1)
  mid_lo = tl.minimum(tl.cdiv(begin, BLOCK_M) * BLOCK_M, tl.maximum(hi, lo))
  mid_hi = tl.minimum(tl.maximum(tl.maximum(end, 0) // BLOCK_M * BLOCK_M,
                                 mid_lo), tl.maximum(hi, lo))
  if HAS_SEGMENTS:
    mid_lo = tl.maximum(hi, lo)
    mid_hi = mid_lo
  return lo, mid_lo, mid_hi, hi


@triton.jit
def _skip_interior(start, mid_lo, mid_hi, SKIP: tl.constexpr):
  """Maps a block start of the edge loop to the keys or queries it covers.

  The edge loop walks [lo, hi - (mid_hi - mid_lo)): starts below mid_lo are
  the left edge, the rest jump over the interior [mid_lo, mid_hi) to the
  right edge. So each kernel holds one masked and one unmasked copy of its
  loop body. Without SKIP (the interior loop; segment ids, where everything
  is edge) a start maps to itself.
  """
  if SKIP:
    return tl.where(start < mid_lo, start, start + (mid_hi - mid_lo))
  else:
    return start


@triton.jit
def _tanh(x):
  """tanh(x) = 1 - 2 / (exp(2x) + 1): saturates to +-1 without NaN."""
  return 1.0 - 2.0 / (tl.math.exp2(x * (2.0 * _LOG2E)) + 1.0)


@triton.jit
def _scores(a, b, scale, softcap, DOT_PRECISION: tl.constexpr,
            HAS_SOFTCAP: tl.constexpr):
  """(base-2 scores of a b^T, tanh of the capped argument or 0)."""
  if HAS_SOFTCAP:
    t = _tanh(tl.dot(a, b, input_precision=DOT_PRECISION) * (scale /
                                                              softcap))
    return t * (softcap * _LOG2E), t
  else:
    qk = tl.dot(a, b, input_precision=DOT_PRECISION) * (scale * _LOG2E)
    return qk, qk * 0.0


@triton.jit
def _probabilities(scores, lse, allowed, MASKED: tl.constexpr):
  """P = exp2(scores - LSE) of the backward, with `lse` broadcast to the
  scores' orientation; with MASKED, disallowed entries are set to -inf
  before exp2, so they never overflow to inf."""
  if MASKED:
    return tl.math.exp2(tl.where(allowed, scores - lse, float("-inf")))
  return tl.math.exp2(scores - lse)


@triton.jit
def _score_grad(p, dp, delta, tanh_scores, HAS_SOFTCAP: tl.constexpr):
  """dS = P * (dP - DELTA), through the soft-cap's tanh when present;
  `delta` broadcast to the scores' orientation."""
  ds = p * (dp - delta)
  if HAS_SOFTCAP:
    ds = ds * (1.0 - tanh_scores * tanh_scores)
  return ds


@triton.jit
def _fwd_key_blocks(acc, l_i, m_i, q, q_seg, offs_m, offs_d, K, V, KV_SEG,
                    kv_base, off_b, scale, softcap, q_len, kv_len, offset,
                    start,
                    end, mid_lo, mid_hi, hi,
                    NUM_KV_HEADS: tl.constexpr,
                    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                    HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                    WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr,
                    MASKED: tl.constexpr):
  """Online-softmax update of (acc, l_i, m_i) over the key blocks of
  [start, end), which with MASKED jump over [mid_lo, mid_hi)
  (`_skip_interior`).

  MASKED blocks apply `_allowed` (keys >= hi are out); interior ones are
  computed without any mask or predicate.
  """
  for block in tl.range(start, end, BLOCK_N):
    start_n = _skip_interior(block, mid_lo, mid_hi,
                             MASKED and not HAS_SEGMENTS)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K + kv_base, offs_n, hi, offs_d, q.dtype,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, MASKED,
                   WIDEN)
    kv_seg = offs_n
    if HAS_SEGMENTS:
      kv_seg = tl.load(KV_SEG + off_b * kv_len + offs_n, mask=offs_n < hi,
                       other=-2)
    qk, _ = _scores(q, tl.trans(k), scale, softcap, DOT_PRECISION,
                    HAS_SOFTCAP)
    if MASKED:
      ok = _allowed(offs_m, offs_n, hi, q_len, offset, q_seg, kv_seg, CAUSAL,
                    HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT)
      qk = tl.where(ok, qk, float("-inf"))
      m_new = tl.maximum(m_i, tl.max(qk, 1))
      # A row with no allowed key so far keeps m = -inf; shift by 0 instead
      # so exp2 sees -inf - 0 (= 0) rather than -inf - -inf (= NaN).
      m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:  # every score is finite, so m_new is too
      m_new = tl.maximum(m_i, tl.max(qk, 1))
      m_safe = m_new
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_tile(V + kv_base, offs_n, hi, offs_d, q.dtype,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, MASKED,
                   WIDEN)
    acc = acc * alpha[:, None] + tl.dot(_operand(p, q.dtype, WIDEN), v,
                                        input_precision=DOT_PRECISION)
    m_i = m_new
  return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, KEY_LENGTHS, Q_OFFSETS, Q_SEG, KV_SEG, scale, softcap, q_len,
              kv_len, O, LSE,
              NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
              HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
              BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
              WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
              DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr,
              HAS_Q_OFFSET: tl.constexpr):
  """O = softmax(scale * Q K^T + mask) V and LSE = log2 sum_j exp2(...)."""
  start_m = tl.program_id(0)
  off_bh = tl.program_id(1)
  off_b = off_bh // NUM_HEADS
  off_h = off_bh % NUM_HEADS
  off_hk = off_h // (NUM_HEADS // NUM_KV_HEADS)
  q_base = (off_b.to(tl.int64) * q_len * NUM_HEADS + off_h) * HEAD_DIM
  kv_base = (off_b.to(tl.int64) * kv_len * NUM_KV_HEADS + off_hk) * HEAD_DIM

  offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
  offs_d = tl.arange(0, HEAD_DIM_PAD)
  q = _load_tile(Q + q_base, offs_m, q_len, offs_d, Q.dtype.element_ty,
                 NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True, WIDEN)
  key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
  offset = _query_offset(Q_OFFSETS, off_b, q_len, kv_len, HAS_Q_OFFSET)
  lo, mid_lo, mid_hi, hi = _key_range(start_m, key_len, offset, BLOCK_M,
                                      BLOCK_N, CAUSAL, WINDOW_LEFT,
                                      WINDOW_RIGHT, HAS_SEGMENTS)
  q_seg = offs_m
  if HAS_SEGMENTS:
    q_seg = tl.load(Q_SEG + off_b * q_len + offs_m, mask=offs_m < q_len,
                    other=-1)

  m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
  l_i = tl.zeros((BLOCK_M,), tl.float32)
  acc = tl.zeros((BLOCK_M, HEAD_DIM_PAD), tl.float32)
  # The interior key blocks without masks, then the masked edges (left
  # window edge; diagonal, right window edge and key-length tail) in one
  # loop. This order measured fewer registers on sm_80 (BUILD_NOTES).
  if not HAS_SEGMENTS:
    acc, l_i, m_i = _fwd_key_blocks(
        acc, l_i, m_i, q, q_seg, offs_m, offs_d, K, V, KV_SEG, kv_base,
        off_b, scale, softcap, q_len, kv_len, offset, mid_lo, mid_hi,
        mid_lo, mid_hi, hi, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL,
        HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT, HAS_SOFTCAP, DOT_PRECISION,
        WIDEN, False)
  acc, l_i, m_i = _fwd_key_blocks(
      acc, l_i, m_i, q, q_seg, offs_m, offs_d, K, V, KV_SEG, kv_base, off_b,
      scale, softcap, q_len, kv_len, offset, lo, hi - (mid_hi - mid_lo),
      mid_lo, mid_hi, hi, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL,
      HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT, HAS_SOFTCAP, DOT_PRECISION,
      WIDEN, True)

  has_key = l_i > 0.0
  acc = acc / tl.where(has_key, l_i, 1.0)[:, None]
  lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)),
                 float("inf"))
  _store_tile(O + q_base, offs_m, q_len, offs_d, acc, NUM_HEADS * HEAD_DIM,
              HEAD_DIM, HEAD_DIM_PAD)
  tl.store(LSE + off_bh * q_len + offs_m, lse, mask=offs_m < q_len)


@triton.jit
def _attn_bwd_preprocess(O, DO, q_len, DELTA, NUM_HEADS: tl.constexpr,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                         BLOCK_M: tl.constexpr):
  """DELTA[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d] in float32."""
  start_m = tl.program_id(0)
  off_bh = tl.program_id(1)
  off_b = off_bh // NUM_HEADS
  off_h = off_bh % NUM_HEADS
  base = (off_b.to(tl.int64) * q_len * NUM_HEADS + off_h) * HEAD_DIM
  offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
  offs_d = tl.arange(0, HEAD_DIM_PAD)
  o = _load_tile(O + base, offs_m, q_len, offs_d, tl.float32,
                 NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True, False)
  do = _load_tile(DO + base, offs_m, q_len, offs_d, tl.float32,
                  NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True, False)
  tl.store(DELTA + off_bh * q_len + offs_m, tl.sum(o * do, 1),
           mask=offs_m < q_len)


@triton.jit
def _dkdv_query_blocks(dk, dv, k, v, kv_seg, offs_n, offs_d, Q, DO, LSE, DELTA,
                       Q_SEG, DQ_ACC, off_b, off_hk, key_len, scale, softcap,
                       q_len, kv_len, offset, start, end, mid_lo, mid_hi,
                       NUM_HEADS: tl.constexpr,
                       NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                       HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
                       WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                       HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       WIDEN: tl.constexpr, MASKED: tl.constexpr,
                       FUSE_DQ: tl.constexpr):
  """Adds the query blocks of [start, end) of every query head of the group
  to (dk, dv) for one key block; blocks and MASKED as in
  `_fwd_key_blocks`. With FUSE_DQ each block's dQ share, scale * dS K, is
  added to the float32 DQ_ACC atomically (FlashAttention-2's backward)."""
  group: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
  # One flat loop over (query head of the group, query block): a nested loop
  # would restart the software pipeline per head and keep more values live.
  num_m = tl.cdiv(tl.maximum(end - start, 0), BLOCK_M)
  for it in tl.range(0, group * num_m):
    g = it // num_m
    start_m = _skip_interior(start + (it - g * num_m) * BLOCK_M, mid_lo,
                             mid_hi, MASKED and not HAS_SEGMENTS)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    off_h = off_hk * group + g
    off_bh = off_b * NUM_HEADS + off_h
    q_base = (off_b.to(tl.int64) * q_len * NUM_HEADS + off_h) * HEAD_DIM
    q = _load_tile(Q + q_base, offs_m, q_len, offs_d, k.dtype,
                   NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, MASKED,
                   WIDEN)
    do = _load_tile(DO + q_base, offs_m, q_len, offs_d, k.dtype,
                    NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, MASKED,
                    WIDEN)
    qk_t, t_t = _scores(k, tl.trans(q), scale, softcap, DOT_PRECISION,
                        HAS_SOFTCAP)
    if MASKED:
      lse = tl.load(LSE + off_bh * q_len + offs_m, mask=offs_m < q_len,
                    other=float("inf"))
      delta = tl.load(DELTA + off_bh * q_len + offs_m, mask=offs_m < q_len,
                      other=0.0)
      q_seg = offs_m
      if HAS_SEGMENTS:
        q_seg = tl.load(Q_SEG + off_b * q_len + offs_m, mask=offs_m < q_len,
                        other=-1)
      ok_t = tl.trans(_allowed(offs_m, offs_n, key_len, q_len, offset, q_seg,
                               kv_seg, CAUSAL, HAS_SEGMENTS, WINDOW_LEFT,
                               WINDOW_RIGHT))
    else:  # every row sees every key of the block, so its lse is finite
      lse = tl.load(LSE + off_bh * q_len + offs_m)
      delta = tl.load(DELTA + off_bh * q_len + offs_m)
      ok_t = None
    p_t = _probabilities(qk_t, lse[None, :], ok_t, MASKED)
    dv += tl.dot(_operand(p_t, k.dtype, WIDEN), do,
                 input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = _score_grad(p_t, dp_t, delta[None, :], t_t, HAS_SOFTCAP)
    ds_op = _operand(ds_t, k.dtype, WIDEN)
    dk += tl.dot(ds_op, q, input_precision=DOT_PRECISION)
    if FUSE_DQ:
      dq = tl.dot(tl.trans(ds_op), k, input_precision=DOT_PRECISION) * scale
      tl.atomic_add(
          DQ_ACC + q_base + (offs_m[:, None] * (NUM_HEADS * HEAD_DIM) +
                             offs_d[None, :]), dq,
          mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
          sem="relaxed")
  return dk, dv


@triton.jit
def _dkdv_program(Q, K, V, KEY_LENGTHS, Q_OFFSETS, Q_SEG, KV_SEG, DO, LSE,
                  DELTA, scale, softcap, q_len, kv_len, DK, DV, DQ_ACC,
                  NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
                  WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                  HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  WIDEN: tl.constexpr, HAS_Q_OFFSET: tl.constexpr,
                  FUSE_DQ: tl.constexpr):
  """One key block of one kv head: dK and dV (and, with FUSE_DQ, the
  block's dQ shares into DQ_ACC); see `_attn_bwd_dkdv`."""
  start_n = tl.program_id(0) * BLOCK_N
  off_bhk = tl.program_id(1)
  off_b = off_bhk // NUM_KV_HEADS
  off_hk = off_bhk % NUM_KV_HEADS
  kv_base = (off_b.to(tl.int64) * kv_len * NUM_KV_HEADS + off_hk) * HEAD_DIM
  offs_n = start_n + tl.arange(0, BLOCK_N)
  offs_d = tl.arange(0, HEAD_DIM_PAD)
  if FUSE_DQ:
    # dQ multiplies every key row of the block: dS is zero past the key
    # length, but 0 * NaN is NaN, so padded keys load as zeros (as the dQ
    # kernel loads them) and never reach another query's dQ.
    key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
    k = _load_tile(K + kv_base, offs_n, key_len, offs_d, Q.dtype.element_ty,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True,
                   WIDEN)
    v = _load_tile(V + kv_base, offs_n, key_len, offs_d, Q.dtype.element_ty,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True,
                   WIDEN)
  else:
    k = _load_tile(K + kv_base, offs_n, kv_len, offs_d, Q.dtype.element_ty,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True,
                   WIDEN)
    v = _load_tile(V + kv_base, offs_n, kv_len, offs_d, Q.dtype.element_ty,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True,
                   WIDEN)
    key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
  kv_seg = offs_n
  if HAS_SEGMENTS:
    kv_seg = tl.load(KV_SEG + off_b * kv_len + offs_n, mask=offs_n < kv_len,
                     other=-2)
  # Key blocks past the example's key length receive no gradient.
  offset = _query_offset(Q_OFFSETS, off_b, q_len, kv_len, HAS_Q_OFFSET)
  lo, mid_lo, mid_hi, hi = _query_range(start_n, key_len, q_len, offset,
                                        BLOCK_M, BLOCK_N, CAUSAL, WINDOW_LEFT,
                                        WINDOW_RIGHT, HAS_SEGMENTS)

  dk = tl.zeros((BLOCK_N, HEAD_DIM_PAD), tl.float32)
  dv = tl.zeros((BLOCK_N, HEAD_DIM_PAD), tl.float32)
  if not HAS_SEGMENTS:
    dk, dv = _dkdv_query_blocks(
        dk, dv, k, v, kv_seg, offs_n, offs_d, Q, DO, LSE, DELTA, Q_SEG,
        DQ_ACC, off_b, off_hk, key_len, scale, softcap, q_len, kv_len,
        offset, mid_lo, mid_hi, mid_lo, mid_hi, NUM_HEADS, NUM_KV_HEADS,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, HAS_SEGMENTS, WINDOW_LEFT,
        WINDOW_RIGHT, HAS_SOFTCAP, DOT_PRECISION, WIDEN, False, FUSE_DQ)
  dk, dv = _dkdv_query_blocks(
      dk, dv, k, v, kv_seg, offs_n, offs_d, Q, DO, LSE, DELTA, Q_SEG, DQ_ACC,
      off_b, off_hk, key_len, scale, softcap, q_len, kv_len, offset, lo,
      hi - (mid_hi - mid_lo), mid_lo, mid_hi, NUM_HEADS, NUM_KV_HEADS,
      HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, HAS_SEGMENTS, WINDOW_LEFT,
      WINDOW_RIGHT, HAS_SOFTCAP, DOT_PRECISION, WIDEN, True, FUSE_DQ)

  _store_tile(DK + kv_base, offs_n, kv_len, offs_d, dk * scale,
              NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD)
  _store_tile(DV + kv_base, offs_n, kv_len, offs_d, dv,
              NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, KEY_LENGTHS, Q_OFFSETS, Q_SEG, KV_SEG, DO, LSE,
                   DELTA, scale, softcap, q_len, kv_len, DK, DV,
                   NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                   HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                   BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                   HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                   WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr,
                   HAS_Q_OFFSET: tl.constexpr):
  """dV = P^T dO and dK = scale * dS^T Q for one block of keys of one kv head.

  Sums over the GROUP query heads that share the kv head, so no atomics are
  needed. P = exp2(scale log2(e) Q K^T - LSE), dS = P * (dO V^T - DELTA).
  """
  _dkdv_program(Q, K, V, KEY_LENGTHS, Q_OFFSETS, Q_SEG, KV_SEG, DO, LSE,
                DELTA, scale, softcap, q_len, kv_len, DK, DV, DK, NUM_HEADS,
                NUM_KV_HEADS, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, BLOCK_N, CAUSAL,
                HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT, HAS_SOFTCAP,
                DOT_PRECISION, WIDEN, HAS_Q_OFFSET, False)


@triton.jit
def _attn_bwd_fused(Q, K, V, KEY_LENGTHS, Q_OFFSETS, Q_SEG, KV_SEG, DO, LSE,
                    DELTA, scale, softcap, q_len, kv_len, DK, DV, DQ_ACC,
                    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                    BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                    HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                    WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr,
                    HAS_Q_OFFSET: tl.constexpr):
  """The whole backward in one kernel (FlashAttention-2's): dK and dV as
  `_attn_bwd_dkdv`, and dQ = scale * dS K accumulated into the zeroed
  float32 DQ_ACC by atomic adds, one per (query block, key block). Five
  matmuls per block pair instead of the separate kernels' seven (the dQ
  kernel recomputes Q K^T and dO V^T); the float32 sum order is not fixed.
  """
  _dkdv_program(Q, K, V, KEY_LENGTHS, Q_OFFSETS, Q_SEG, KV_SEG, DO, LSE,
                DELTA, scale, softcap, q_len, kv_len, DK, DV, DQ_ACC,
                NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M,
                BLOCK_N, CAUSAL, HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT,
                HAS_SOFTCAP, DOT_PRECISION, WIDEN, HAS_Q_OFFSET, True)


@triton.jit
def _dq_key_blocks(dq, q, do, lse, delta, q_seg, offs_m, offs_d, K, V, KV_SEG,
                   kv_base, off_b, scale, softcap, q_len, kv_len, offset,
                   start,
                   end, mid_lo, mid_hi, hi,
                   NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                   HEAD_DIM_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
                   WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                   HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   WIDEN: tl.constexpr, MASKED: tl.constexpr):
  """Adds the key blocks of [start, end) to dq; blocks and MASKED as in
  `_fwd_key_blocks`."""
  for block in tl.range(start, end, BLOCK_N):
    start_n = _skip_interior(block, mid_lo, mid_hi,
                             MASKED and not HAS_SEGMENTS)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K + kv_base, offs_n, hi, offs_d, q.dtype,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, MASKED,
                   WIDEN)
    v = _load_tile(V + kv_base, offs_n, hi, offs_d, q.dtype,
                   NUM_KV_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, MASKED,
                   WIDEN)
    qk, t = _scores(q, tl.trans(k), scale, softcap, DOT_PRECISION,
                    HAS_SOFTCAP)
    ok = None
    if MASKED:
      kv_seg = offs_n
      if HAS_SEGMENTS:
        kv_seg = tl.load(KV_SEG + off_b * kv_len + offs_n, mask=offs_n < hi,
                         other=-2)
      ok = _allowed(offs_m, offs_n, hi, q_len, offset, q_seg, kv_seg, CAUSAL,
                    HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT)
    p = _probabilities(qk, lse[:, None], ok, MASKED)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = _score_grad(p, dp, delta[:, None], t, HAS_SOFTCAP)
    dq += tl.dot(_operand(ds, q.dtype, WIDEN), k,
                 input_precision=DOT_PRECISION)
  return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, KEY_LENGTHS, Q_OFFSETS, Q_SEG, KV_SEG, DO, LSE, DELTA, scale,
                 softcap, q_len, kv_len, DQ,
                 NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                 HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                 BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                 WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr,
                 HAS_Q_OFFSET: tl.constexpr):
  """dQ = scale * dS K for one block of queries of one query head."""
  start_m = tl.program_id(0)
  off_bh = tl.program_id(1)
  off_b = off_bh // NUM_HEADS
  off_h = off_bh % NUM_HEADS
  off_hk = off_h // (NUM_HEADS // NUM_KV_HEADS)
  q_base = (off_b.to(tl.int64) * q_len * NUM_HEADS + off_h) * HEAD_DIM
  kv_base = (off_b.to(tl.int64) * kv_len * NUM_KV_HEADS + off_hk) * HEAD_DIM

  offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
  offs_d = tl.arange(0, HEAD_DIM_PAD)
  q = _load_tile(Q + q_base, offs_m, q_len, offs_d, Q.dtype.element_ty,
                 NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True, WIDEN)
  do = _load_tile(DO + q_base, offs_m, q_len, offs_d, Q.dtype.element_ty,
                  NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD, True, WIDEN)
  lse = tl.load(LSE + off_bh * q_len + offs_m, mask=offs_m < q_len,
                other=float("inf"))
  delta = tl.load(DELTA + off_bh * q_len + offs_m, mask=offs_m < q_len,
                  other=0.0)
  key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
  offset = _query_offset(Q_OFFSETS, off_b, q_len, kv_len, HAS_Q_OFFSET)
  lo, mid_lo, mid_hi, hi = _key_range(start_m, key_len, offset, BLOCK_M,
                                      BLOCK_N, CAUSAL, WINDOW_LEFT,
                                      WINDOW_RIGHT, HAS_SEGMENTS)
  q_seg = offs_m
  if HAS_SEGMENTS:
    q_seg = tl.load(Q_SEG + off_b * q_len + offs_m, mask=offs_m < q_len,
                    other=-1)

  dq = tl.zeros((BLOCK_M, HEAD_DIM_PAD), tl.float32)
  if not HAS_SEGMENTS:
    dq = _dq_key_blocks(
        dq, q, do, lse, delta, q_seg, offs_m, offs_d, K, V, KV_SEG, kv_base,
        off_b, scale, softcap, q_len, kv_len, offset, mid_lo, mid_hi,
        mid_lo, mid_hi, hi, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL,
        HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT, HAS_SOFTCAP, DOT_PRECISION,
        WIDEN, False)
  dq = _dq_key_blocks(
      dq, q, do, lse, delta, q_seg, offs_m, offs_d, K, V, KV_SEG, kv_base,
      off_b, scale, softcap, q_len, kv_len, offset, lo,
      hi - (mid_hi - mid_lo), mid_lo, mid_hi, hi, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N,
      CAUSAL, HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT, HAS_SOFTCAP,
      DOT_PRECISION, WIDEN, True)
  _store_tile(DQ + q_base, offs_m, q_len, offs_d, dq * scale,
              NUM_HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM_PAD)
