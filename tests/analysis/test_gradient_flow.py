"""Gradient-flow probes: exact identities and the seed's Chapter 2 claims."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_transformer as rt
from rnn_transformer.analysis import gradient_flow
from rnn_transformer.layers import initializers

T, BATCH, FEATURES, HIDDEN = 50, 4, 8, 32


def _inputs(key=0, time=T):
  return jax.random.normal(jax.random.key(key), (BATCH, time, FEATURES))


def _last_step_loss(outputs):
  return jnp.sum(outputs[:, -1] ** 2)


def _first_over_last(cell, key=1):
  """||dL/dh_1|| / ||dL/dh_T|| (batch mean) for a loss on the last output."""
  rnn = rt.RNN(cell)
  x = _inputs()
  variables = rnn.init(jax.random.key(key), x)
  norms = gradient_flow.rnn_hidden_state_gradient_norms(
      rnn, variables, x, _last_step_loss)
  chex.assert_shape(norms, (BATCH, T))
  norms = np.asarray(norms, np.float64).mean(axis=0)
  return norms[0] / norms[-1], norms


def test_probe_equals_closed_form_for_a_linear_rnn():
  # h_t = h_{t-1} K + x_t W + b (row-vector form). For L = <w, h_T>,
  # dL/dh_t = w (K^T)^(T-t): a matrix power, no autodiff involved.
  time = 6
  x = _inputs(time=time)
  rnn = rt.RNN(rt.SimpleRNNCell(HIDDEN, activation_fn=lambda z: z))
  variables = rnn.init(jax.random.key(2), x)
  kernel = np.asarray(
      variables["params"]["cell"]["recurrent_projection"]["kernel"], np.float64)
  w = np.asarray(jax.random.normal(jax.random.key(3), (BATCH, HIDDEN)))

  def loss(outputs):
    return jnp.sum(outputs[:, -1] * w)

  norms = gradient_flow.rnn_hidden_state_gradient_norms(rnn, variables, x, loss)
  expected = np.stack([
      np.linalg.norm(w @ np.linalg.matrix_power(kernel.T, time - 1 - t),
                     axis=-1) for t in range(time)], axis=1)
  chex.assert_trees_all_close(np.asarray(norms), expected.astype(np.float32),
                              rtol=1e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_probe_matches_finite_differences_of_a_hidden_state(reverse):
  # dL/dh_t from the probe equals the finite-difference derivative of the loss
  # when h_t alone is nudged, for every step and either direction.
  time = 5
  x = _inputs(time=time)
  rnn = rt.RNN(rt.GRUCell(HIDDEN), reverse=reverse, keep_order=True)
  variables = rnn.init(jax.random.key(4), x)

  def loss_of(perturbation):
    return jnp.sum(rnn.apply(variables, x, state_perturbation=perturbation)
                   ** 3)

  grads = jax.grad(loss_of)(jnp.zeros((BATCH, time, HIDDEN)))
  direction = jax.random.normal(jax.random.key(5), (BATCH, time, HIDDEN))
  for t in range(time):
    nudge = jnp.zeros_like(direction).at[:, t].set(direction[:, t])
    eps = 1e-3
    numeric = (loss_of(eps * nudge) - loss_of(-eps * nudge)) / (2 * eps)
    analytic = jnp.sum(grads[:, t] * direction[:, t])
    np.testing.assert_allclose(numeric, analytic, rtol=2e-2, atol=1e-3)
  # A zero perturbation changes nothing.
  chex.assert_trees_all_close(
      rnn.apply(variables, x, state_perturbation=jnp.zeros((BATCH, time,
                                                            HIDDEN))),
      rnn.apply(variables, x), atol=0)


def test_tanh_rnn_with_radius_half_vanishes():
  ratio, norms = _first_over_last(rt.SimpleRNNCell(
      HIDDEN, recurrent_kernel_init=initializers.gaussian_spectral_radius(0.5)))
  assert ratio < 1e-8, norms
  assert np.all(np.diff(norms) >= 0), "gradient must decay monotonically back in time"


def test_linear_rnn_with_radius_one_and_a_half_explodes():
  ratio, norms = _first_over_last(rt.SimpleRNNCell(
      HIDDEN, activation_fn=lambda z: z,
      recurrent_kernel_init=initializers.gaussian_spectral_radius(1.5)))
  assert ratio > 1e6, norms


def test_lstm_with_forget_bias_one_decays_far_less_than_radius_half_rnn():
  rnn_ratio, rnn_norms = _first_over_last(rt.SimpleRNNCell(
      HIDDEN, recurrent_kernel_init=initializers.gaussian_spectral_radius(0.5)))
  lstm_ratio, lstm_norms = _first_over_last(rt.LSTMCell(HIDDEN, forget_bias=1.0))
  assert lstm_ratio > 1e-8, lstm_norms
  # Halfway back, before float32 underflow flattens the RNN's curve to zero.
  mid = T // 2
  rnn_mid = rnn_norms[mid] / rnn_norms[-1]
  lstm_mid = lstm_norms[mid] / lstm_norms[-1]
  assert lstm_mid > 1e6 * rnn_mid, (lstm_mid, rnn_mid)
  assert lstm_ratio > 1e6 * rnn_ratio


def test_probe_runs_for_flax_cells_too():
  ratio, _ = _first_over_last(nn.OptimizedLSTMCell(HIDDEN))
  assert 0 < ratio < 1


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5])
def test_gaussian_initializer_sets_the_spectral_radius_exactly(radius):
  cell = rt.SimpleRNNCell(
      HIDDEN, recurrent_kernel_init=initializers.gaussian_spectral_radius(radius))
  params = cell.init(jax.random.key(6), jnp.zeros((1, HIDDEN)),
                     jnp.zeros((1, FEATURES)))
  kernel = np.asarray(params["params"]["recurrent_projection"]["kernel"])
  np.testing.assert_allclose(np.abs(np.linalg.eigvals(kernel)).max(), radius,
                             rtol=1e-5)
  np.testing.assert_allclose(gradient_flow.recurrent_spectral_radius(params),
                             radius, rtol=1e-5)


def test_orthogonal_and_identity_initializers():
  key = jax.random.key(7)
  ortho = initializers.orthogonal(0.9)(key, (HIDDEN, HIDDEN))
  np.testing.assert_allclose(ortho @ ortho.T, 0.81 * np.eye(HIDDEN), atol=1e-5)
  np.testing.assert_allclose(rt.spectral_radius(ortho), 0.9, rtol=1e-5)
  chex.assert_trees_all_equal(initializers.identity(2.0)(key, (3, 3)),
                              2.0 * jnp.eye(3))
  with pytest.raises(ValueError, match=r"square .* got \(3, 4\)"):
    initializers.identity()(key, (3, 4))


def test_spectral_radius_under_jit_and_vmap_and_per_gate():
  matrices = jax.random.normal(jax.random.key(8), (3, 5, 5))
  expected = np.abs(np.linalg.eigvals(np.asarray(matrices))).max(-1)
  np.testing.assert_allclose(jax.jit(jax.vmap(rt.spectral_radius))(matrices),
                             expected, rtol=1e-5)
  cell = rt.LSTMCell(HIDDEN)
  params = cell.init(jax.random.key(9), cell.initialize_carry(
      jax.random.key(0), (1, FEATURES)), jnp.zeros((1, FEATURES)))
  radii = gradient_flow.recurrent_spectral_radius(params)
  chex.assert_shape(radii, (4,))  # one orthogonal block per gate: radius 1
  np.testing.assert_allclose(radii, np.ones(4), rtol=1e-5)
  with pytest.raises(ValueError, match=r"matrix: expected a square matrix"):
    rt.spectral_radius(jnp.ones((2, 3)))
