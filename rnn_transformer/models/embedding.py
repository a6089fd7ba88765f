"""Inputs to features and features to logits, shared by every backbone."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import validation
from rnn_transformer.models.model_config import ModelConfig

Array = jax.Array


def check_tokens(tokens: Array, vocab_size: int, name: str = "inputs") -> None:
  """`tokens`: `(batch, time)` integers in `[0, vocab_size)`.

  The range is checked only when the values are concrete (not under jit).
  `name` is the caller's argument (`inputs`, `prompt`).
  """
  validation.check_rank(name, tokens, 2, "(batch, time) token ids")
  dtype = jnp.result_type(tokens)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise validation.DTypeError(
        f"{name}: expected integer token ids (the model has vocab_size="
        f"{vocab_size}), got dtype {dtype}")
  if validation.is_concrete(tokens) and np.size(tokens):
    values = np.asarray(tokens)
    if values.min() < 0 or values.max() >= vocab_size:
      raise ValueError(
          f"{name}: token ids must be in [0, vocab_size={vocab_size}), got "
          f"min {values.min()} and max {values.max()}")


class Embedder(nn.Module):
  """Token embedding or input projection (`encode`) and output layer (`decode`).

  Token embeddings are multiplied by sqrt(model_dim) as in Vaswani et al.
  (2017), so that they and the unit-amplitude sinusoidal encodings are of one
  scale; the table itself starts at variance 1/model_dim, which keeps tied
  logits `features @ table^T` of order one.

  Attributes:
    config: the model's hyper-parameters.
    project_inputs: map float inputs to `model_dim` with a Dense layer (the
      Transformer's residual stream); False passes them through (recurrent
      layers take any width).
  """
  config: ModelConfig
  project_inputs: bool = True

  def setup(self):
    cfg = self.config
    if cfg.vocab_size is not None:
      self.embedding = nn.Embed(cfg.vocab_size, cfg.model_dim, dtype=cfg.dtype,
                                param_dtype=cfg.param_dtype)
    elif self.project_inputs:
      self.input_projection = nn.Dense(cfg.model_dim, dtype=cfg.dtype,
                                       param_dtype=cfg.param_dtype)
    if cfg.logits_size is not None and not cfg.tie_embeddings:
      self.output_layer = nn.Dense(cfg.logits_size, dtype=cfg.dtype,
                                   param_dtype=cfg.param_dtype)

  def encode(self, inputs: Array) -> Array:
    """`(batch, time)` ids or `(batch, time, features)` -> `(batch, time, d)`."""
    cfg = self.config
    if cfg.vocab_size is not None:
      check_tokens(inputs, cfg.vocab_size)
      return self.embedding(inputs) * math.sqrt(cfg.model_dim)
    validation.check_rank("inputs", inputs, 3, "(batch, time, features) "
                          "floats (the config has no vocab_size)")
    validation.check_floating("inputs", inputs)
    if self.project_inputs:
      return self.input_projection(inputs)
    return inputs if cfg.dtype is None else inputs.astype(cfg.dtype)

  def decode(self, features: Array) -> Array | None:
    """`(batch, time, d)` -> logits `(batch, time, logits_size)` or None."""
    cfg = self.config
    if cfg.logits_size is None:
      return None
    if cfg.tie_embeddings:
      return self.embedding.attend(features)
    return self.output_layer(features)
