"""Transformer blocks, a bidirectional encoder and a decoder-only language model.

Vaswani et al. (2017), "Attention Is All You Need", with pre-LayerNorm blocks
by default (Xiong et al., 2020) and the paper's post-LayerNorm as an option.
Attention runs on `kernels.attention` through `MultiHeadAttention`.

Blocks are either separate modules `blocks_0 .. blocks_{L-1}` or, with
`config.scan_layers`, one module `blocks` run by `nn.scan` whose parameters
(and decode caches) carry a leading `num_layers` axis;
`stack_block_params` / `unstack_block_params` convert between the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import parallel
from rnn_transformer import validation
from rnn_transformer.layers import positional
from rnn_transformer.layers.attention import MultiHeadAttention
from rnn_transformer.models.embedding import Embedder
from rnn_transformer.models.model_config import BackboneOutput
from rnn_transformer.models.model_config import ModelConfig
from rnn_transformer.models.model_config import check_module_config

Array = jax.Array

_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu}


class FeedForward(nn.Module):
  """Position-wise `W_2 act(W_1 x + b_1) + b_2`, dropout on the output."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    """`x: (batch, time, model_dim)` -> same shape."""
    cfg = self.config
    dense = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = nn.Dense(cfg.feed_forward_dim, name="wi", **dense)(x)
    h = _ACTIVATIONS[cfg.activation](h)
    h = nn.Dense(cfg.model_dim, name="wo", **dense)(h)
    return nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class TransformerBlock(nn.Module):
  """Self-attention and feed-forward sub-layers with residuals.

      pre-LN:  x = x + Attn(LN(x));  x = x + FFN(LN(x))
      post-LN: x = LN(x + Attn(x));  x = LN(x + FFN(x))

  Attributes:
    config: hyper-parameters (`norm`, heads, `positional == 'rope'`, ...).
    causal: causal self-attention.
    decode: attend through the KV cache (see `MultiHeadAttention`).
    deterministic: disables dropout.
  """
  config: ModelConfig
  causal: bool = False
  decode: bool = False
  deterministic: bool = True

  def __post_init__(self):
    check_module_config("TransformerBlock", self.config, ("transformer",))
    for name in ("causal", "decode", "deterministic"):
      validation.check_bool(name, getattr(self, name))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, positions: Array | None = None,
               key_lengths: Array | None = None) -> Array:
    """`x: (batch, time, model_dim)`; positions `(1 or batch, time)` for RoPE;
    key_lengths `(batch,)` marks padding keys. Returns the same shape as x."""
    cfg = self.config
    attention = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
        dropout_rate=cfg.dropout_rate, rotary=cfg.positional == "rope",
        rope_base=cfg.rope_base, attention_impl=cfg.attention_impl,
        window=cfg.window(self.causal), softcap=cfg.attention_softcap,
        cache_len=cfg.max_len, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        name="attention")
    feed_forward = FeedForward(cfg, name="mlp")
    norm = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    norm_attention = nn.LayerNorm(name="norm_attention", **norm)
    norm_mlp = nn.LayerNorm(name="norm_mlp", **norm)

    def attend(y):
      return attention(y, causal=self.causal, key_lengths=key_lengths,
                       positions=positions, decode=self.decode,
                       deterministic=self.deterministic)

    # The residual stream stays split by batch (and time under a context
    # axis), never taking the parameters' splits.
    x = parallel.constrain_batch(x, time_dim=1)
    if cfg.norm == "pre":
      x = x + attend(norm_attention(x))
      x = x + feed_forward(norm_mlp(x), deterministic=self.deterministic)
    else:
      x = norm_attention(x + attend(x))
      x = norm_mlp(x + feed_forward(x, deterministic=self.deterministic))
    return parallel.constrain_batch(x, time_dim=1)


def _scan_body(block: TransformerBlock, x: Array, positions: Array | None,
               key_lengths: Array | None) -> tuple[Array, None]:
  return block(x, positions, key_lengths), None


class _Transformer(nn.Module):
  """Embedding, positions, blocks, final norm and output layer."""
  config: ModelConfig
  causal: ClassVar[bool] = False

  def __post_init__(self):
    check_module_config(type(self).__name__, self.config, ("transformer",),
                        causal=self.causal)
    super().__post_init__()

  @property
  def max_len(self) -> int:
    """The longest sequence, and decode cache, the model accepts."""
    return self.config.max_len

  def _positions(self, time: int, decode: bool) -> Array:
    """`(1, time)` absolute positions; offset by the tokens seen when decoding."""
    positions = jnp.arange(time)[None, :]
    if not decode:
      return positions
    index = self.variable("cache", "position_index",
                          lambda: jnp.zeros((), jnp.int32))
    positions = positions + index.value
    if not self.is_initializing():  # init only creates the empty cache
      index.value = index.value + time
    return positions

  @nn.compact
  def __call__(self, inputs: Array, *, lengths: Array | None = None,
               decode: bool = False, deterministic: bool = True
               ) -> BackboneOutput:
    """Features and logits at every position.

    Args:
      inputs: `(batch, time)` token ids, or `(batch, time, features)` floats
        when the config has no `vocab_size`; time <= `config.max_len`.
      lengths: `(batch,)` valid lengths; later positions are padding, never
        attended to (their own outputs are unspecified).
      decode: run through the KV cache, `time` new tokens after those already
        cached (language model only). As in flax, `init(rng, dummy,
        decode=True)` returns the empty cache of `config.max_len` positions
        (every index 0, keys and values zero, whatever the dummy's length;
        its output is the plain forward of the dummy), equal to
        `rnn_transformer.init_cache(model, batch)`. An `apply` without a
        `cache` collection creates that empty cache and processes its tokens
        through it (`rnn_transformer.init_cache` makes shorter ones);
        `cache` must be mutable.
      deterministic: disables dropout (needs a 'dropout' rng when False).

    Returns:
      `BackboneOutput(features (batch, time, model_dim), logits)`.
    """
    cfg = self.config
    if np.ndim(inputs) < 2:
      raise ValueError(f"inputs: expected (batch, time) or (batch, time, "
                       f"features), got shape {np.shape(inputs)}")
    batch, time = np.shape(inputs)[:2]
    validation.check_time("inputs", inputs)
    if time > cfg.max_len:
      raise ValueError(f"inputs: sequence length {time} exceeds the "
                       f"configured max_len {cfg.max_len}")
    if decode and not self.causal:
      raise ValueError(f"decode=True needs a causal model; "
                       f"{type(self).__name__} is bidirectional")
    if decode and lengths is not None:
      raise ValueError("lengths: not supported with decode=True (the cache "
                       "holds one position per step for the whole batch)")
    if lengths is not None:
      validation.check_seq_lengths(lengths, batch, time, name="lengths")

    embedder = Embedder(cfg, name="embedder")
    x = embedder.encode(inputs)
    positions = self._positions(time, decode)
    if cfg.positional == "sinusoidal":
      x = x + positional.sinusoidal_position_encoding(
          positions, cfg.model_dim).astype(x.dtype)
    elif cfg.positional == "learned":
      x = x + positional.LearnedPositionEmbedding(
          cfg.max_len, cfg.model_dim, param_dtype=cfg.param_dtype,
          name="position_embedding")(positions).astype(x.dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    block_cls = TransformerBlock
    if cfg.remat:
      block_cls = nn.remat(TransformerBlock, prevent_cse=not cfg.scan_layers)
    block_kwargs = dict(causal=self.causal, decode=decode,
                        deterministic=deterministic)
    if cfg.scan_layers:
      scan = nn.scan(_scan_body,
                     variable_axes={"params": 0, "cache": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast, nn.broadcast),
                     length=cfg.num_layers)
      x, _ = scan(block_cls(cfg, name="blocks", **block_kwargs), x, positions,
                  lengths)
    else:
      for layer in range(cfg.num_layers):
        x = block_cls(cfg, name=f"blocks_{layer}", **block_kwargs)(
            x, positions, lengths)
    if cfg.norm == "pre":
      x = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                       name="final_norm")(x)
    return BackboneOutput(features=x, logits=embedder.decode(x))


class TransformerEncoder(_Transformer):
  """Bidirectional Transformer encoder; padding keys masked via `lengths`.

  Without positional information it is permutation-equivariant: permuting
  the input tokens permutes the outputs.
  """
  causal: ClassVar[bool] = False


class TransformerLM(_Transformer):
  """Decoder-only (causal) Transformer language model with KV-cache decoding.

  Logits at position t depend on inputs 0..t only. With
  `config.tie_embeddings` the output layer is the transposed embedding.
  See `rnn_transformer.generate` for sampling.
  """
  causal: ClassVar[bool] = True


_BLOCK = re.compile(r"blocks_(\d+)$")


def _check_mapping(params: Any) -> None:
  if not isinstance(params, Mapping):
    raise TypeError(f"params: expected a mapping of parameters (a dict or "
                    f"FrozenDict, as from model.init(...)['params']), got "
                    f"{type(params).__name__}")


def stack_block_params(params: dict[str, Any]) -> dict[str, Any]:
  """Parameters of the plain stack (`blocks_i`) -> the scanned layout (`blocks`).

  Works on any collection laid out by `_Transformer` (params or cache).
  """
  _check_mapping(params)
  layers = sorted((int(_BLOCK.match(k).group(1)), v) for k, v in
                  params.items() if _BLOCK.match(k))
  if not layers:
    raise ValueError(f"params: expected blocks_0, blocks_1, ... entries, got "
                     f"keys {sorted(params)}")
  if [i for i, _ in layers] != list(range(len(layers))):
    raise ValueError(f"params: block indices must be 0..{len(layers) - 1}, "
                     f"got {[i for i, _ in layers]}")
  shapes = [jax.tree.map(np.shape, block) for _, block in layers]
  for i, block_shapes in enumerate(shapes):
    if jax.tree.structure(block_shapes) != jax.tree.structure(shapes[0]) or (
        jax.tree.leaves(block_shapes) != jax.tree.leaves(shapes[0])):
      raise ValueError(f"params: expected blocks_0 ... blocks_"
                       f"{len(layers) - 1} of one structure and shapes, but "
                       f"blocks_{i} differs from blocks_0")
  out = {k: v for k, v in params.items() if not _BLOCK.match(k)}
  out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                               *[v for _, v in layers])
  return out


def unstack_block_params(params: dict[str, Any]) -> dict[str, Any]:
  """The scanned layout (`blocks`, leading layer axis) -> `blocks_i` entries."""
  _check_mapping(params)
  if "blocks" not in params:
    raise ValueError(f"params: expected a 'blocks' entry, got keys "
                     f"{sorted(params)}")
  stacked = params["blocks"]
  leaves = jax.tree.leaves(stacked)
  if not leaves or any(np.ndim(leaf) < 1 for leaf in leaves):
    raise ValueError(f"params: expected the 'blocks' entry to hold arrays "
                     f"with a leading layer axis, got "
                     f"{jax.tree.map(np.shape, stacked)}")
  layer_counts = {np.shape(leaf)[0] for leaf in leaves}
  if len(layer_counts) != 1:
    raise ValueError(f"params: expected the arrays of 'blocks' to share their "
                     f"leading layer axis, got sizes {sorted(layer_counts)}")
  num_layers = layer_counts.pop()
  out = {k: v for k, v in params.items() if k != "blocks"}
  for layer in range(num_layers):
    out[f"blocks_{layer}"] = jax.tree.map(lambda x, i=layer: x[i], stacked)
  return out
