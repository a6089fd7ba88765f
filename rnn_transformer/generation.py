"""Autoregressive sampling from any causal backbone through its decode cache.

The decode-step protocol, met by `TransformerLM` and the causal
`RecurrentBackbone`:

* `model.apply({'params': p}, zeros((batch, cache_len)), decode=True,
  mutable=['cache'])` creates the `cache` collection (K/V and indices, or the
  recurrent carry) for up to `cache_len` positions;
* `model.apply({'params': p, 'cache': c}, tokens, decode=True,
  mutable=['cache'])` consumes `tokens: (batch, n)` after everything cached and
  returns `(BackboneOutput, {'cache': c'})`;
* `model.max_len` bounds `cache_len` (None: unbounded).

`generate` prefills the prompt in one call, then runs the remaining steps in a
`lax.fori_loop` of one-token decode calls, all in one jitted function.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_transformer import embedding

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
  # Only the cache variables of this call are used; XLA drops its forward pass.
  _, variables = model.apply({"params": params},
                             jnp.zeros((batch, total), jnp.int32),
                             decode=True, mutable=["cache"])
  logits, cache = _decode(model, params, variables["cache"], prompt)
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
             top_k: int | None = None, rng: Array | None = None) -> Array:
  """Continues `prompt` by `max_new_tokens` tokens, one decode step per token.

  Args:
    model: a causal backbone with token inputs (`TransformerLM`, or a causal
      `RecurrentBackbone`), see the module doc.
    params: its parameters.
    prompt: `(batch, prompt_len)` token ids, prompt_len >= 1; every row has
      the same length (the cache index is shared by the batch).
    max_new_tokens: tokens to generate, >= 1; for a Transformer
      `prompt_len + max_new_tokens` must not exceed `model.max_len`.
    temperature: 0 for greedy decoding, else the sampling temperature.
    top_k: sample among the k most likely tokens (None: all).
    rng: PRNG key; required when temperature > 0.

  Returns:
    `(batch, prompt_len + max_new_tokens)` int32: the prompt, then the new
    tokens.
  """
  config = getattr(model, "config", None)
  if config is None or config.vocab_size is None or not config.causal:
    raise ValueError("model: expected a causal backbone with token inputs "
                     "(config.vocab_size set, config.causal=True), got "
                     f"{type(model).__name__}")
  embedding.check_tokens(prompt, config.vocab_size)
  if prompt.shape[1] < 1:
    raise ValueError(f"prompt: expected at least one token, got shape "
                     f"{prompt.shape}")
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens: expected a positive int, got "
                     f"{max_new_tokens!r}")
  total = prompt.shape[1] + max_new_tokens
  if model.max_len is not None and total > model.max_len:
    raise ValueError(
        f"cache overflow: prompt length {prompt.shape[1]} + max_new_tokens "
        f"{max_new_tokens} = {total} exceeds the model's max_len "
        f"{model.max_len}")
  if temperature < 0:
    raise ValueError(f"temperature: expected >= 0, got {temperature}")
  if top_k is not None and not 1 <= top_k <= config.logits_size:
    raise ValueError(f"top_k: expected None or an int in [1, "
                     f"{config.logits_size}], got {top_k}")
  if rng is None:
    if temperature > 0:
      raise ValueError("rng: a PRNG key is required when temperature > 0")
    rng = jax.random.key(0)
  return _generate(model, params, jnp.asarray(prompt, jnp.int32),
                   max_new_tokens, float(temperature), top_k, rng)
