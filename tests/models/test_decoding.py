"""Cached decoding equals the full forward pass; `generate` against a greedy
full-recompute oracle, for Transformer and recurrent backbones."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import rnn_transformer as rt
import tolerances
from transformer_helpers import cached_logits
from transformer_helpers import implementation_context
from transformer_helpers import init_params
from transformer_helpers import tiny_config
from transformer_helpers import tokens
from transformer_helpers import triton_config
from transformer_helpers import VOCAB

# Every implementation available on a CPU and every positional encoding, each
# with grouped-query attention (2 kv heads for 4 query heads, 1 for 2), and
# the scanned layer stack (stacked caches).
DECODE_CASES = [
    ("xla", "none", False), ("xla", "learned", True),
    ("reference", "sinusoidal", False), ("blockwise", "rope", False),
    ("triton", "rope", False),
]


def _decode_case(implementation, triton_len, **changes):
  """`(config, tokens, prompt_len, cache_len)` of a decode test."""
  if implementation == "triton":  # interpreted: the smallest shapes it takes
    return (triton_config(attention_impl="triton", **changes),
            tokens((1, triton_len)), 3, 8)
  return (tiny_config(num_kv_heads=2, attention_impl=implementation,
                      **changes), tokens((2, 9)), 4, 12)


@pytest.mark.parametrize("implementation,positional,scan_layers",
                         DECODE_CASES)
def test_prefill_then_steps_equal_the_full_forward(implementation, positional,
                                                   scan_layers):
  config, x, prompt_len, cache_len = _decode_case(
      implementation, 6, positional=positional, scan_layers=scan_layers)
  model = rt.TransformerLM(config)
  with implementation_context(implementation):
    params = init_params(model, x)
    expected = jax.jit(model.apply)({"params": params}, x).logits
    logits = cached_logits(model, params, x, prompt_len, cache_len)
  chex.assert_trees_all_close(logits, expected,
                              **tolerances.output_tol(jnp.float32))


@pytest.mark.parametrize("implementation,window,softcap", [
    ("xla", 2, None), ("reference", 3, 4.0), ("blockwise", 0, None),
    ("triton", 2, 3.0)])
def test_sliding_window_and_softcap_decode_like_the_full_forward(
    implementation, window, softcap):
  """The window's left edge in the cache (a segment boundary for single
  tokens, the square mask for prefill) is the full pass's."""
  config, x, prompt_len, cache_len = _decode_case(
      implementation, 7, positional="rope", attention_window=window,
      attention_softcap=softcap)
  model = rt.TransformerLM(config)
  with implementation_context(implementation):
    params = init_params(model, x)
    expected = jax.jit(model.apply)({"params": params}, x).logits
    logits = cached_logits(model, params, x, prompt_len, cache_len)
    unwindowed = jax.jit(rt.TransformerLM(config.replace(
        attention_window=None)).apply)({"params": params}, x).logits
  chex.assert_trees_all_close(logits, expected,
                              **tolerances.output_tol(jnp.float32))
  # The window matters at these lengths: the model without it differs.
  assert not np.allclose(unwindowed[:, -1], expected[:, -1], atol=1e-4)


@pytest.mark.parametrize("backbone", ["lstm", "gru", "mingru", "minlstm",
                                      "lru"])
@pytest.mark.parametrize("cache_len", [9, None])
def test_recurrent_carry_cache_equals_the_full_forward(backbone, cache_len):
  model = rt.build_backbone(tiny_config(backbone=backbone))
  x = tokens((2, 9))
  params = init_params(model, x)
  expected = jax.jit(model.apply)({"params": params}, x).logits
  chex.assert_trees_all_close(cached_logits(model, params, x, 4, cache_len),
                              expected, **tolerances.output_tol(jnp.float32))


@pytest.mark.parametrize("implementation,positional,scan_layers", [
    ("xla", "rope", False), ("reference", "learned", True),
    ("blockwise", "sinusoidal", False)])
