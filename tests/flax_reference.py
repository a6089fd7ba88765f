"""Maps flax.linen recurrent-cell parameters onto this library's layout.

The mapping is linear (concatenation of gate blocks), so applying it to flax
gradients gives the gradients our layout must produce.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import rnn_transformer as rt


def _concat(params, names, leaf):
  return jnp.concatenate([params[n][leaf] for n in names], axis=-1)


def cell_params_from_flax(ours: type, flax_params: dict) -> dict:
  """Flax cell params (no 'params' prefix) -> our cell's params."""
  if ours is rt.SimpleRNNCell:
    return {
        "input_projection": {"kernel": flax_params["i"]["kernel"],
                             "bias": flax_params["i"]["bias"]},
        "recurrent_projection": {"kernel": flax_params["h"]["kernel"]},
    }
  if ours is rt.LSTMCell:
    return {
        "input_projection": {
            "kernel": _concat(flax_params, ["ii", "if", "ig", "io"], "kernel"),
            "bias": _concat(flax_params, ["hi", "hf", "hg", "ho"], "bias")},
        "recurrent_projection": {
            "kernel": _concat(flax_params, ["hi", "hf", "hg", "ho"], "kernel")},
    }
  if ours is rt.GRUCell:
    return {
        "input_projection": {
            "kernel": _concat(flax_params, ["ir", "iz", "in"], "kernel"),
            "bias": _concat(flax_params, ["ir", "iz", "in"], "bias")},
        "recurrent_projection": {
            "kernel": _concat(flax_params, ["hr", "hz", "hn"], "kernel")},
        "candidate_bias": flax_params["hn"]["bias"],
    }
  raise ValueError(f"no flax counterpart for {ours}")


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
