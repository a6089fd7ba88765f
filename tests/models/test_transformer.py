"""Transformer encoder and LM: exact identities (permutation equivariance,
causality, padding), scan/remat against the plain stack, positional encodings,
implementation independence and bad input."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_transformer as rt
import tolerances
from transformer_helpers import implementation_context
from transformer_helpers import init_params
from transformer_helpers import tiny_config
from transformer_helpers import tokens
from transformer_helpers import triton_config
from transformer_helpers import VOCAB

POSITIONAL = ("sinusoidal", "learned", "rope")


def _features(model, params, inputs, **kwargs):
  return jax.jit(functools.partial(model.apply, **kwargs))(
      {"params": params}, inputs).features


def test_encoder_without_positions_is_permutation_equivariant():
  """'dog bites man' and 'man bites dog' give the same per-word features."""
  dog, bites, man = 3, 7, 11
  model = rt.TransformerEncoder(tiny_config(positional="none", causal=False))
  sentences = jnp.asarray([[dog, bites, man], [man, bites, dog]])
  params = init_params(model, sentences)
  out = _features(model, params, sentences)
  chex.assert_trees_all_close(out[1], out[0, ::-1], atol=1e-6, rtol=1e-6)

  perm = np.random.default_rng(0).permutation(9)
  x = tokens((2, 9))
  out = _features(model, params, jnp.concatenate([x, x[:, perm]]))
  chex.assert_trees_all_close(out[2:], out[:2, perm], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("positional", POSITIONAL)
def test_encoder_with_positions_tells_word_order(positional):
  dog, bites, man = 3, 7, 11
  model = rt.TransformerEncoder(tiny_config(positional=positional,
                                            causal=False))
  sentences = jnp.asarray([[dog, bites, man], [man, bites, dog]])
  params = init_params(model, sentences)
  if positional == "learned":  # the table starts small; make it matter
    params["position_embedding"]["embedding"] *= 50.0
  out = _features(model, params, sentences)
  assert np.abs(out[1] - out[0, ::-1]).max() > 1e-2


@pytest.mark.parametrize("positional", ("none",) + POSITIONAL)
def test_lm_is_causal(positional):
  model = rt.TransformerLM(tiny_config(positional=positional))
  x = tokens((2, 10))
  params = init_params(model, x)
  t = 5
  changed = x.at[:, t + 1:].set((x[:, t + 1:] + 1) % VOCAB)
  apply = jax.jit(model.apply)
  a = apply({"params": params}, x).logits
  b = apply({"params": params}, changed).logits
  np.testing.assert_array_equal(np.asarray(a[:, :t + 1]),
                                np.asarray(b[:, :t + 1]))
  assert np.abs(a[:, t + 1:] - b[:, t + 1:]).max() > 1e-4


def test_encoder_ignores_padding():
  model = rt.TransformerEncoder(tiny_config(causal=False))
  x = tokens((2, 9))
  lengths = jnp.asarray([6, 9], jnp.int32)
  params = init_params(model, x)
  changed = x.at[0, 6:].set((x[0, 6:] + 1) % VOCAB)
  a = _features(model, params, x, lengths=lengths)
  b = _features(model, params, changed, lengths=lengths)
  chex.assert_trees_all_close(a[0, :6], b[0, :6], atol=1e-6, rtol=1e-6)


def test_scan_and_remat_equal_the_plain_stack():
  config = tiny_config(positional="rope", num_kv_heads=2)
  x = tokens((2, 7))
  plain = rt.TransformerLM(config)
  params = init_params(plain, x)

  def loss_and_outputs(model, params):
    def loss(params):
      logits = model.apply({"params": params}, x).logits
      return jnp.sum(logits ** 2) / logits.size, logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (_, expected), expected_grads = loss_and_outputs(plain, params)
  for remat, scan in [(True, False), (False, True)]:
    model = rt.TransformerLM(config.replace(remat=remat, scan_layers=scan))
    these = rt.stack_block_params(params) if scan else params
    chex.assert_trees_all_equal_shapes(
        jax.eval_shape(model.init, jax.random.key(1), x)["params"], these)
    (_, logits), grads = loss_and_outputs(model, these)
    if scan:
      grads = rt.unstack_block_params(grads)
    chex.assert_trees_all_close(logits, expected,
                                **tolerances.output_tol(jnp.float32))
    chex.assert_trees_all_close(grads, expected_grads,
                                **tolerances.gradient_tol(jnp.float32))


def test_outputs_and_gradients_do_not_depend_on_the_implementation():
  """xla, blockwise and triton (interpreted) against the float32 reference
  kernel, in a causal post-LN ReLU LM with RoPE and padding."""
  config = triton_config(positional="rope", norm="post", activation="relu")
  x = tokens((2, 8))
  lengths = jnp.asarray([8, 5], jnp.int32)
  params = init_params(rt.TransformerLM(config), x)
  valid = (jnp.arange(8) < lengths[:, None])[..., None]

  def outputs_and_gradients(impl):
    model = rt.TransformerLM(config.replace(attention_impl=impl))

    def loss(params):
      logits = model.apply({"params": params}, x, lengths=lengths).logits
      logits = jnp.where(valid, logits, 0.0)
      return jnp.sum(logits ** 2) / logits.size, logits
    with implementation_context(impl):
      return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (_, expected), expected_grads = outputs_and_gradients("reference")
  for implementation in ("xla", "blockwise", "triton"):
    (_, logits), grads = outputs_and_gradients(implementation)
    chex.assert_trees_all_close(logits, expected,
                                **tolerances.output_tol(jnp.float32))
    chex.assert_trees_all_close(grads, expected_grads,
                                **tolerances.gradient_tol(jnp.float32))


def test_sinusoidal_encoding_is_the_papers_formula():
  pe = rt.sinusoidal_position_encoding(jnp.arange(5), 8)
  pos, i = np.meshgrid(np.arange(5), np.arange(4), indexing="ij")
  angle = pos / 10000 ** (2 * i / 8)
  np.testing.assert_allclose(pe[:, 0::2], np.sin(angle), atol=1e-6)
  np.testing.assert_allclose(pe[:, 1::2], np.cos(angle), atol=1e-6)


def test_rotary_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

  def score(m, n):
    qm = rt.rotary_position_embedding(q, jnp.asarray([[m]]))
    kn = rt.rotary_position_embedding(k, jnp.asarray([[n]]))
    return float(jnp.sum(qm * kn))

  assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
  np.testing.assert_allclose(
      rt.rotary_position_embedding(q, jnp.zeros((1, 1), jnp.int32)), q)


def test_float_inputs_are_projected():
  model = rt.TransformerEncoder(tiny_config(vocab_size=None, output_size=3,
                                            causal=False))
  x = jnp.ones((2, 5, 6))
  out = jax.jit(model.apply)({"params": init_params(model, x)}, x)
  chex.assert_shape([out.features, out.logits], [(2, 5, 16), (2, 5, 3)])


def test_tied_embeddings_share_the_table():
  model = rt.TransformerLM(tiny_config(tie_embeddings=True))
  params = init_params(model, tokens((1, 4)))
  assert "output_layer" not in params["embedder"]


def test_token_out_of_range_raises():
  model = rt.TransformerLM(tiny_config())
  x = tokens((1, 4))
  params = init_params(model, x)
  with pytest.raises(ValueError, match=rf"vocab_size={VOCAB}\), got min "
                     rf"\d+ and max {VOCAB}"):
    model.apply({"params": params}, x.at[0, 2].set(VOCAB))
  with pytest.raises(ValueError, match=r"got min -1"):
    model.apply({"params": params}, x.at[0, 2].set(-1))


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_sequence_longer_than_max_len_raises(positional):
  model = rt.TransformerLM(tiny_config(positional=positional, max_len=6))
  params = init_params(model, tokens((1, 6)))
  with pytest.raises(ValueError, match=r"sequence length 7 exceeds the "
                     r"configured max_len 6"):
    jax.jit(model.apply)({"params": params}, tokens((1, 7)))
  embedding = rt.LearnedPositionEmbedding(max_len=4, features=2)
  with pytest.raises(ValueError, match=r"sequence length 5 exceeds max_len 4"):
    embedding.init(jax.random.key(0), jnp.arange(5))
  with pytest.raises(ValueError, match=r"positions: expected values in "
                     r"\[0, max_len=4\) .* got min 1 and max 4"):
    embedding.init(jax.random.key(0), jnp.arange(1, 5))
  with pytest.raises(ValueError, match=r"got min -1 and max 2"):
    embedding.init(jax.random.key(0), jnp.arange(-1, 3))


@pytest.mark.parametrize("changes,message", [
    (dict(model_dim=18, num_heads=4),
     "model width 18 must be divisible by num_heads 4"),
    (dict(num_heads=4, num_kv_heads=3),
     "num_heads 4 must be divisible by num_kv_heads 3"),
    (dict(positional="alibi"), r"positional: expected one of"),
    (dict(backbone="mamba"), r"backbone: expected one of"),
    (dict(vocab_size=None, tie_embeddings=True), "tie_embeddings needs"),
    (dict(dropout_rate=1.0), r"dropout_rate: expected a value in \[0, 1\)"),
])
def test_bad_config_raises(changes, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(**changes)


def test_encoder_cannot_decode():
  model = rt.TransformerEncoder(tiny_config(causal=False))
  with pytest.raises(ValueError, match="decode=True needs a causal model"):
    jax.eval_shape(functools.partial(model.init, decode=True),
                   jax.random.key(0), tokens((1, 4)))


def test_dropout_only_when_not_deterministic():
  config = tiny_config(dropout_rate=0.5)
  model = rt.TransformerLM(config)
  x = tokens((2, 6))
  params = init_params(model, x)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def logits(model, deterministic, seed):
    return model.apply({"params": params}, x, deterministic=deterministic,
                       rngs={"dropout": jax.random.key(seed)}).logits

  no_dropout = rt.TransformerLM(config.replace(dropout_rate=0.0))
  np.testing.assert_array_equal(logits(model, True, 0),
                                logits(no_dropout, True, 0))
  dropped = logits(model, False, 0)
  assert np.abs(dropped - logits(model, True, 0)).max() > 1e-3
  np.testing.assert_array_equal(dropped, logits(model, False, 0))
