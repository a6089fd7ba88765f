"""MultiHeadAttention against flax.linen.MultiHeadDotProductAttention, GQA and
its decode cache."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
import rnn_transformer as rt
import tolerances
from transformer_helpers import init_params

BATCH, TIME, FEATURES, HEADS = 2, 7, 16, 4


def _inputs(seed=0):
  return jax.random.normal(jax.random.key(seed), (BATCH, TIME, FEATURES))


def _flax_mask(causal, key_lengths):
  mask = None
  if key_lengths is not None:
    valid = jnp.arange(TIME)[None, :] < key_lengths[:, None]
    mask = nn.make_attention_mask(jnp.ones((BATCH, TIME), bool), valid)
  if causal:
    causal_mask = nn.make_causal_mask(jnp.ones((BATCH, TIME)))
    mask = causal_mask if mask is None else nn.combine_masks(mask,
                                                             causal_mask)
  return mask


@pytest.mark.parametrize("causal,lengths,implementation", [
    (False, None, None), (True, None, None), (False, (4, 7), None),
    (True, (5, 2), None), (True, (5, 2), "reference"),
    (True, (5, 2), "blockwise")])
def test_matches_flax_outputs_and_gradients(causal, lengths, implementation):
  x = _inputs()
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  key_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
  theirs = nn.MultiHeadDotProductAttention(num_heads=HEADS)
  ours = rt.MultiHeadAttention(num_heads=HEADS, attention_impl=implementation)
  params = init_params(ours, x)
  chex.assert_trees_all_equal_shapes(
      jax.eval_shape(theirs.init, jax.random.key(0), x, x)["params"], params)

  def ours_fn(p, x):
    return ours.apply({"params": p}, x, causal=causal, key_lengths=key_lengths)

  def theirs_fn(p, x):
    return theirs.apply({"params": p}, x, x,
                        mask=_flax_mask(causal, key_lengths))

  @jax.jit
  def outputs_and_gradients(p, x):
    ours_out, ours_vjp = jax.vjp(ours_fn, p, x)
    theirs_out, theirs_vjp = jax.vjp(theirs_fn, p, x)
    return ours_out, theirs_out, ours_vjp(cotangent), theirs_vjp(cotangent)

  with jax.default_matmul_precision("highest"):
    out, expected, grads, expected_grads = outputs_and_gradients(params, x)
  chex.assert_trees_all_close(out, expected, **tolerances.output_tol(x.dtype))
  chex.assert_trees_all_close(grads, expected_grads,
                              **tolerances.gradient_tol(x.dtype))


def test_grouped_query_equals_multi_head_with_repeated_kv_heads():
  x = _inputs()
  gqa = rt.MultiHeadAttention(num_heads=HEADS, num_kv_heads=2)
  params = init_params(gqa, x)
  mha_params = dict(params)
  for name in ("key", "value"):  # kv head g serves query heads 2g and 2g + 1
    mha_params[name] = jax.tree.map(lambda p: jnp.repeat(p, 2, axis=-2),
                                    params[name])
  mha = rt.MultiHeadAttention(num_heads=HEADS)
  apply = jax.jit(lambda p, module: module.apply({"params": p}, x,
                                                 causal=True), static_argnums=1)
  chex.assert_trees_all_close(
      apply(params, gqa), apply(mha_params, mha),
      **tolerances.output_tol(jnp.float32))


def test_decode_with_chunked_prefill_equals_causal_attention():
  """Chunks of 3, 1 and 3 tokens, the first creating the cache; RoPE, GQA."""
  x = _inputs()
  layer = rt.MultiHeadAttention(num_heads=HEADS, num_kv_heads=2, rotary=True,
                                cache_len=9)
  params = init_params(layer, x)
  expected = layer.apply({"params": params}, x, causal=True)
  decode = jax.jit(lambda v, x: layer.apply(v, x, causal=True, decode=True,
                                            mutable=["cache"]))
  variables = {}
  outputs = []
  for start, end in [(0, 3), (3, 4), (4, 7)]:
    out, variables = decode({"params": params, **variables}, x[:, start:end])
    outputs.append(out)
  assert int(variables["cache"]["cache_index"]) == TIME
  chex.assert_trees_all_close(jnp.concatenate(outputs, axis=1), expected,
                              **tolerances.output_tol(jnp.float32))


def test_cache_overflow_raises_with_the_limit():
  x = _inputs()
  layer = rt.MultiHeadAttention(num_heads=HEADS, cache_len=4)
  params = init_params(layer, x)
  _, variables = layer.apply({"params": params}, x[:, :3],
                             causal=True, decode=True, mutable=["cache"])
  with pytest.raises(ValueError, match=r"cache overflow.*5 > .*max_len 4"):
    layer.apply({"params": params, **variables}, x[:, :2], causal=True,
                decode=True, mutable=["cache"])


def test_cache_overflow_under_jit_poisons_the_output():
  x = _inputs()
  layer = rt.MultiHeadAttention(num_heads=HEADS, cache_len=2)
  params = init_params(layer, x)
  step = jax.jit(lambda v, x: layer.apply(v, x, causal=True, decode=True,
                                          mutable=["cache"]))
  out, variables = step({"params": params}, x[:, :1])
  out, variables = step({"params": params, **variables}, x[:, 1:2])
  assert np.isfinite(out).all()
  out, _ = step({"params": params, **variables}, x[:, 2:3])
  assert np.isnan(out).all()


@pytest.mark.parametrize("features,heads,kv_heads,message", [
    (16, 3, None, "model width 16 must be divisible by num_heads 3"),
    (16, 4, 3, "num_heads 4 must be divisible by num_kv_heads 3"),
])
def test_bad_head_counts_raise(features, heads, kv_heads, message):
  x = jnp.zeros((1, 3, features))
  layer = rt.MultiHeadAttention(num_heads=heads, num_kv_heads=kv_heads)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(layer.init, jax.random.key(0), x)


def test_bad_inputs_raise():
  init = jax.jit(rt.MultiHeadAttention(num_heads=HEADS).init,
                 static_argnames="decode")
  with pytest.raises(ValueError, match=r"inputs_q: expected rank 3"):
    init(jax.random.key(0), jnp.zeros((3, FEATURES)))
  with pytest.raises(rt.DTypeError, match=r"inputs_q: expected a floating"):
    init(jax.random.key(0), jnp.zeros((1, 3, FEATURES), jnp.int32))
  with pytest.raises(ValueError, match=r"decode=True is causal self-attention"):
    init(jax.random.key(0), jnp.zeros((1, 3, FEATURES)), decode=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attention_window=-1), "attention_window"),
    (dict(attention_window=2.5), "attention_window"),
    (dict(attention_softcap=0.0), "attention_softcap"),
    (dict(attention_softcap=True), "attention_softcap"),
])
def test_model_config_attention_window_and_softcap_are_validated(kwargs,
                                                                 match):
  with pytest.raises(ValueError, match=match):
    rt.ModelConfig(model_dim=16, num_heads=2, **kwargs)


@pytest.mark.parametrize("causal", [True, False])
def test_window_and_softcap_reach_the_kernel(causal):
  """The module with a window and softcap equals the kernel called on its
  own projections with them; without them it differs."""
  x = jax.random.normal(jax.random.key(0), (2, 12, 16))
  layer = rt.MultiHeadAttention(num_heads=2, window=(3, 0 if causal else 3),
                                softcap=2.0)
  params = layer.init(jax.random.key(1), x, causal=causal)
  got = layer.apply(params, x, causal=causal)
  plain = rt.MultiHeadAttention(num_heads=2).apply(params, x, causal=causal)
  p = params["params"]
  q, k, v = (jnp.einsum("btf,fhd->bthd", x, p[n]["kernel"]) + p[n]["bias"]
             for n in ("query", "key", "value"))
  o = kernels.attention(q, k, v, causal=causal, window=(3, 0 if causal else 3),
                        softcap=2.0, implementation="reference")
  want = jnp.einsum("bthd,hdf->btf", o, p["out"]["kernel"]) + p["out"]["bias"]
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  assert not np.allclose(got, plain, atol=1e-3)
