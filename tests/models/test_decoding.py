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


def _decode_in_pieces(model, params, cache, inputs, pieces):
  """Logits of decode calls on `inputs[:, start:end]` for `pieces`, in order,
  starting from `cache`."""
  decode = jax.jit(functools.partial(model.apply, decode=True,
                                     mutable=["cache"]))
  logits = []
  for start, end in pieces:
    out, mutated = decode({"params": params, "cache": cache},
                          inputs[:, start:end])
    cache = mutated["cache"]
    logits.append(out.logits)
  return jnp.concatenate(logits, axis=1)


def _check_flax_init_cache(model, batch, dummy_len):
  """flax's habit, `init(rng, dummy, decode=True)`: an empty cache, equal to
  `rt.init_cache`, and the dummy's plain forward as the output."""
  dummy = tokens((batch, dummy_len), seed=1)
  out, variables = jax.jit(functools.partial(
      model.init_with_output, decode=True))(jax.random.key(0), dummy)
  cache = variables["cache"]
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    # Indices at 0, keys, values and carries all zero: nothing written.
    assert not np.asarray(leaf).any(), jax.tree_util.keystr(path)
  empty = rt.init_cache(model, batch)
  chex.assert_trees_all_equal_shapes_and_dtypes(cache, empty)
  chex.assert_trees_all_equal(cache, empty)
  expected = jax.jit(model.apply)({"params": variables["params"]}, dummy)
  chex.assert_trees_all_close(out.logits, expected.logits,
                              **tolerances.output_tol(jnp.float32))
  return cache


# One token at a time; a prompt then chunks of 1 and 6 tokens.
_PIECES = {"token by token": [(t, t + 1) for t in range(12)],
           "in chunks": [(0, 5), (5, 6), (6, 12)]}


@pytest.mark.parametrize("pieces", sorted(_PIECES))
@pytest.mark.parametrize("dummy_len", [1, 16])   # 16: the config's max_len
@pytest.mark.parametrize("implementation,positional,scan_layers", [
    ("xla", "rope", False), ("reference", "learned", True),
    ("blockwise", "sinusoidal", False)])
def test_flax_init_with_decode_gives_an_empty_cache_that_decodes_right(
    implementation, positional, scan_layers, dummy_len, pieces):
  """Issue 27: init used to write its dummy into the cache, so decoding from
  it started at position dummy_len and attended to the dummy's keys."""
  model = rt.TransformerLM(tiny_config(
      positional=positional, num_kv_heads=2, attention_impl=implementation,
      scan_layers=scan_layers))
  x = tokens((2, 12))
  cache = _check_flax_init_cache(model, 2, dummy_len)
  layers = (cache["blocks"] if scan_layers else cache["blocks_0"])
  attention = layers["attention"]
  assert not np.asarray(attention["cache_index"]).any()
  assert int(cache["position_index"]) == 0
  chex.assert_shape(attention["cached_key"],
                    ((2,) if scan_layers else ()) + (2, 16, 2, 4))
  params = init_params(model, x)
  expected = jax.jit(model.apply)({"params": params}, x).logits
  logits = _decode_in_pieces(model, params, cache, x, _PIECES[pieces])
  chex.assert_trees_all_close(logits, expected,
                              **tolerances.output_tol(jnp.float32))


@pytest.mark.parametrize("pieces", sorted(_PIECES))
@pytest.mark.parametrize("dummy_len", [1, 16])
@pytest.mark.parametrize("backbone", ["lstm", "gru", "mingru", "lru"])
def test_flax_init_with_decode_gives_an_empty_carry_that_decodes_right(
    backbone, dummy_len, pieces):
  """The recurrent carry cache follows the same convention."""
  model = rt.build_backbone(rt.ModelConfig(backbone=backbone, vocab_size=VOCAB,
                                           num_layers=2, model_dim=16))
  x = tokens((2, 12))
  cache = _check_flax_init_cache(model, 2, dummy_len)
  params = init_params(model, x)
  expected = jax.jit(model.apply)({"params": params}, x).logits
  logits = _decode_in_pieces(model, params, cache, x, _PIECES[pieces])
  chex.assert_trees_all_close(logits, expected,
                              **tolerances.output_tol(jnp.float32))


def test_flax_init_with_decode_leaves_the_attention_cache_empty():
  """The layer alone: cache_len from the dummy (or the attribute), nothing
  written, and the init output is causal attention without a cache."""
  x = jax.random.normal(jax.random.key(2), (2, 5, 16))
  for cache_len, expected_len in ((None, 5), (9, 9)):
    layer = rt.MultiHeadAttention(num_heads=4, num_kv_heads=2, rotary=True,
                                  window=(2, 0), cache_len=cache_len)
    out, variables = layer.init_with_output(jax.random.key(0), x,
                                            causal=True, decode=True)
    cache = variables["cache"]
    assert int(cache["cache_index"]) == 0
    chex.assert_shape([cache["cached_key"], cache["cached_value"]],
                      [(2, expected_len, 2, 4)] * 2)
    assert not np.asarray(cache["cached_key"]).any()
    assert not np.asarray(cache["cached_value"]).any()
    chex.assert_trees_all_close(
        out, layer.apply({"params": variables["params"]}, x, causal=True),
        **tolerances.output_tol(jnp.float32))


def test_apply_with_decode_and_no_cache_still_processes_its_tokens():
  """Only init leaves the cache empty: an apply without one writes its tokens
  (the documented "create and process")."""
  model = rt.TransformerLM(tiny_config())
  x = tokens((2, 3))
  params = init_params(model, x)
  _, variables = jax.jit(functools.partial(
      model.apply, decode=True, mutable=["cache"]))({"params": params}, x)
  assert int(variables["cache"]["blocks_0"]["attention"]["cache_index"]) == 3
  assert int(variables["cache"]["position_index"]) == 3


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
  rope = {"positional": "rope"} if backbone == "transformer" else {}
  model = rt.build_backbone(tiny_config(backbone=backbone, **rope))
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
  x = tokens((2, 5))
  for backbone in rt.models.model_config.BACKBONES:
    attention = (dict(num_heads=2, max_len=8) if backbone == "transformer"
                 else {})
    config = ml_collections.ConfigDict(dict(
        backbone=backbone, vocab_size=VOCAB, num_layers=1, model_dim=8,
        **attention))
    model = rt.build_backbone(config)
    out = jax.eval_shape(functools.partial(model.init_with_output,
                                           jax.random.key(0)), x)[0]
    chex.assert_shape([out.features, out.logits], [(2, 5, 8), (2, 5, VOCAB)])
  floats = jnp.zeros((2, 5, 3))
  for backbone, heads in (("transformer", {"num_heads": 2}), ("gru", {})):
    model = rt.build_backbone(rt.ModelConfig(backbone=backbone, model_dim=8,
                                             output_size=4, causal=False,
                                             **heads))
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
