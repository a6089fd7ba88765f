"""Multi-head attention on the kernels of `kernels.attention`, with a KV cache.

Parameters have the names and shapes of `flax.linen.MultiHeadDotProductAttention`
(`query`, `key`, `value`: `(features, heads, head_dim)`; `out`:
`(heads, head_dim, out_features)`), so weights map one to one; with grouped-
query attention `key` and `value` have `num_kv_heads` heads.

Decoding keeps keys and values in the `cache` collection:

* `cached_key`, `cached_value`: `(batch, cache_len, num_kv_heads, head_dim)`;
* `cache_index`: int32 scalar, the number of positions written so far (one
  index for the whole batch).

`init(..., decode=True)` follows flax (`MultiHeadDotProductAttention`, the
lm1b example's `initialize_cache`): it creates the empty cache, `cache_len`
long (the `cache_len` attribute; None: the dummy's `q_len`), and writes
nothing to it (index 0, keys and values zero); its output is the causal
attention of its inputs without the cache. Outside init, the first decode call
on a module without a cache creates it the same way and then processes its
tokens through it like any later call, so its outputs are right and the cache
holds its tokens. An all-zero cache is the empty cache
(`rnn_transformer.init_cache` builds one of any length).

A decode call with `q_len` new tokens writes their (rotated) keys and values at
`[cache_index, cache_index + q_len)` and attends so that the query at absolute
position p sees keys `0..p`, whatever the implementation:

* `q_len == 1`: no causal mask is needed, only `key_lengths = cache_index + 1`
  (valid for every kernel, including "xla", which aligns causal masks at the
  top-left);
* `q_len > 1` (prompt prefill, possibly chunked): the queries are placed at
  their absolute rows of a `(batch, max_len, ...)` query array and attention
  runs square (`q_len == kv_len`, where every convention of causal masks
  agrees) with `key_lengths = cache_index + q_len`; the rows of the new
  queries are then sliced out. It costs `max_len^2` once per prefill.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import kernels
from rnn_transformer import parallel
from rnn_transformer import validation
from rnn_transformer.layers import positional

Array = jax.Array


def check_heads(features: int, num_heads: int,
                num_kv_heads: int | None) -> None:
  """Raises unless `features` splits into `num_heads` heads in kv groups."""
  validation.check_int("num_heads", num_heads)
  validation.check_int("num_kv_heads", num_kv_heads, optional=True)
  if features % num_heads:
    raise ValueError(
        f"model width {features} must be divisible by num_heads {num_heads}")
  if num_kv_heads is not None and num_heads % num_kv_heads:
    raise ValueError(
        f"num_heads {num_heads} must be divisible by num_kv_heads "
        f"{num_kv_heads} (a positive divisor)")


def _per_shard_options(num_heads: int, num_kv_heads: int) -> dict:
  """`kernels.attention`'s mesh arguments inside `parallel.activation_sharding`
  (each device attends its own batch rows and heads), else none."""
  sharding = parallel.current()
  if sharding is None:
    return {}
  batch_axes, head_axes = sharding.attention_axes(num_heads, num_kv_heads)
  options = dict(mesh=sharding.mesh, batch_axes=batch_axes or None,
                 head_axes=head_axes or None)
  if sharding.time_axes:  # the sequence split too: ring attention
    (options["context_axis"],) = sharding.time_axes
  return options


class MultiHeadAttention(nn.Module):
  """Multi-head (optionally grouped-query) scaled dot-product attention.

      head_h = softmax(Q_h K_g^T / sqrt(head_dim) + mask) V_g,
      g = h // (num_heads / num_kv_heads)        (Vaswani et al., 2017;
      out = concat_h(head_h) W_o                  Ainslie et al., 2023, GQA)

  The kernels have no dropout on the attention probabilities, so
  `dropout_rate` drops elements of the output (after `W_o`), i.e. on the
  residual branch, as GPT-2 does in addition to its attention dropout.

  Attributes:
    num_heads: query heads; they divide the input width.
    num_kv_heads: key/value heads, a divisor of `num_heads` (None: equal).
    out_features: output width (None: the input width).
    use_bias: biases in the four projections.
    dropout_rate: dropout on the output, active when not deterministic.
    rotary: apply rotary position embeddings to q and k.
    rope_base: the rotary base.
    attention_impl: `kernels.attention(implementation=...)`; None: automatic.
    window: local attention, `kernels.attention(window=(left, right))`:
      query i sees keys i - left .. i + right (None: unbounded side; an int
      `w` is `(w, w)`); with `causal`, `(w, 0)` is sliding-window
      attention. Decoding honours it.
    softcap: logit soft-capping `softcap * tanh(scores / softcap)` (Gemma 2);
      None: off.
    cache_len: positions in the KV cache the first decode call creates
      (None: that call's `q_len`).
    dtype: compute dtype; param_dtype: parameter dtype.
    kernel_init, bias_init, precision: of the projections.
  """
  num_heads: int
  num_kv_heads: int | None = None
  out_features: int | None = None
  use_bias: bool = True
  dropout_rate: float = 0.0
  rotary: bool = False
  rope_base: float = 10_000.0
  attention_impl: str | None = None
  window: int | tuple[int | None, int | None] | None = None
  softcap: float | None = None
  cache_len: int | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  precision: Any = None

  def __post_init__(self):
    validation.check_int("num_heads", self.num_heads)
    validation.check_int("num_kv_heads", self.num_kv_heads, optional=True)
    validation.check_int("out_features", self.out_features, optional=True)
    validation.check_int("cache_len", self.cache_len, optional=True)
    validation.check_rate("dropout_rate", self.dropout_rate)
    validation.check_bool("use_bias", self.use_bias)
    validation.check_real("rope_base", self.rope_base, positive=True)
    validation.check_bool("rotary", self.rotary)
    validation.check_float_dtype("dtype", self.dtype, optional=True)
    validation.check_float_dtype("param_dtype", self.param_dtype)
    validation.check_choice("attention_impl", self.attention_impl,
                            (None,) + kernels.IMPLEMENTATIONS)
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None = None, *,
               causal: bool = False, key_lengths: Array | None = None,
               positions: Array | None = None, decode: bool = False,
               deterministic: bool | None = None) -> Array:
    """Attends from `inputs_q` to `inputs_kv` (self-attention if None).

    Args:
      inputs_q: `(batch, q_len, features)`.
      inputs_kv: `(batch, kv_len, features_kv)`, or None for self-attention.
      causal: the query at position i sees keys j <= i (bottom-right aligned
        when q_len != kv_len, see `kernels.attention`).
      key_lengths: `(batch,)` ints; keys at positions >= length are padding.
      positions: `(batch or 1, q_len)` absolute positions for the rotary
        embedding (default: `arange(q_len)`, or the cache positions when
        decoding). Keys share the queries' positions in self-attention.
      decode: self-attention through the KV cache (see the module doc).
        Under `init` it only creates the empty cache, as in flax; an `apply`
        without a cache creates one and processes its tokens.
      deterministic: disables dropout. As in flax, it must be given when
        `dropout_rate > 0` (None raises then); without dropout None is
        True.

    Returns:
      `(batch, q_len, out_features)`.
    """
    validation.check_rank("inputs_q", inputs_q, 3, "(batch, q_len, features)")
    deterministic = validation.check_deterministic(
        deterministic, self.dropout_rate, "MultiHeadAttention")
    validation.check_bool("causal", causal)
    validation.check_bool("decode", decode)
    validation.check_floating("inputs_q", inputs_q)
    self_attention = inputs_kv is None
    if self_attention:
      inputs_kv = inputs_q
    validation.check_rank("inputs_kv", inputs_kv, 3,
                          "(batch, kv_len, features)")
    validation.check_floating("inputs_kv", inputs_kv)
    validation.check_time("inputs_q", inputs_q)
    validation.check_time("inputs_kv", inputs_kv)
    validation.check_features("inputs_q", inputs_q, 2)
    validation.check_features("inputs_kv", inputs_kv, 2)
    batch, q_len, features = inputs_q.shape
    if inputs_kv.shape[0] != batch:
      raise ValueError(f"inputs_kv: expected the batch of inputs_q ({batch}), "
                       f"got shape {inputs_kv.shape}")
    if key_lengths is not None:
      validation.check_seq_lengths(key_lengths, batch, inputs_kv.shape[1],
                                   name="key_lengths")
    check_heads(features, self.num_heads, self.num_kv_heads)
    num_kv_heads = self.num_kv_heads or self.num_heads
    head_dim = features // self.num_heads
    if decode and not (self_attention and causal and key_lengths is None):
      raise ValueError(
          "decode=True is causal self-attention through the cache: expected "
          "inputs_kv=None, causal=True and key_lengths=None, got "
          f"inputs_kv={'None' if self_attention else 'an array'}, "
          f"causal={causal}, key_lengths={key_lengths}")

    def projection(heads, name):
      return nn.DenseGeneral(
          (heads, head_dim), dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=self.kernel_init, bias_init=self.bias_init,
          use_bias=self.use_bias, precision=self.precision, name=name)

    q = projection(self.num_heads, "query")(inputs_q)   # (b, q, h, d)
    k = projection(num_kv_heads, "key")(inputs_kv)      # (b, k, h_kv, d)
    v = projection(num_kv_heads, "value")(inputs_kv)

    cache = None
    if decode:
      cache = self._cache(k, v)
      if self.is_initializing():
        # flax's convention: init returns the empty cache, so its inputs (a
        # dummy that only fixes the shapes) must not be written to it.
        cache = None
    if positions is None:
      positions = jnp.arange(q_len)[None, :]
      if cache is not None:
        positions = positions + cache["index"].value
    if self.rotary:
      if not self_attention:
        raise ValueError("rotary=True needs self-attention (inputs_kv=None): "
                         "keys of another sequence have no shared positions")
      q = positional.rotary_position_embedding(q, positions, self.rope_base)
      k = positional.rotary_position_embedding(k, positions, self.rope_base)

    if cache is not None:
      out = self._attend_through_cache(q, k, v, cache)
    else:
      out = kernels.attention(q, k, v, causal=causal, key_lengths=key_lengths,
                              window=self.window, softcap=self.softcap,
                              implementation=self.attention_impl,
                              **_per_shard_options(self.num_heads,
                                                   num_kv_heads))
    out = nn.DenseGeneral(
        self.out_features or features, axis=(-2, -1), dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, use_bias=self.use_bias,
        precision=self.precision, name="out")(out)
    return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)

  def _cache(self, k: Array, v: Array) -> dict[str, Any]:
    """The cache variables, created empty (`cache_len` long) if absent."""
    batch, q_len = k.shape[:2]
    shape = (batch, self.cache_len or q_len) + k.shape[2:]
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape,
                               k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape,
                                 v.dtype)
    index = self.variable("cache", "cache_index",
                          lambda: jnp.zeros((), jnp.int32))
    return dict(key=cached_key, value=cached_value, index=index)

  def _attend_through_cache(self, q: Array, k: Array, v: Array,
                            cache: dict[str, Any]) -> Array:
    batch, q_len = q.shape[:2]
    max_len = cache["key"].value.shape[1]
    if k.shape[0] != cache["key"].value.shape[0]:
      raise ValueError(
          f"inputs_q: batch {k.shape[0]} differs from the cache's batch "
          f"{cache['key'].value.shape[0]}")
    if q_len > max_len:  # known from the shapes, even under jit
      raise ValueError(
          f"cache overflow: {q_len} new positions in inputs_q exceed the "
          f"cache length {max_len}; create a longer cache "
          f"(rnn_transformer.init_cache or the cache_len attribute)")
    index = cache["index"].value
    end = index + q_len
    if validation.is_concrete(index) and int(end) > max_len:
      raise ValueError(
          f"cache overflow: writing {q_len} positions at cache index "
          f"{int(index)} needs {int(end)} > the cache length max_len "
          f"{max_len}")
    start = (0, index, 0, 0)
    cache["key"].value = jax.lax.dynamic_update_slice(cache["key"].value, k,
                                                      start)
    cache["value"].value = jax.lax.dynamic_update_slice(
        cache["value"].value, v, start)
    cache["index"].value = end
    lengths = jnp.full((batch,), end, jnp.int32)
    keys, values = cache["key"].value, cache["value"].value
    options = dict(softcap=self.softcap, implementation=self.attention_impl)
    if self.attention_impl not in ("xla", "cudnn"):
      # The chunk's rows sit at cache positions index .. end - 1: a query
      # offset aligns the causal mask and the window there, so only q_len
      # rows are computed (and the Triton kernels skip masked key blocks).
      out = kernels.attention(q, keys, values, causal=True,
                              key_lengths=lengths, window=self.window,
                              q_offset=jnp.full((batch,), index, jnp.int32),
                              **options)
    elif q_len == 1:
      # jax.nn.dot_product_attention has no query offset. One query: its
      # window's left edge is a segment boundary (keys before it are
      # segment 0) and key_lengths is the causal mask.
      segments = None
      left = self.window[0] if isinstance(self.window, (tuple, list)) else (
          self.window)  # an int w is (w, w), as in kernels.attention
      if left is not None:
        segments = (jnp.ones((batch, 1), jnp.int32), jnp.broadcast_to(
            (jnp.arange(max_len) >= index - left).astype(jnp.int32),
            (batch, max_len)))
      out = kernels.attention(q, keys, values, key_lengths=lengths,
                              segment_ids=segments, **options)
    else:
      # A chunk through xla/cudnn: max_len query rows, the chunk's kept
      # (max_len / q_len times the work of the query-offset path).
      rows = jax.lax.dynamic_update_slice(
          jnp.zeros((batch, max_len) + q.shape[2:], q.dtype), q, start)
      out = kernels.attention(rows, keys, values, causal=True,
                              key_lengths=lengths, window=self.window,
                              **options)
      out = jax.lax.dynamic_slice_in_dim(out, index, q_len, axis=1)
    # Under jit the index is not known when tracing: an overflowing write
    # (which dynamic_update_slice would clamp) poisons the output instead.
    return jnp.where(end <= max_len, out, jnp.asarray(np.nan, out.dtype))
