"""Blockwise attention in pure JAX: online softmax over key blocks.

The forward pass scans over key blocks of size `block_k`, keeping a running
row maximum `m`, normaliser `l` and unnormalised output, and saves the
log-sum-exp `lse = m + log(l)` per query row. The backward pass (a
`jax.custom_vjp`) scans over key blocks again and recomputes the probabilities
`P = exp(S - lse)` from the saved `lse`, so neither pass holds more than a
`(q_len, block_k)` slab of scores per head: memory grows O(n) in the sequence
length instead of O(n^2).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import masking
from kernels import reference

DEFAULT_BLOCK_K = 512
_HI = jax.lax.Precision.HIGHEST


def _split_kv(x: jax.Array, block_k: int) -> jax.Array:
  """(b, kv_len, hk, d) -> (num_blocks, b, block_k, hk, d), zero padded."""
  b, kv_len, hk, d = x.shape
  num_blocks = -(-kv_len // block_k)
  x = jnp.pad(x, ((0, 0), (0, num_blocks * block_k - kv_len), (0, 0), (0, 0)))
  return x.reshape(b, num_blocks, block_k, hk, d).swapaxes(0, 1)


def _group_q(x: jax.Array, num_kv_heads: int) -> jax.Array:
  """(b, q_len, h, d) -> (b, q_len, hk, group, d) in float32."""
  b, q_len, h, d = x.shape
  return x.astype(jnp.float32).reshape(b, q_len, num_kv_heads,
                                       h // num_kv_heads, d)


def _block_mask(mask: masking.Mask, j: jax.Array, block_k: int, q_len: int,
                kv_len: int) -> jax.Array:
  """(b|1, 1, 1, q_len, block_k) mask for key block j."""
  k_pos = j * block_k + jnp.arange(block_k)
  return masking.allowed(mask, jnp.arange(q_len), k_pos, q_len,
                         kv_len)[:, None, None]


def _scores(qg, kb, scale, softcap):
  """Scaled (and soft-capped) scores `(b, hk, group, q_len, block_k)`, and
  tanh of the capped argument (for the backward), or None."""
  s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, kb, precision=_HI) * scale
  if softcap is None:
    return s, None
  t = jnp.tanh(s / softcap)
  return softcap * t, t


def _forward(q, k, v, mask, scale, softcap, block_k):
  """Returns the output and the per-row log-sum-exp `(b, hk, group, q_len)`."""
  b, q_len, h, d = q.shape
  kv_len, hk = k.shape[1], k.shape[2]
  qg = _group_q(q, hk)
  shape = (b, hk, h // hk, q_len)

  def step(carry, xs):
    o, m, l = carry
    j, kb, vb = xs
    s, _ = _scores(qg, kb.astype(jnp.float32), scale, softcap)
    s = jnp.where(_block_mask(mask, j, block_k, q_len, kv_len), s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(s - m_safe[..., None])
    l = l * alpha + jnp.sum(p, axis=-1)
    o = o * alpha[..., None] + jnp.einsum(
        "bhgqk,bkhd->bhgqd", p, vb.astype(jnp.float32), precision=_HI)
    return (o, m_new, l), None

  init = (jnp.zeros(shape + (d,), jnp.float32),
          jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32))
  kb, vb = _split_kv(k, block_k), _split_kv(v, block_k)
  (o, m, l), _ = jax.lax.scan(step, init, (jnp.arange(kb.shape[0]), kb, vb))
  o = o / jnp.where(l == 0.0, 1.0, l)[..., None]
  # +inf marks rows without any allowed key: exp(s - lse) is then 0.
  lse = jnp.where(l > 0.0, m + jnp.log(jnp.where(l > 0.0, l, 1.0)), jnp.inf)
  o = jnp.moveaxis(o, 3, 1).reshape(b, q_len, h, d).astype(q.dtype)
  return o, lse


def _backward(q, k, v, mask, scale, softcap, block_k, o, lse, do, dlse):
  """Gradients w.r.t. q, k, v given those of the output (`do`) and of the
  log-sum-exp (`dlse`, `(b, hk, group, q_len)`): d lse / d s = P, so it
  enters as `dS = P * (dO V^T - (delta - dlse))`."""
  b, q_len, h, d = q.shape
  kv_len, hk = k.shape[1], k.shape[2]
  qg, dog = _group_q(q, hk), _group_q(do, hk)
  delta = jnp.einsum("bqhgd,bqhgd->bhgq", dog, _group_q(o, hk),
                     precision=_HI) - dlse

  def step(dq, xs):
    j, kb, vb = xs
    kb, vb = kb.astype(jnp.float32), vb.astype(jnp.float32)
    s, t = _scores(qg, kb, scale, softcap)
    ok = _block_mask(mask, j, block_k, q_len, kv_len)
    p = jnp.where(ok, jnp.exp(s - lse[..., None]), 0.0)
    dv = jnp.einsum("bhgqk,bqhgd->bkhd", p, dog, precision=_HI)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", dog, vb, precision=_HI)
    ds = p * (dp - delta[..., None]) * scale
    if t is not None:  # through softcap * tanh(s / softcap)
      ds = ds * (1.0 - t * t)
    dq = dq + jnp.einsum("bhgqk,bkhd->bqhgd", ds, kb, precision=_HI)
    dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds, qg, precision=_HI)
    return dq, (dk, dv)

  kb, vb = _split_kv(k, block_k), _split_kv(v, block_k)
  dq, (dk, dv) = jax.lax.scan(step, jnp.zeros_like(qg),
                              (jnp.arange(kb.shape[0]), kb, vb))

  def merge(x):
    x = x.swapaxes(0, 1).reshape(b, -1, hk, d)[:, :kv_len]
    return x.astype(k.dtype)

  return dq.reshape(q.shape).astype(q.dtype), merge(dk), merge(dv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, mask, scale, softcap, block_k):
  """`(output, log-sum-exp (b, hk, group, q_len), +inf for empty rows)`."""
  return _forward(q, k, v, mask, scale, softcap, block_k)


def _attention_fwd(q, k, v, mask, scale, softcap, block_k):
  o, lse = _forward(q, k, v, mask, scale, softcap, block_k)
  return (o, lse), (q, k, v, mask, o, lse)


def _attention_bwd(scale, softcap, block_k, res, cotangents):
  q, k, v, mask, o, lse = res
  do, dlse = cotangents
  dq, dk, dv = _backward(q, k, v, mask, scale, softcap, block_k, o, lse, do,
                         dlse)
  return dq, dk, dv, jax.tree.map(lambda _: None, mask)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention_blockwise(q: jax.Array, k: jax.Array, v: jax.Array,
                        mask: masking.Mask, scale: float, *,
                        softcap: float | None = None,
                        return_residuals: bool = False,
                        block_k: int | None = None):
  """Computes `softmax(cap(scale * Q K^T) + mask) V` one key block at a time.

  Args:
    q: `(batch, q_len, num_heads, head_dim)`.
    k: `(batch, kv_len, num_kv_heads, head_dim)`; `num_kv_heads` divides
      `num_heads` and query head `h` reads kv head `h // group`.
    v: `(batch, kv_len, num_kv_heads, head_dim)`.
    mask: masking arguments (see `kernels.masking`).
    scale: softmax scale.
    softcap: soft-capping of the scaled scores (`reference.soft_cap`).
    return_residuals: also return the log-sum-exp per row, `(batch,
      num_heads, q_len)` float32 (`-inf` where no key is allowed).
    block_k: keys per scan step (default `DEFAULT_BLOCK_K`); `kv_len` need
      not be a multiple.

  Returns:
    `(batch, q_len, num_heads, head_dim)` in the dtype of `q`, and the
    log-sum-exp when `return_residuals`; both differentiable.
  """
  block_k = max(1, min(block_k or DEFAULT_BLOCK_K, k.shape[1]))
  o, lse = _attention(q, k, v, mask, float(scale),
                      None if softcap is None else float(softcap), block_k)
  if not return_residuals:
    return o
  return o, reference.public_lse(lse.reshape(q.shape[0], q.shape[2],
                                             q.shape[1]))
