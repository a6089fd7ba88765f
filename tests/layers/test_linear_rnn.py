"""MinGRU, MinLSTM and LRU: the papers' equations in numpy, the cell path
against the parallel layer path, and the RNN layer's features."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_transformer as rt
import tolerances
from rnn_transformer.layers import initializers

BATCH, TIME, FEATURES, HIDDEN = 3, 9, 5, 6
LENGTHS = jnp.array([TIME, 4, 0])

CELLS = {
    "mingru": lambda **kw: rt.MinGRU(HIDDEN, **kw),
    "mingru_log": lambda **kw: rt.MinGRU(HIDDEN, log_space=True, **kw),
    "minlstm": lambda **kw: rt.MinLSTM(HIDDEN, **kw),
    "minlstm_log": lambda **kw: rt.MinLSTM(HIDDEN, log_space=True, **kw),
    "lru": lambda **kw: rt.LRU(HIDDEN, state_size=4, r_min=0.5, r_max=0.95,
                               **kw),
}


def _inputs(key=0, shape=(BATCH, TIME, FEATURES), dtype=jnp.float32):
  return jax.random.normal(jax.random.key(key), shape, dtype)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _g(x):
  return np.where(x >= 0, x + 0.5, _sigmoid(x))


def numpy_min_rnn(name, params, x):
  """Feng et al. (2024)'s sequential equations in float64, from h_0 = 0."""
  p = {k: np.asarray(v, np.float64) for k, v in params["projection"].items()}
  k = np.asarray(x, np.float64) @ p["kernel"] + p["bias"]
  h = np.zeros((x.shape[0], HIDDEN))
  outputs = []
  for t in range(x.shape[1]):
    if name.startswith("mingru"):
      k_z, k_h = np.split(k[:, t], 2, axis=-1)
      z = _sigmoid(k_z)
      h_tilde = _g(k_h) if name.endswith("log") else k_h
      h = (1 - z) * h + z * h_tilde
    else:
      k_f, k_i, k_h = np.split(k[:, t], 3, axis=-1)
      f, i = _sigmoid(k_f), _sigmoid(k_i)
      h_tilde = _g(k_h) if name.endswith("log") else k_h
      h = f / (f + i) * h + i / (f + i) * h_tilde
    outputs.append(h)
  return np.stack(outputs, axis=1)


def numpy_lru(params, u):
  """Orvieto et al. (2023)'s LRU in complex128, from x_0 = 0."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
  gamma = np.exp(p["gamma_log"])
  b = p["B_re"]["kernel"] + 1j * p["B_im"]["kernel"]
  c = p["C_re"]["kernel"] + 1j * p["C_im"]["kernel"]
  u = np.asarray(u, np.float64)
  x = np.zeros((u.shape[0], b.shape[1]), np.complex128)
  outputs = []
  for t in range(u.shape[1]):
    x = lam * x + gamma * (u[:, t] @ b)
    outputs.append((x @ c).real + p["skip"]["D"] * u[:, t])
  return np.stack(outputs, axis=1)


def _random_params(params, key):
  """Every parameter redrawn, so no zero bias hides a term."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  return jax.tree.unflatten(tree, [
      leaf + 0.5 * jax.random.normal(k, leaf.shape)
      for k, leaf in zip(keys, leaves)])


@pytest.mark.parametrize("name", sorted(CELLS))
def test_layer_equals_the_papers_equations(name):
  x = _inputs(key=1, shape=(BATCH, TIME, HIDDEN))  # D u needs in == H
  layer = rt.RNN(CELLS[name](), scan_method="associative")
  params = layer.init(jax.random.key(2), x)["params"]
  if name != "lru":  # the LRU keeps its ring init: |λ| < 1 matters
    params = _random_params(params, 3)
  out = jax.jit(layer.apply)({"params": params}, x)
  cell_params = params["cell"]
  expected = (numpy_lru(cell_params, x) if name == "lru" else
              numpy_min_rnn(name, cell_params, x))
  chex.assert_trees_all_close(out, expected.astype(np.float32), atol=2e-5,
                              rtol=2e-5)


