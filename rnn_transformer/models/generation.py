"""Autoregressive sampling from any causal backbone through its decode cache.

The decode-step protocol, met by `TransformerLM` and the causal
`RecurrentBackbone`:

* `init_cache(model, batch, cache_len)` is the empty `cache` collection (K/V
  and indices, or the recurrent carry) for up to `cache_len` positions; it is
  all zeros. Flax's habit, `model.init(rng, dummy, decode=True)['cache']`
  with a `(batch, n)` dummy of any length, gives the same empty cache
  (`model.max_len` positions): init creates the cache without writing the
  dummy to it;
* `model.apply({'params': p, 'cache': c}, tokens, decode=True,
  mutable=['cache'])` consumes `tokens: (batch, n)` after everything cached and
  returns `(BackboneOutput, {'cache': c'})`;
* the same call without a cache creates an empty one (`model.max_len` long)
  and processes `tokens` through it, so a prompt and then single tokens give
  the logits of the full forward however the first call is made;
* `model.max_len` bounds `cache_len` (None: unbounded).

`generate` prefills the prompt in one call, then runs the remaining steps in a
`lax.fori_loop` of one-token decode calls, all in one jitted function.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_transformer.models import embedding

Array = jax.Array


def sample_logits(logits: Array, rng: Array, temperature: float,
                  top_k: int | None) -> Array:
  """Next tokens `(batch,)` from `logits: (batch, vocab)`.

  `temperature == 0` is greedy (argmax); otherwise sampling from
  `softmax(logits / temperature)` restricted to the `top_k` largest logits
  (all when None).
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _check_decoder(model: nn.Module) -> Any:
  """The model's config; raises unless it is a causal token model."""
  config = getattr(model, "config", None)
  if config is None or config.vocab_size is None or not config.causal:
    raise ValueError("model: expected a causal backbone with token inputs "
                     "(config.vocab_size set, config.causal=True), got "
                     f"{type(model).__name__}")
  return config


def _check_int(name: str, value: Any, low: int, high: int | None) -> int:
  """`value` as an int in `[low, high]`; Python and numpy ints only."""
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise TypeError(f"{name}: expected an int, got {type(value).__name__} "
                    f"{value!r}")
  if value < low or (high is not None and value > high):
    expected = f"[{low}, {high}]" if high is not None else f">= {low}"
    raise ValueError(f"{name}: expected an int {expected}, got {value}")
  return int(value)


def _check_rng(rng: Any, temperature: float) -> Array:
  """A PRNG key from `rng`: a key, an int seed, or None when greedy."""
  if rng is None:
    if temperature > 0:
      raise ValueError("rng: a PRNG key or an int seed is required when "
                       "temperature > 0")
    return jax.random.key(0)
  if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
    return jax.random.key(int(rng))
  if isinstance(rng, jax.Array) and (
      jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) or (
          rng.dtype == jnp.uint32 and rng.shape == (2,))):
    return rng
  raise TypeError(f"rng: expected a PRNG key (jax.random.key) or an int "
                  f"seed, got {type(rng).__name__}")


def init_cache(model: nn.Module, batch: int,
               cache_len: int | None = None) -> Any:
  """The empty decode cache of `model` for `batch` sequences.

  Args:
    model: a causal backbone with token inputs (see the module doc).
    batch: sequences decoded together.
    cache_len: positions the cache holds, at most `model.max_len` (None:
      `model.max_len`); ignored by recurrent backbones, whose carry has one
      size for any length.

  Returns:
    The `cache` collection, all zeros: no position written yet (index 0),
    and for recurrent backbones the zero initial carry. With the default
    `cache_len` it equals flax's `model.init(rng, dummy,
    decode=True)['cache']` for a `(batch, n)` dummy of any length, which is
    empty too; this function builds it without running the model.
  """
  config = _check_decoder(model)
  batch = _check_int("batch", batch, 1, None)
  sizing = model
  if model.max_len is not None:
    cache_len = model.max_len if cache_len is None else _check_int(
        "cache_len", cache_len, 1, model.max_len)
    sizing = model.clone(config=config.replace(max_len=cache_len))
  shapes = jax.eval_shape(
      lambda: sizing.init(jax.random.key(0), jnp.zeros((batch, 1), jnp.int32),
                          decode=True)["cache"])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _decode(model: nn.Module, params: Any, cache: Any,
            tokens: Array) -> tuple[Array, Any]:
  """Logits of the last of `tokens` and the updated cache."""
  out, variables = model.apply({"params": params, "cache": cache}, tokens,
                               decode=True, mutable=["cache"])
  return out.logits[:, -1], variables["cache"]


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _generate(model: nn.Module, params: Any, prompt: Array,
              max_new_tokens: int, temperature: float, top_k: int | None,
              rng: Array) -> Array:
  batch, prompt_len = prompt.shape
  total = prompt_len + max_new_tokens
  logits, cache = _decode(model, params, init_cache(model, batch, total),
                          prompt)
  tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt)

  def step(i, state):
    tokens, cache, logits, rng = state
    rng, key = jax.random.split(rng)
    token = sample_logits(logits, key, temperature, top_k)
    position = prompt_len + i
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None],
                                          (0, position))
    logits, cache = _decode(model, params, cache, token[:, None])
    return tokens, cache, logits, rng

  # The last sampled token needs no decode step: sample it outside the loop.
  tokens, _, logits, rng = jax.lax.fori_loop(
      0, max_new_tokens - 1, step, (tokens, cache, logits, rng))
  token = sample_logits(logits, jax.random.split(rng)[1], temperature, top_k)
  return tokens.at[:, total - 1].set(token)


