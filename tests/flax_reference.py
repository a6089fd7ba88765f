"""Maps flax.linen recurrent-cell parameters onto this library's layout.

The mapping is linear (concatenation of gate blocks), so applying it to flax
gradients gives the gradients our layout must produce.
"""

import flax.linen as nn
import jax

import rnn_transformer as rt


def cell_params_from_flax(ours: type, flax_params: dict) -> dict:
  """Flax cell params (no 'params' prefix) -> our cell's params."""
  return rt.params_from_flax(ours, flax_params)


# (our cell, flax cell) pairs that must agree.
CELL_PAIRS = [
    (rt.SimpleRNNCell, nn.SimpleCell),
    (rt.LSTMCell, nn.LSTMCell),
    (rt.LSTMCell, nn.OptimizedLSTMCell),
    (rt.GRUCell, nn.GRUCell),
]


def random_flax_params(flax_params: dict, key) -> dict:
  """Replaces every leaf by N(0, 0.5^2) noise so biases are non-zero too."""

  leaves, tree = jax.tree.flatten(flax_params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      tree, [0.5 * jax.random.normal(k, x.shape, x.dtype)
             for k, x in zip(keys, leaves, strict=True)])
