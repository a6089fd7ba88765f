"""Reference attention: the oracle for tests and a fallback on any backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels import masking


def soft_cap(scores: jax.Array, softcap: float | None) -> jax.Array:
  """`softcap * tanh(scores / softcap)` (Gemma 2's logit soft-capping), or
  the scores unchanged when `softcap` is None."""
  if softcap is None:
    return scores
  return softcap * jnp.tanh(scores / softcap)


def public_lse(lse: jax.Array) -> jax.Array:
  """The log-sum-exp residual as returned: `-inf` for rows without any
  allowed key (`log 0`), which the kernels mark `+inf` internally."""
  return jnp.where(lse == jnp.inf, -jnp.inf, lse)


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array,
                        mask: masking.Mask, scale: float, *,
                        softcap: float | None = None,
                        return_residuals: bool = False):
  """Computes `softmax(cap(scale * Q K^T) + mask) V` with an n x n score
  matrix, `cap` the optional soft-capping (`soft_cap`).

  Accumulates in float32 at `Precision.HIGHEST`. Grouped-query attention is
  expressed by reshaping the query heads into (kv_heads, group), so K and V are
  never repeated. Rows with no allowed key are zero.

  Args:
    q: `(batch, q_len, num_heads, head_dim)`.
    k: `(batch, kv_len, num_kv_heads, head_dim)`.
    v: `(batch, kv_len, num_kv_heads, head_dim)`.
    mask: masking arguments.
    scale: softmax scale.
    softcap: soft-capping of the scaled scores, before masking; None: none.
    return_residuals: also return the log-sum-exp of the capped, masked
      scores per row, `(batch, num_heads, q_len)` float32, `-inf` for rows
      without any allowed key.

  Returns:
    `(batch, q_len, num_heads, head_dim)` in the dtype of `q`, and the
    log-sum-exp when `return_residuals`.
  """
  batch, q_len, num_heads, head_dim = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  group = num_heads // num_kv_heads
  hi = jax.lax.Precision.HIGHEST
  qg = q.astype(jnp.float32).reshape(batch, q_len, num_kv_heads, group,
                                     head_dim)
  s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(jnp.float32),
                 precision=hi) * scale
  s = soft_cap(s, softcap)
  ok = masking.allowed(mask, jnp.arange(q_len), jnp.arange(kv_len), q_len,
                       kv_len)[:, None, None]
  s = jnp.where(ok, s, -jnp.inf)
  m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True,
                                    initial=-jnp.inf))  # kv_len may be 0
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(s - m)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom == 0.0, 1.0, denom)
  o = jnp.einsum("bhgqk,bkhd->bqhgd", p, v.astype(jnp.float32), precision=hi)
  o = o.reshape(batch, q_len, num_heads, head_dim).astype(q.dtype)
  if not return_residuals:
    return o
  denom = denom[..., 0]
  lse = jnp.where(denom > 0.0,
                  m[..., 0] + jnp.log(jnp.where(denom > 0.0, denom, 1.0)),
                  -jnp.inf)
  return o, lse.reshape(batch, num_heads, q_len)
