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
causal, `j <= i + kv_len - q_len`, and, with segments, the segment ids match,
and, with a window (constexprs `WINDOW_LEFT`/`WINDOW_RIGHT`, -1 unbounded),
`i' - WINDOW_LEFT <= j <= i' + WINDOW_RIGHT` for `i' = i + kv_len - q_len`.
Key blocks wholly outside the causal triangle or the window are skipped, so a
window of w keys costs O(n w), not O(n^2).

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
def _allowed(offs_m, offs_n, key_len, q_len, kv_len, q_seg, kv_seg,
             CAUSAL: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
             WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr):
  """(BLOCK_M, BLOCK_N) mask for query rows offs_m and key columns offs_n."""
  ok = (offs_n[None, :] < key_len) & (offs_m[:, None] < q_len)
  aligned = offs_m[:, None] + (kv_len - q_len)
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
def _key_range(start_m, key_len, q_len, kv_len, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr):
  """[lo, hi): the keys any query of this block may see, lo a multiple of
  BLOCK_N. Blocks right of the diagonal or outside the window are skipped."""
  offset = kv_len - q_len
  hi = key_len
  if CAUSAL:
    hi = tl.minimum(hi, (start_m + 1) * BLOCK_M + offset)
  if WINDOW_RIGHT >= 0:
    hi = tl.minimum(hi, (start_m + 1) * BLOCK_M + offset + WINDOW_RIGHT)
  hi = tl.maximum(hi, 0)
  lo = 0
  if WINDOW_LEFT >= 0:
    lo = tl.maximum(start_m * BLOCK_M + offset - WINDOW_LEFT, 0)
    lo = lo // BLOCK_N * BLOCK_N
  return lo, hi