def step_oracle(cell, params, x, initial_carry, lengths, reset, reverse):
  """`RNN`'s semantics from the one-step cell, one Python step at a time."""
  batch, time = x.shape[:2]
  lengths = jnp.full((batch,), time) if lengths is None else lengths
  reset = jnp.zeros((batch, time), bool) if reset is None else reset
  carry, outputs = initial_carry, [None] * time
  for t in (reversed(range(time)) if reverse else range(time)):
    restart = ((t + 1 < lengths) & reset[:, min(t + 1, time - 1)] if reverse
               else reset[:, t])
    carry_in = jnp.where(restart[:, None], jnp.zeros_like(carry), carry)
    new_carry, y = cell.apply({"params": params}, carry_in, x[:, t])
    valid = (t < lengths)[:, None]
    carry = jnp.where(valid, new_carry, carry)
    outputs[t] = jnp.where(valid, y, jnp.zeros_like(y))
  return carry, jnp.stack(outputs, axis=1)


def _reset():
  return jnp.zeros((BATCH, TIME), bool).at[0, [3, 6]].set(True).at[1, 2].set(
      True)


# linear_scan's methods are checked against each other in
# test_linear_recurrence.py; here two per cell run by default.
LAYER_CASES = [("associative", False), ("chunked", True),
               pytest.param("sequential", False, marks=pytest.mark.slow),
               pytest.param("associative", True, marks=pytest.mark.slow),
               pytest.param("chunked", False, marks=pytest.mark.slow)]


@pytest.mark.parametrize("method,reverse", LAYER_CASES)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_parallel_layer_equals_the_cell_stepped_over_time(name, method,
                                                          reverse):
  """Masks, reset, reverse and a non-zero initial carry, outputs and
  gradients."""
  x = _inputs(key=4)
  cell = CELLS[name]()
  layer = rt.RNN(cell, return_carry=True, reverse=reverse, keep_order=True,
                 scan_method=method, chunk_size=4)
  params = layer.init(jax.random.key(5), x)["params"]
  carry0 = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
  # Positive, so the log-space cells' carry has a logarithm.
  carry0 = carry0 + (0.3 + jax.random.uniform(jax.random.key(6),
                                              carry0.shape)).astype(
                                                  carry0.dtype)
  reset = _reset()
  weights = _inputs(key=7, shape=(BATCH, TIME, HIDDEN))

  def loss(run, params, x):
    carry, y = run(params, x)
    return jnp.sum(y * weights) + jnp.sum(jnp.cos(jnp.abs(carry)))

  def layer_run(params, x):
    return layer.apply({"params": params}, x, initial_carry=carry0,
                       seq_lengths=LENGTHS, reset=reset)

  def oracle_run(params, x):
    return step_oracle(cell, params["cell"], x, carry0, LENGTHS, reset,
                       reverse)

  # Jitted: the oracle's Python loop unrolls into one program.
  chex.assert_trees_all_close(jax.jit(layer_run)(params, x),
                              jax.jit(oracle_run)(params, x),
                              **tolerances.output_tol(jnp.float32))
  grad = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)
  grads = grad(layer_run, params, x)
  chex.assert_tree_all_finite(grads)
  chex.assert_trees_all_close(grads, grad(oracle_run, params, x),
                              **tolerances.gradient_tol(jnp.float32))


@pytest.mark.parametrize("name", ["mingru", "lru"])
def test_reverse_without_keep_order_returns_processing_order(name):
  x = _inputs(key=8)
  kept = rt.RNN(CELLS[name](), reverse=True, keep_order=True)
  processing = rt.RNN(CELLS[name](), reverse=True)
  variables = kept.init(jax.random.key(9), x)
  chex.assert_trees_all_close(
      processing.apply(variables, x, seq_lengths=LENGTHS),
      rt.flip_sequences(kept.apply(variables, x, seq_lengths=LENGTHS),
                        LENGTHS), atol=1e-6)


