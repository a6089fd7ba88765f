"""Time reversal within each sequence of a padded batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import validation

Array = jax.Array


def flip_sequences(x: Array, seq_lengths: Array | None) -> Array:
  """Reverses `x: (batch, time, ...)` along time within each sequence.

  Step t < L_b of sequence b goes to L_b - 1 - t; padding (t >= L_b) stays in
  place at the end (flax's `flip_sequences` reverses it too). Its own
  inverse.
  """
  if np.ndim(x) < 2:
    raise ValueError(f"x: expected shape (batch, time, ...), got "
                     f"{np.shape(x)}")
  if seq_lengths is None:
    return jnp.flip(x, axis=1)
  validation.check_seq_lengths(seq_lengths, x.shape[0], x.shape[1])
  time = x.shape[1]
  steps = jnp.arange(time)[None, :]
  lengths = seq_lengths[:, None]
  index = jnp.where(steps < lengths, lengths - 1 - steps, steps)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)