def test_first_decode_call_without_a_cache_processes_its_tokens(
    implementation, positional, scan_layers):
  """The natural first try, a prompt then one token at a time, is right."""
  config = tiny_config(positional=positional, num_kv_heads=2,
                       attention_impl=implementation, scan_layers=scan_layers)
  model = rt.TransformerLM(config)
  x = tokens((2, 7))
  params = init_params(model, x)
  expected = jax.jit(model.apply)({"params": params}, x).logits
  chex.assert_trees_all_close(cached_logits(model, params, x, 4, None),
                              expected, **tolerances.output_tol(jnp.float32))


def test_a_cache_created_by_init_equals_an_empty_one():
  model = rt.TransformerLM(tiny_config())
  x = tokens((2, 3))
  _, variables = model.init_with_output(jax.random.key(0), x, decode=True)
  assert int(variables["cache"]["blocks_0"]["attention"]["cache_index"]) == 3
  empty = rt.init_cache(model, 2)
  chex.assert_trees_all_equal_shapes_and_dtypes(empty, variables["cache"])
  assert all(not np.asarray(leaf).any() for leaf in jax.tree.leaves(empty))


def test_cache_overflow_is_a_named_error_eagerly_and_under_jit():
  model = rt.TransformerLM(tiny_config())
  params = init_params(model, tokens((1, 3)))
  cache = rt.init_cache(model, 1, cache_len=4)
  chex.assert_shape(cache["blocks_0"]["attention"]["cached_key"], (1, 4, 4, 4))
  decode = functools.partial(model.apply, decode=True, mutable=["cache"])
  with pytest.raises(ValueError, match=r"cache overflow: 5 new positions in "
                     r"inputs_q exceed the cache length 4"):
    jax.jit(decode)({"params": params, "cache": cache}, tokens((1, 5)))
  _, filled = decode({"params": params, "cache": cache}, tokens((1, 3)))
  with pytest.raises(ValueError, match=r"cache overflow: writing 2 positions "
                     r"at cache index 3 needs 5 > the cache length"):
    decode({"params": params, **filled}, tokens((1, 2)))
  with pytest.raises(ValueError, match=r"cache_len: expected an int \[1, 16\]"):
    rt.init_cache(model, 1, cache_len=17)


@pytest.mark.parametrize("backbone", ["transformer", "lstm", "lru"])
def test_greedy_generation_equals_full_recompute(backbone):
  model = rt.build_backbone(tiny_config(backbone=backbone,
                                        positional="rope"))
  prompt = tokens((2, 3))
  params = init_params(model, prompt)
  out = rt.generate(model, params, prompt, 5)
  oracle = jax.jit(rt.models.generation.greedy_by_recompute, static_argnums=(0, 3))
  np.testing.assert_array_equal(out, oracle(model, params, prompt, 5))


def test_top_k_sampling_stays_in_the_top_k():
  model = rt.TransformerLM(tiny_config())
  prompt = tokens((3, 2))
  params = init_params(model, prompt)
  out = rt.generate(model, params, prompt, 6, temperature=1.5, top_k=2,
                    rng=jax.random.key(1))
  np.testing.assert_array_equal(out[:, :2], prompt)
  logits = jax.jit(model.apply)({"params": params}, out).logits
  top2 = jax.lax.top_k(logits[:, 1:-1], 2)[1]           # predicts out[:, 2:]
  assert (top2 == out[:, 2:, None]).any(-1).all()


def test_generation_takes_numpy_ints_and_an_int_seed():
  model = rt.TransformerLM(tiny_config())
  prompt = tokens((2, 2))
  params = init_params(model, prompt)
  by_key = rt.generate(model, params, prompt, 4, temperature=1.0, top_k=3,
                       rng=jax.random.key(7))
  by_seed = rt.generate(model, params, np.asarray(prompt), np.int64(4),
                        temperature=1.0, top_k=np.int32(3), rng=np.int64(7))
  np.testing.assert_array_equal(by_seed, by_key)