def generate(model: nn.Module, params: Any, prompt: Array,
             max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, rng: Array | int | None = None
             ) -> Array:
  """Continues `prompt` by `max_new_tokens` tokens, one decode step per token.

  Args:
    model: a causal backbone with token inputs (`TransformerLM`, or a causal
      `RecurrentBackbone`), see the module doc.
    params: its parameters.
    prompt: `(batch, prompt_len)` token ids, prompt_len >= 1; every row has
      the same length (the cache index is shared by the batch).
    max_new_tokens: tokens to generate, an int >= 1 (Python or numpy); for a
      Transformer `prompt_len + max_new_tokens` must not exceed
      `model.max_len`.
    temperature: 0 for greedy decoding, else the sampling temperature.
    top_k: sample among the k most likely tokens, an int (None: all).
    rng: a PRNG key or an int seed; required when temperature > 0.

  Returns:
    `(batch, prompt_len + max_new_tokens)` int32: the prompt, then the new
    tokens.
  """
  config = _check_decoder(model)
  embedding.check_tokens(prompt, config.vocab_size, name="prompt")
  if prompt.shape[1] < 1:
    raise ValueError(f"prompt: expected at least one token, got shape "
                     f"{prompt.shape}")
  max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1, None)
  total = prompt.shape[1] + max_new_tokens
  if model.max_len is not None and total > model.max_len:
    raise ValueError(
        f"cache overflow: prompt length {prompt.shape[1]} + max_new_tokens "
        f"{max_new_tokens} = {total} exceeds the model's max_len "
        f"{model.max_len}")
  if not isinstance(temperature, numbers.Real) or isinstance(
      temperature, bool) or not temperature >= 0:
    raise ValueError(f"temperature: expected a number >= 0, got "
                     f"{temperature!r}")
  if top_k is not None:
    top_k = _check_int("top_k", top_k, 1, config.logits_size)
  rng = _check_rng(rng, temperature)
  return _generate(model, params, jnp.asarray(prompt, jnp.int32),
                   max_new_tokens, float(temperature), top_k, rng)


def greedy_by_recompute(model: nn.Module, params: Any, prompt: Array,
                        max_new_tokens: int) -> Array:
  """Greedy continuation without a cache: the full forward for every token.

  The reference for `generate` (which must give the same tokens at
  temperature 0) and the baseline of the generation benchmark. The token
  buffer has its final length from the start, so one compiled forward serves
  every step; in a causal model the not-yet-written zeros do not affect
  earlier positions. Jit it with `static_argnums=(0, 3)`.

  Returns:
    `(batch, prompt_len + max_new_tokens)` int32.
  """
  batch, prompt_len = prompt.shape
  total = prompt_len + max_new_tokens
  tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt)

  def step(i, tokens):
    logits = model.apply({"params": params}, tokens).logits
    position = prompt_len + i
    last = jax.lax.dynamic_index_in_dim(logits, position - 1, axis=1,
                                        keepdims=False)
    token = jnp.argmax(last, axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(tokens, token[:, None], (0, position))

  return jax.lax.fori_loop(0, max_new_tokens, step, tokens)