def test_lru_ring_init_and_gamma_normalisation():
  cell = rt.LRU(8, state_size=2048, r_min=0.4, r_max=0.9, max_phase=np.pi / 4)
  x = _inputs(shape=(1, 1, 8))
  params = rt.RNN(cell).init(jax.random.key(10), x)["params"]["cell"]
  lam = np.asarray(cell.apply({"params": params}, method="eigenvalues"))
  radius, phase = np.abs(lam), np.angle(lam)
  assert radius.min() >= 0.4 - 1e-6 and radius.max() <= 0.9 + 1e-6
  assert phase.min() >= 0.0 and phase.max() <= np.pi / 4 + 1e-6
  # Uniform on the ring by area: E|λ|² = (r_min² + r_max²) / 2.
  assert abs(np.mean(radius ** 2) - (0.16 + 0.81) / 2) < 0.02
  np.testing.assert_allclose(np.exp(params["gamma_log"]),
                             np.sqrt(1 - radius ** 2), rtol=1e-5)


def _state_decay(layer, variables, x):
  """|h_T| / |h_1| after an impulse at t = 0 and zero input afterwards."""
  carry_1, _ = layer.apply(variables, x[:, :1])
  carry_t, _ = layer.apply(variables, x)
  return float(jnp.linalg.norm(carry_t) / jnp.linalg.norm(carry_1))


def test_lru_near_the_unit_circle_keeps_what_an_elman_rnn_forgets():
  time = 200
  x = jnp.zeros((1, time, 16)).at[0, 0].set(
      jax.random.normal(jax.random.key(11), (16,)))
  lru = rt.RNN(rt.LRU(16, r_min=0.99, r_max=0.99), return_carry=True)
  lru_vars = lru.init(jax.random.key(12), x)
  lam = lru.apply(lru_vars, method=lambda m: m.cell.eigenvalues())
  np.testing.assert_allclose(np.abs(lam), 0.99, rtol=1e-6)
  # Every |λ| = 0.99: the state keeps exactly 0.99^(T-1) of its size.
  np.testing.assert_allclose(_state_decay(lru, lru_vars, x),
                             0.99 ** (time - 1), rtol=1e-3)
  assert 0.99 ** (time - 1) > 0.13

  elman = rt.RNN(rt.SimpleRNNCell(
      16, recurrent_kernel_init=initializers.gaussian_spectral_radius(0.5)),
                 return_carry=True)
  elman_vars = elman.init(jax.random.key(13), x)
  # tanh(W h) with rho(W) = 0.5 shrinks by about 2 per step.
  assert _state_decay(elman, elman_vars, x) < 1e-30


def test_bidirectional_and_stacked_layers():
  x = _inputs(key=14)
  forward = rt.RNN(rt.MinGRU(HIDDEN))
  backward = rt.RNN(rt.MinGRU(HIDDEN), reverse=True, keep_order=True)
  bi = rt.Bidirectional(rt.RNN(rt.MinGRU(HIDDEN)), rt.RNN(rt.MinGRU(HIDDEN)))
  variables = bi.init(jax.random.key(15), x)
  params = variables["params"]
  out = bi.apply(variables, x, seq_lengths=LENGTHS)
  expected = jnp.concatenate([
      forward.apply({"params": params["forward_rnn"]}, x, seq_lengths=LENGTHS),
      backward.apply({"params": params["backward_rnn"]}, x,
                     seq_lengths=LENGTHS)], axis=-1)
  chex.assert_trees_all_close(out, expected, atol=1e-6)

  # Layer 2 of a bidirectional LRU stack takes 2H features: a dense skip D.
  stack = rt.StackedRNN([rt.LRU(HIDDEN), rt.LRU(HIDDEN)], bidirectional=True,
                        scan_method="chunked")
  variables = stack.init(jax.random.key(16), x)
  carries, y = jax.jit(functools.partial(
      stack.apply, seq_lengths=LENGTHS, return_carry=True))(variables, x)
  chex.assert_shape(y, (BATCH, TIME, 2 * HIDDEN))
  layer_1 = variables["params"]["layers_1"]["forward_rnn"]["cell"]
  chex.assert_shape(layer_1["skip"]["dense"]["kernel"],
                    (2 * HIDDEN, HIDDEN))
  assert carries[0][0].dtype == jnp.complex64
  layer = rt.Bidirectional(rt.RNN(rt.LRU(HIDDEN)), rt.RNN(rt.LRU(HIDDEN)))
  apply = jax.jit(functools.partial(layer.apply, seq_lengths=LENGTHS))
  h = apply({"params": variables["params"]["layers_0"]}, x)
  chex.assert_trees_all_close(
      y, apply({"params": variables["params"]["layers_1"]}, h), atol=1e-5)


