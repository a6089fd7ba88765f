"""One backbone interface over recurrent and Transformer models.

`build_backbone(config)` turns a `ModelConfig` (or a dict / ConfigDict with its
field names) into a Flax module with one call signature:

    model(inputs, *, lengths=None, decode=False, deterministic=True)
        -> BackboneOutput(features (batch, time, d), logits or None)

`inputs` are `(batch, time)` token ids when `config.vocab_size` is set, else
`(batch, time, features)` floats. Causal backbones also decode step by step
through the `cache` collection: keys and values for a Transformer, the
recurrent carry for the RNN/LSTM/GRU. `rnn_transformer.generate` drives any of
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from rnn_transformer import validation
from rnn_transformer.layers.cells import GRUCell
from rnn_transformer.layers.cells import LSTMCell
from rnn_transformer.layers.cells import SimpleRNNCell
from rnn_transformer.layers.linear_rnn import LINEAR_CELLS
from rnn_transformer.layers.recurrent import StackedRNN
from rnn_transformer.models.embedding import Embedder
from rnn_transformer.models.model_config import BackboneOutput
from rnn_transformer.models.model_config import ModelConfig
from rnn_transformer.models.model_config import check_module_config
from rnn_transformer.models.transformer import TransformerEncoder
from rnn_transformer.models.transformer import TransformerLM

Array = jax.Array

RECURRENT_CELLS = {"rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell,
                   **LINEAR_CELLS}


class RecurrentBackbone(nn.Module):
  """Embedding, `StackedRNN` of the configured cell, output layer.

  Causal configs run the layers left to right and decode with the carry of
  every layer kept in the `cache` collection (`cache/carry`), so a prompt and
  then single tokens continue exactly where the previous call stopped. As in
  flax, `init(rng, dummy, decode=True)` returns the empty cache (the zero
  initial carry, equal to `rnn_transformer.init_cache`) without running the
  dummy into it; an `apply` without a cache starts from that carry and
  processes its tokens.
  Bidirectional configs (`causal=False`) make every layer `Bidirectional`.
  """
  config: ModelConfig

  def __post_init__(self):
    check_module_config("RecurrentBackbone", self.config,
                        tuple(RECURRENT_CELLS))
    super().__post_init__()

  @property
  def max_len(self) -> None:
    """No limit: the carry has a fixed size whatever the sequence length."""
    return None

  @nn.compact
  def __call__(self, inputs: Array, *, lengths: Array | None = None,
               decode: bool = False, deterministic: bool = True
               ) -> BackboneOutput:
    """See the module doc; `lengths` are the RNN's `seq_lengths`."""
    cfg = self.config
    if decode and not cfg.causal:
      raise ValueError("decode=True needs a causal (unidirectional) backbone; "
                       "the config has causal=False")
    if decode and lengths is not None:
      raise ValueError("lengths: not supported with decode=True")
    embedder = Embedder(cfg, project_inputs=False, name="embedder")
    x = embedder.encode(inputs)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if lengths is not None:
      validation.check_seq_lengths(lengths, x.shape[0], x.shape[1],
                                   name="lengths")
    cell = RECURRENT_CELLS[cfg.backbone]
    options = {"forget_bias": cfg.forget_bias} if cfg.backbone == "lstm" else {}
    cells = [cell(cfg.model_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  **options) for _ in range(cfg.num_layers)]
    stack = StackedRNN(cells, bidirectional=not cfg.causal,
                       dropout_rate=cfg.dropout_rate,
                       scan_method=cfg.scan_method,
                       evaluation=cfg.evaluation,
                       newton=cfg.newton_options,
                       name="rnn")
    carry = None
    if decode:  # created as the initial carry if absent: zeros
      carry = self.variable(
          "cache", "carry", lambda: [
              c.initialize_carry(jax.random.key(0), x[:, 0].shape)
              for c in cells])
      cached_batch = jax.tree.leaves(carry.value)[0].shape[0]
      if cached_batch != x.shape[0]:
        raise ValueError(f"inputs: batch {x.shape[0]} differs from the "
                         f"cache's batch {cached_batch}")
    carries, x = stack(
        x, initial_carry=None if carry is None else carry.value,
        seq_lengths=lengths, deterministic=deterministic, return_carry=True)
    if decode and not self.is_initializing():  # init: the empty cache (flax)
      carry.value = carries
    return BackboneOutput(features=x, logits=embedder.decode(x))


def build_backbone(config: ModelConfig | Mapping[str, Any]) -> nn.Module:
  """The module for `config.backbone` (`model_config.BACKBONES`).

  A causal Transformer is a `TransformerLM`, a bidirectional one a
  `TransformerEncoder`; recurrent kinds are a `RecurrentBackbone`.
  """
  if not isinstance(config, ModelConfig):
    if not isinstance(config, Mapping) and not hasattr(config, "to_dict"):
      raise TypeError(f"config: expected a ModelConfig, dict or ConfigDict, "
                      f"got {type(config).__name__}")
    config = ModelConfig.from_mapping(config)
  if config.backbone == "transformer":
    return TransformerLM(config) if config.causal else TransformerEncoder(
        config)
  return RecurrentBackbone(config)

