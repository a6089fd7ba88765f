"""Positional information: sinusoidal, learned absolute and rotary (RoPE).

Absolute encodings (`sinusoidal_position_encoding`, `LearnedPositionEmbedding`)
are added to the token embeddings; rotary embeddings rotate queries and keys
inside attention (`rotary_position_embedding`). All take explicit integer
positions, so a decoder with a cache passes `cache_index + arange(q_len)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import validation

Array = jax.Array


def _check_integer_positions(positions: Array) -> None:
  dtype = jnp.result_type(positions)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise validation.DTypeError(
        f"positions: expected integer positions, got dtype {dtype}")


def sinusoidal_position_encoding(positions: Array, features: int,
                                 max_timescale: float = 10_000.0) -> Array:
  """The sin/cos encoding of Vaswani et al. (2017), section 3.5.

      PE(pos, 2i)     = sin(pos / max_timescale^(2i / features))
      PE(pos, 2i + 1) = cos(pos / max_timescale^(2i / features))

  Args:
    positions: `(..., time)` integer positions.
    features: even encoding width.
    max_timescale: 10000 in the paper.

  Returns:
    `(..., time, features)` float32.
  """
  validation.check_int("features", features)
  if features % 2:
    raise ValueError(f"features: expected an even width, got {features}")
  validation.check_real("max_timescale", max_timescale, positive=True)
  _check_integer_positions(positions)
  inv_freq = max_timescale ** (-np.arange(0, features, 2) / features)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * jnp.asarray(
      inv_freq, jnp.float32)
  # Interleave so that even channels are sines and odd channels cosines.
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(
      angles.shape[:-1] + (features,))


class LearnedPositionEmbedding(nn.Module):
  """A learned vector per absolute position (Gehring et al., 2017; GPT).

  Attributes:
    max_len: number of positions with a vector; longer sequences raise.
    features: embedding width.
    embedding_init: initialiser of the `(max_len, features)` table.
  """
  max_len: int
  features: int
  embedding_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    validation.check_int("max_len", self.max_len)
    validation.check_int("features", self.features)
    validation.check_float_dtype("param_dtype", self.param_dtype)
    super().__post_init__()

  @nn.compact
  def __call__(self, positions: Array) -> Array:
    """`positions: (..., time)` integers in `[0, max_len)` -> `(..., time, features)`."""
    _check_integer_positions(positions)
    if np.ndim(positions) == 0:
      raise ValueError(f"positions: expected shape (..., time), got a "
                       f"scalar {positions!r}")
    if np.shape(positions)[-1] > self.max_len:
      raise ValueError(
          f"positions: sequence length {np.shape(positions)[-1]} exceeds "
          f"max_len {self.max_len} of the learned position embedding")
    if validation.is_concrete(positions) and np.size(positions):
      smallest, largest = int(np.min(positions)), int(np.max(positions))
      if smallest < 0 or largest >= self.max_len:
        raise ValueError(f"positions: expected values in [0, max_len="
                         f"{self.max_len}) of the learned position "
                         f"embedding, got min {smallest} and max {largest}")
    table = self.param("embedding", self.embedding_init,
                       (self.max_len, self.features), self.param_dtype)
    return jnp.take(table, positions, axis=0)


def rotary_position_embedding(x: Array, positions: Array,
                              base: float = 10_000.0) -> Array:
  """Rotary position embedding (RoPE; Su et al., 2021, RoFormer).

  Channel pairs `(i, i + head_dim/2)` of each head are rotated by the angle
  `pos * base^(-2i / head_dim)`, so the score between a query at position m
  and a key at position n depends on their positions only through m - n.
  (The paper pairs adjacent channels `(2i, 2i+1)`; pairing the two halves, as
  GPT-NeoX and LLaMA do, is the same map up to a fixed permutation of the
  channels of q and k, which leaves every score unchanged.)

  Args:
    x: `(batch, time, heads, head_dim)` queries or keys; head_dim even.
    positions: `(batch or 1, time)` absolute integer positions.
    base: the maximum timescale.

  Returns:
    The rotated `x`, same shape and dtype (computed in float32).
  """
  validation.check_rank("x", x, 4, "(batch, time, heads, head_dim)")
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"x: rotary embedding needs an even head_dim, got shape "
                     f"{x.shape}")
  validation.check_real("base", base, positive=True)
  _check_integer_positions(positions)
  batch, time = x.shape[:2]
  if np.ndim(positions) != 2 or np.shape(positions)[1] != time or np.shape(
      positions)[0] not in (1, batch):
    raise ValueError(f"positions: expected shape (batch or 1, time) = "
                     f"({batch} or 1, {time}), got {np.shape(positions)}")
  half = head_dim // 2
  inv_freq = base ** (-np.arange(half) / half)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * jnp.asarray(
      inv_freq, jnp.float32)                                   # (b, t, half)
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin],
                            axis=-1)
  return rotated.astype(x.dtype)
