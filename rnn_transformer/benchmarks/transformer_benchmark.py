"""Training-step and generation throughput of the Transformer LM.

Used by scripts/bench_transformer.py. Every measurement is jitted and timed
after compilation (`timing.median_seconds`), in one process on one
device, so rows compare by ratio.

* training: one forward+backward (`value_and_grad` of the next-token
  cross-entropy, no optimiser) per attention implementation and sequence
  length, reported as tokens/s;
* generation: `new_tokens` greedy tokens after a prompt, with the KV cache
  (`rnn_transformer.generate`) and without it (the full forward re-run over
  the fixed-size token buffer for every new token), as tokens/s;
* attention through the cache: one layer's attention of a `chunk_len`-token
  prefill chunk and of one decoded token written at the middle of a
  `cache_len` cache, with a query offset (`kernels.attention(q_offset=)`,
  `q_len` rows) against the `cache_len` query rows that the bottom-right
  mask needs without it, and the full causal forward over the cache, per
  implementation that takes `q_offset`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

import kernels
from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import timing
from rnn_transformer.models import generation
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.models.model_config import ModelConfig
from rnn_transformer.models.transformer import TransformerLM


def _model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  fields = config.model.to_dict()
  fields["dtype"] = jnp.dtype(fields["dtype"])
  return ModelConfig.from_mapping(fields)


def unavailable_reason(implementation: str, model: ModelConfig,
                       q_offset: bool = False) -> str | None:
  """Why `kernels.attention` cannot run `implementation` here (with a query
  offset: `q_offset`), or None."""
  shape = (1, 16, model.num_heads, model.head_dim)
  q = jnp.zeros(shape, model.dtype or jnp.float32)
  offset = jnp.zeros((1,), jnp.int32) if q_offset else None
  try:
    jax.eval_shape(lambda q: kernels.attention(
        q, q, q, causal=True, implementation=implementation,
        q_offset=offset), q)
  except ValueError as error:
    return str(error)
  return None


def _train_step(model: TransformerLM):
  def loss(params, inputs):
    logits = model.apply({"params": params}, inputs[:, :-1]).logits
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), inputs[:, 1:]).mean()
  return jax.jit(jax.value_and_grad(loss))


def time_training(config: ml_collections.ConfigDict, model_config: ModelConfig,
                  implementation: str) -> list[dict[str, Any]]:
  """One row per sequence length for `implementation`."""
  model = TransformerLM(model_config.replace(attention_impl=implementation))
  rows = []
  for seq_len in config.seq_lens:
    inputs = jax.random.randint(jax.random.key(seq_len),
                                (config.batch, seq_len + 1), 0,
                                model_config.vocab_size)
    params = jax.jit(model.init)(jax.random.key(0), inputs[:, :-1])["params"]
    step = _train_step(model)
    seconds = timing.median_seconds(step, params, inputs,
                                          warmup=config.warmup,
                                          iters=config.iters)
    rows.append(dict(implementation=implementation, seq_len=seq_len,
                     ms=1e3 * seconds,
                     tokens_per_s=config.batch * seq_len / seconds))
  return rows


def time_generation(config: ml_collections.ConfigDict,
                    model_config: ModelConfig) -> list[dict[str, Any]]:
  """Greedy generation with and without the cache; asserts equal tokens."""
  model = build_backbone(model_config)
  prompt = jax.random.randint(jax.random.key(1),
                              (config.gen_batch, config.prompt_len), 0,
                              model_config.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), prompt)["params"]
  uncached = jax.jit(generation.greedy_by_recompute, static_argnums=(0, 3))
  calls = {
      "with KV cache": lambda: generation.generate(model, params, prompt,
                                                   config.new_tokens),
      "without cache (full forward per token)": lambda: uncached(
          model, params, prompt, config.new_tokens),
  }
  outputs = {label: call() for label, call in calls.items()}
  first, second = outputs.values()
  if not bool(jnp.all(first == second)):
    raise AssertionError("cached and uncached greedy generations differ")
  rows = []
  for label, call in calls.items():
    seconds = timing.median_seconds(call, warmup=config.warmup,
                                          iters=config.iters)
    rows.append(dict(mode=label, new_tokens=config.new_tokens, ms=1e3 * seconds,
                     tokens_per_s=config.gen_batch * config.new_tokens /
                     seconds))
  for row in rows:
    row["speedup_over_uncached"] = rows[1]["ms"] / row["ms"]
  return rows


def time_cache_attention(config: ml_collections.ConfigDict,
                         model_config: ModelConfig,
                         implementation: str) -> list[dict[str, Any]]:
  """Attention of new tokens against a KV cache filled to its middle."""
  heads, head_dim = model_config.num_heads, model_config.head_dim
  cache_len, batch = config.cache_len, config.gen_batch
  dtype = model_config.dtype or jnp.float32
  index = cache_len // 2
  if not 0 < config.chunk_len <= cache_len - index:
    raise ValueError(f"config.chunk_len: expected 1 .. {cache_len - index} "
                     f"(the chunk is written at the middle of the "
                     f"{cache_len}-token cache), got {config.chunk_len}")
  keys = jax.random.split(jax.random.key(2), 3)
  cache_k, cache_v = (jax.random.normal(key, (batch, cache_len, heads,
                                              head_dim), dtype)
                      for key in keys[:2])
  options = dict(causal=True, implementation=implementation)

  def with_offset(q):
    return kernels.attention(
        q, cache_k, cache_v, key_lengths=jnp.full((batch,), index + q.shape[1]),
        q_offset=jnp.full((batch,), index), **options)

  def through_all_rows(q):  # the chunk placed at its rows of cache_len
    rows = jax.lax.dynamic_update_slice(
        jnp.zeros((batch, cache_len, heads, head_dim), dtype), q,
        (0, index, 0, 0))
    out = kernels.attention(rows, cache_k, cache_v, key_lengths=jnp.full(
        (batch,), index + q.shape[1]), **options)
    return jax.lax.dynamic_slice_in_dim(out, index, q.shape[1], axis=1)

  rows = []
  for label, new_tokens in (("prefill chunk", config.chunk_len),
                            ("one decoded token", 1)):
    q = jax.random.normal(keys[2], (batch, new_tokens, heads, head_dim), dtype)
    calls = {"query offset": jax.jit(with_offset),
             f"{cache_len} query rows": jax.jit(through_all_rows)}
    results = [call(q) for call in calls.values()]
    if not bool(jnp.allclose(*results, atol=1e-3, rtol=1e-3)):
      raise AssertionError(f"{label}: the query-offset and all-rows "
                           f"attention differ")
    timed = {path: timing.median_seconds(call, q, warmup=config.warmup,
                                         iters=config.iters)
             for path, call in calls.items()}
    for path, seconds in timed.items():
      rows.append(dict(implementation=implementation, case=label, path=path,
                       new_tokens=new_tokens, cache_len=cache_len,
                       ms=1e3 * seconds,
                       tokens_per_s=batch * new_tokens / seconds,
                       speedup=timed[f"{cache_len} query rows"] / seconds))
  full = jax.jit(lambda k: kernels.attention(k, cache_k, cache_v, **options))
  seconds = timing.median_seconds(full, cache_k, warmup=config.warmup,
                                  iters=config.iters)
  rows.append(dict(implementation=implementation, case="full forward",
                   path=f"{cache_len} query rows", new_tokens=cache_len,
                   cache_len=cache_len, ms=1e3 * seconds,
                   tokens_per_s=batch * cache_len / seconds, speedup=None))
  return rows


def run(config: ml_collections.ConfigDict
        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                   list[dict[str, Any]], list[str]]:
  """(training rows, generation rows, cache-attention rows, skipped
  implementations with reasons)."""
  model_config = _model_config(config)
  unknown = sorted(set(config.implementations) - set(kernels.IMPLEMENTATIONS))
  if unknown:
    raise ValueError(f"config.implementations: expected names from "
                     f"{list(kernels.IMPLEMENTATIONS)}, got {unknown}")
  training, cache, skipped = [], [], []
  for implementation in config.implementations:
    reason = unavailable_reason(implementation, model_config)
    if reason is not None:
      skipped.append(f"{implementation}: {reason}")
      continue
    training += time_training(config, model_config, implementation)
    if unavailable_reason(implementation, model_config,
                          q_offset=True) is None:
      cache += time_cache_attention(config, model_config, implementation)
  return (training, time_generation(config, model_config), cache, skipped)


def format_training(rows: list[dict[str, Any]]) -> str:
  return outputs.markdown_table(
      ["attention", "seq_len", "fwd+bwd ms", "tokens/s"],
      [(r["implementation"], r["seq_len"], f"{r['ms']:.1f}",
        f"{r['tokens_per_s']:,.0f}") for r in rows])


def format_generation(rows: list[dict[str, Any]]) -> str:
  return outputs.markdown_table(
      ["generation", "new tokens", "ms", "tokens/s", "speed-up"],
      [(r["mode"], r["new_tokens"], f"{r['ms']:.1f}",
        f"{r['tokens_per_s']:,.1f}", f"{r['speedup_over_uncached']:.1f}x")
       for r in rows])


def format_cache_attention(rows: list[dict[str, Any]]) -> str:
  """Speed-up: over the same case through all cache rows."""
  return outputs.markdown_table(
      ["attention", "case", "path", "new tokens", "cache", "ms", "tokens/s",
       "speed-up"],
      [(r["implementation"], r["case"], r["path"], r["new_tokens"],
        r["cache_len"], f"{r['ms']:.3f}", f"{r['tokens_per_s']:,.0f}",
        "-" if r["speedup"] is None else f"{r['speedup']:.1f}x")
       for r in rows])