def test_generation_rejects_bad_input():
  model = rt.TransformerLM(tiny_config(max_len=8))
  prompt = tokens((1, 3))
  params = init_params(model, prompt)
  with pytest.raises(ValueError, match=r"cache overflow: prompt length 3 \+ "
                     r"max_new_tokens 6 = 9 exceeds the model's max_len 8"):
    rt.generate(model, params, prompt, 6)
  with pytest.raises(ValueError, match=rf"vocab_size={VOCAB}\)"):
    rt.generate(model, params, prompt.at[0, 0].set(VOCAB), 2)
  with pytest.raises(ValueError, match="rng: a PRNG key or an int seed is "
                     "required"):
    rt.generate(model, params, prompt, 2, temperature=1.0)
  with pytest.raises(TypeError, match=r"top_k: expected an int, got float"):
    rt.generate(model, params, prompt, 2, temperature=1.0, top_k=2.5, rng=0)
  with pytest.raises(TypeError, match=r"max_new_tokens: expected an int, got "
                     r"str"):
    rt.generate(model, params, prompt, "2")
  with pytest.raises(TypeError, match=r"rng: expected a PRNG key"):
    rt.generate(model, params, prompt, 2, temperature=1.0, rng="seed")
  encoder = rt.TransformerEncoder(tiny_config(causal=False))
  with pytest.raises(ValueError, match="expected a causal backbone"):
    rt.generate(encoder, params, prompt, 2)


def test_backbones_share_one_interface():
  """One ConfigDict, four architectures: tokens in, features and logits out."""
  config = ml_collections.ConfigDict(dict(
      backbone="transformer", vocab_size=VOCAB, num_layers=1, model_dim=8,
      num_heads=2, max_len=8))
  x = tokens((2, 5))
  for backbone in rt.models.model_config.BACKBONES:
    config.backbone = backbone
    model = rt.build_backbone(config)
    out = jax.eval_shape(functools.partial(model.init_with_output,
                                           jax.random.key(0)), x)[0]
    chex.assert_shape([out.features, out.logits], [(2, 5, 8), (2, 5, VOCAB)])
  floats = jnp.zeros((2, 5, 3))
  for backbone in ("transformer", "gru"):
    model = rt.build_backbone(rt.ModelConfig(backbone=backbone, model_dim=8,
                                             num_heads=2, output_size=4,
                                             causal=False))
    out = jax.eval_shape(functools.partial(model.init_with_output,
                                           jax.random.key(0)), floats)[0]
    width = 16 if backbone == "gru" else 8  # bidirectional: both directions
    chex.assert_shape([out.features, out.logits], [(2, 5, width), (2, 5, 4)])
  with pytest.raises(ValueError, match=r"unknown fields \['hidden'\]"):
    rt.build_backbone(dict(backbone="lstm", hidden=3))
  with pytest.raises(TypeError, match="config: expected a ModelConfig"):
    rt.build_backbone("lstm")
  with pytest.raises(ValueError, match=r"scan_method: only for backbones "
                     r"\('mingru', 'minlstm', 'lru'\), got "
                     r"scan_method='associative' with backbone='gru'"):
    rt.ModelConfig(backbone="gru", scan_method="associative")
  with pytest.raises(ValueError, match=r"scan_method: expected one of "
                     r"\('associative', 'chunked', 'sequential'\)"):
    rt.ModelConfig(backbone="lru", scan_method="parallel")


def test_decoding_a_token_is_one_step_of_the_carry():
  """O(1) work per new token: no loop over the cache's length."""
  from rnn_transformer.analysis import program_depth
  model = rt.build_backbone(tiny_config(backbone="mingru",
                                        scan_method="sequential"))
  x = tokens((2, 1))
  params = init_params(model, x)
  steps = []
  for cache_len in (8, 64):
    _, variables = model.apply({"params": params},
                               jnp.zeros((2, cache_len), jnp.int32),
                               decode=True, mutable=["cache"])
    decode = functools.partial(model.apply, decode=True, mutable=["cache"])
    jaxpr = jax.make_jaxpr(decode)({"params": params, **variables}, x)
    steps.append(program_depth.sequential_steps(jaxpr))
  assert steps == [2, 2], steps  # one scan step per layer, any cache length