@triton.jit
def _query_range(start_n, key_len, q_len, kv_len, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr):
  """[lo, hi): the queries that may see a key of the block at start_n, lo a
  multiple of BLOCK_M; empty for a block past the example's key length."""
  offset = kv_len - q_len
  lo = 0
  if CAUSAL:  # queries above the first that sees key start_n are masked
    lo = tl.maximum(start_n - offset, 0)
  if WINDOW_RIGHT >= 0:
    lo = tl.maximum(lo, start_n - offset - WINDOW_RIGHT)
  lo = lo // BLOCK_M * BLOCK_M
  hi = tl.where(start_n < key_len, q_len, 0)
  if WINDOW_LEFT >= 0:
    hi = tl.minimum(hi, start_n + BLOCK_N + WINDOW_LEFT - offset)
  return lo, hi


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
def _attn_fwd(Q, K, V, KEY_LENGTHS, Q_SEG, KV_SEG, scale, softcap, q_len,
              kv_len, O, LSE,
              NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
              HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
              BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
              WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
              DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr):
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
  rows = offs_m[:, None] * (NUM_HEADS * HEAD_DIM) + offs_d[None, :]
  q = _operand(tl.load(
      Q + q_base + rows,
      mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
      other=0.0), Q.dtype.element_ty, WIDEN)
  key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
  lo, hi = _key_range(start_m, key_len, q_len, kv_len, BLOCK_M, BLOCK_N,
                      CAUSAL, WINDOW_LEFT, WINDOW_RIGHT)
  q_seg = offs_m
  if HAS_SEGMENTS:
    q_seg = tl.load(Q_SEG + off_b * q_len + offs_m, mask=offs_m < q_len,
                    other=-1)

  m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
  l_i = tl.zeros((BLOCK_M,), tl.float32)
  acc = tl.zeros((BLOCK_M, HEAD_DIM_PAD), tl.float32)
  for start_n in range(lo, hi, BLOCK_N):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    cols = offs_n[:, None] * (NUM_KV_HEADS * HEAD_DIM) + offs_d[None, :]
    k = _operand(tl.load(
        K + kv_base + cols,
        mask=_in_bounds(offs_n, hi, offs_d, HEAD_DIM, HEAD_DIM_PAD),
        other=0.0), Q.dtype.element_ty, WIDEN)
    kv_seg = offs_n
    if HAS_SEGMENTS:
      kv_seg = tl.load(KV_SEG + off_b * kv_len + offs_n, mask=offs_n < hi,
                       other=-2)
    qk, _ = _scores(q, tl.trans(k), scale, softcap, DOT_PRECISION,
                    HAS_SOFTCAP)
    ok = _allowed(offs_m, offs_n, hi, q_len, kv_len, q_seg, kv_seg, CAUSAL,
                  HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT)
    qk = tl.where(ok, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # A row with no allowed key so far keeps m = -inf; shift by 0 instead so
    # that exp2 sees -inf - 0 (= 0) rather than -inf - -inf (= NaN).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _operand(tl.load(
        V + kv_base + cols,
        mask=_in_bounds(offs_n, hi, offs_d, HEAD_DIM, HEAD_DIM_PAD),
        other=0.0), Q.dtype.element_ty, WIDEN)
    acc = acc * alpha[:, None] + tl.dot(
        _operand(p, Q.dtype.element_ty, WIDEN), v,
        input_precision=DOT_PRECISION)
    m_i = m_new

  has_key = l_i > 0.0
  acc = acc / tl.where(has_key, l_i, 1.0)[:, None]
  lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)),
                 float("inf"))
  tl.store(O + q_base + rows, acc.to(O.dtype.element_ty),
           mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD))
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
  rows = offs_m[:, None] * (NUM_HEADS * HEAD_DIM) + offs_d[None, :]
  in_range = _in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD)
  o = tl.load(O + base + rows, mask=in_range, other=0.0).to(tl.float32)
  do = tl.load(DO + base + rows, mask=in_range, other=0.0).to(tl.float32)
  tl.store(DELTA + off_bh * q_len + offs_m, tl.sum(o * do, 1),
           mask=offs_m < q_len)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, KEY_LENGTHS, Q_SEG, KV_SEG, DO, LSE, DELTA, scale,
                   softcap, q_len, kv_len, DK, DV,
                   NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                   HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
              BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                   HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                   WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr):
  """dV = P^T dO and dK = scale * dS^T Q for one block of keys of one kv head.

  Sums over the GROUP query heads that share the kv head, so no atomics are
  needed. P = exp2(scale log2(e) Q K^T - LSE), dS = P * (dO V^T - DELTA).
  """
  group: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
  start_n = tl.program_id(0) * BLOCK_N
  off_bhk = tl.program_id(1)
  off_b = off_bhk // NUM_KV_HEADS
  off_hk = off_bhk % NUM_KV_HEADS
  kv_base = (off_b.to(tl.int64) * kv_len * NUM_KV_HEADS + off_hk) * HEAD_DIM
  offs_n = start_n + tl.arange(0, BLOCK_N)
  offs_d = tl.arange(0, HEAD_DIM_PAD)
  cols = offs_n[:, None] * (NUM_KV_HEADS * HEAD_DIM) + offs_d[None, :]
  k = _operand(tl.load(
      K + kv_base + cols,
      mask=_in_bounds(offs_n, kv_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
      other=0.0), Q.dtype.element_ty, WIDEN)
  v = _operand(tl.load(
      V + kv_base + cols,
      mask=_in_bounds(offs_n, kv_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
      other=0.0), Q.dtype.element_ty, WIDEN)
  key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
  kv_seg = offs_n
  if HAS_SEGMENTS:
    kv_seg = tl.load(KV_SEG + off_b * kv_len + offs_n, mask=offs_n < kv_len,
                     other=-2)
  # Key blocks past the example's key length receive no gradient.
  lo, hi = _query_range(start_n, key_len, q_len, kv_len, BLOCK_M, BLOCK_N,
                        CAUSAL, WINDOW_LEFT, WINDOW_RIGHT)

  dk = tl.zeros((BLOCK_N, HEAD_DIM_PAD), tl.float32)
  dv = tl.zeros((BLOCK_N, HEAD_DIM_PAD), tl.float32)
  # One flat loop over (query head of the group, query block): a nested loop
  # would restart the software pipeline per head and keep more values live.
  num_m = tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_M)
  for it in range(0, group * num_m):
    g = it // num_m
    start_m = lo + (it - g * num_m) * BLOCK_M
    off_h = off_hk * group + g
    off_bh = off_b * NUM_HEADS + off_h
    q_base = (off_b.to(tl.int64) * q_len * NUM_HEADS + off_h) * HEAD_DIM
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rows = offs_m[:, None] * (NUM_HEADS * HEAD_DIM) + offs_d[None, :]
    q = _operand(tl.load(
        Q + q_base + rows,
        mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
        other=0.0), Q.dtype.element_ty, WIDEN)
    do = _operand(tl.load(
        DO + q_base + rows,
        mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
        other=0.0), Q.dtype.element_ty, WIDEN)
    lse = tl.load(LSE + off_bh * q_len + offs_m, mask=offs_m < q_len,
                  other=float("inf"))
    delta = tl.load(DELTA + off_bh * q_len + offs_m, mask=offs_m < q_len,
                    other=0.0)
    q_seg = offs_m
    if HAS_SEGMENTS:
      q_seg = tl.load(Q_SEG + off_b * q_len + offs_m, mask=offs_m < q_len,
                      other=-1)
    qk_t, t_t = _scores(k, tl.trans(q), scale, softcap, DOT_PRECISION,
                        HAS_SOFTCAP)
    ok_t = tl.trans(_allowed(offs_m, offs_n, key_len, q_len, kv_len, q_seg,
                             kv_seg, CAUSAL, HAS_SEGMENTS, WINDOW_LEFT,
                             WINDOW_RIGHT))
    # Masked before exp2 so masked scores never overflow to inf.
    p_t = tl.math.exp2(tl.where(ok_t, qk_t - lse[None, :], float("-inf")))
    dv += tl.dot(_operand(p_t, Q.dtype.element_ty, WIDEN), do,
                 input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    if HAS_SOFTCAP:
      ds_t = ds_t * (1.0 - t_t * t_t)
    dk += tl.dot(_operand(ds_t, Q.dtype.element_ty, WIDEN), q,
                 input_precision=DOT_PRECISION)

  dk = dk * scale
  tl.store(DK + kv_base + cols, dk.to(DK.dtype.element_ty),
           mask=_in_bounds(offs_n, kv_len, offs_d, HEAD_DIM, HEAD_DIM_PAD))
  tl.store(DV + kv_base + cols, dv.to(DV.dtype.element_ty),
           mask=_in_bounds(offs_n, kv_len, offs_d, HEAD_DIM, HEAD_DIM_PAD))


@triton.jit
def _attn_bwd_dq(Q, K, V, KEY_LENGTHS, Q_SEG, KV_SEG, DO, LSE, DELTA, scale,
                 softcap, q_len, kv_len, DQ,
                 NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                 HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
              BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_SEGMENTS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                 WINDOW_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, WIDEN: tl.constexpr):
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
  rows = offs_m[:, None] * (NUM_HEADS * HEAD_DIM) + offs_d[None, :]
  q = _operand(tl.load(
      Q + q_base + rows,
      mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
      other=0.0), Q.dtype.element_ty, WIDEN)
  do = _operand(tl.load(
      DO + q_base + rows,
      mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD),
      other=0.0), Q.dtype.element_ty, WIDEN)
  lse = tl.load(LSE + off_bh * q_len + offs_m, mask=offs_m < q_len,
                other=float("inf"))
  delta = tl.load(DELTA + off_bh * q_len + offs_m, mask=offs_m < q_len,
                  other=0.0)
  key_len = tl.minimum(tl.load(KEY_LENGTHS + off_b), kv_len)
  lo, hi = _key_range(start_m, key_len, q_len, kv_len, BLOCK_M, BLOCK_N,
                      CAUSAL, WINDOW_LEFT, WINDOW_RIGHT)
  q_seg = offs_m
  if HAS_SEGMENTS:
    q_seg = tl.load(Q_SEG + off_b * q_len + offs_m, mask=offs_m < q_len,
                    other=-1)

  dq = tl.zeros((BLOCK_M, HEAD_DIM_PAD), tl.float32)
  for start_n in range(lo, hi, BLOCK_N):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    cols = offs_n[:, None] * (NUM_KV_HEADS * HEAD_DIM) + offs_d[None, :]
    k = _operand(tl.load(
        K + kv_base + cols,
        mask=_in_bounds(offs_n, hi, offs_d, HEAD_DIM, HEAD_DIM_PAD),
        other=0.0), Q.dtype.element_ty, WIDEN)
    v = _operand(tl.load(
        V + kv_base + cols,
        mask=_in_bounds(offs_n, hi, offs_d, HEAD_DIM, HEAD_DIM_PAD),
        other=0.0), Q.dtype.element_ty, WIDEN)
    kv_seg = offs_n
    if HAS_SEGMENTS:
      kv_seg = tl.load(KV_SEG + off_b * kv_len + offs_n, mask=offs_n < hi,
                       other=-2)
    qk, t = _scores(q, tl.trans(k), scale, softcap, DOT_PRECISION,
                    HAS_SOFTCAP)
    ok = _allowed(offs_m, offs_n, hi, q_len, kv_len, q_seg, kv_seg, CAUSAL,
                  HAS_SEGMENTS, WINDOW_LEFT, WINDOW_RIGHT)
    p = tl.math.exp2(tl.where(ok, qk - lse[:, None], float("-inf")))
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    if HAS_SOFTCAP:
      ds = ds * (1.0 - t * t)
    dq += tl.dot(_operand(ds, Q.dtype.element_ty, WIDEN), k,
                 input_precision=DOT_PRECISION)

  dq = dq * scale
  tl.store(DQ + q_base + rows, dq.to(DQ.dtype.element_ty),
           mask=_in_bounds(offs_m, q_len, offs_d, HEAD_DIM, HEAD_DIM_PAD))