@pytest.mark.parametrize("name", ["mingru_log", "minlstm", "lru"])
def test_bfloat16_compute_runs_close_to_float32(name):
  x = _inputs(key=17)
  f32 = rt.RNN(CELLS[name]())
  bf16 = rt.RNN(CELLS[name](dtype=jnp.bfloat16))
  variables = f32.init(jax.random.key(18), x)
  chex.assert_trees_all_equal_dtypes(bf16.init(jax.random.key(18), x),
                                     variables)  # params stay float32
  out = jax.jit(bf16.apply)(variables, x.astype(jnp.bfloat16))
  assert out.dtype == jnp.float32  # the carry's dtype
  chex.assert_trees_all_close(out, jax.jit(f32.apply)(variables, x),
                              atol=5e-2, rtol=5e-2)
  grads = jax.jit(jax.grad(lambda v: jnp.sum(bf16.apply(
      v, x.astype(jnp.bfloat16)) ** 2)))(variables)
  chex.assert_tree_all_finite(grads)


def test_carry_flows_across_chunks_of_time():
  x = _inputs(key=19)
  layer = rt.RNN(rt.LRU(HIDDEN), return_carry=True)
  variables = layer.init(jax.random.key(20), x)
  full_carry, full = layer.apply(variables, x)
  carry, first = layer.apply(variables, x[:, :4])
  carry, second = layer.apply(variables, x[:, 4:], initial_carry=carry)
  chex.assert_trees_all_close((carry, jnp.concatenate([first, second], 1)),
                              (full_carry, full), atol=1e-5)


class TestBadInput:
  x = _inputs()

  def test_scan_method_needs_a_linear_cell(self):
    with pytest.raises(ValueError, match="scan_method: only cells with a "
                       "linear recurrence .*LSTMCell runs lax.scan"):
      rt.RNN(rt.LSTMCell(HIDDEN), scan_method="associative").init(
          jax.random.key(0), self.x)
    with pytest.raises(ValueError, match="method: expected one of"):
      rt.RNN(rt.MinGRU(HIDDEN), scan_method="fast").init(jax.random.key(0),
                                                         self.x)

  def test_state_perturbation_is_refused(self):
    layer = rt.RNN(rt.MinGRU(HIDDEN))
    variables = layer.init(jax.random.key(0), self.x)
    with pytest.raises(ValueError, match="state_perturbation: not supported "
                       "by MinGRU"):
      layer.apply(variables, self.x,
                  state_perturbation=jnp.zeros((BATCH, TIME, HIDDEN)))

  def test_inputs(self):
    layer = rt.RNN(rt.MinLSTM(HIDDEN))
    variables = layer.init(jax.random.key(0), self.x)
    with pytest.raises(ValueError, match=r"inputs: expected 5 features.*got "
                       r"shape \(3, 9, 7\)"):
      layer.apply(variables, jnp.ones((BATCH, TIME, 7)))
    with pytest.raises(TypeError, match="inputs: expected a floating dtype"):
      layer.apply(variables, jnp.ones((BATCH, TIME, FEATURES), jnp.int32))

  def test_lru_ring(self):
    with pytest.raises(ValueError, match=r"r_min, r_max: expected 0 <= r_min "
                       r"<= r_max <= 1, got r_min=0.9, r_max=0.5"):
      rt.RNN(rt.LRU(HIDDEN, r_min=0.9, r_max=0.5)).init(jax.random.key(0),
                                                       self.x)
    with pytest.raises(ValueError, match="max_phase: expected > 0, got 0"):
      rt.RNN(rt.LRU(HIDDEN, max_phase=0)).init(jax.random.key(0), self.x)
