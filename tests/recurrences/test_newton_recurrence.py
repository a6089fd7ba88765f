"""newton_scan / newton_rnn against the sequential lax.scan of recurrent.RNN:
outputs, final carries and implicit-function gradients, for every cell and
method, with masks; iteration counts, the fallback, and input errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_transformer as rt
import tolerances
from rnn_transformer.layers import initializers
from rnn_transformer.recurrences import newton_recurrence as nr

BATCH, TIME, FEATURES, HIDDEN = 3, 9, 3, 4
LENGTHS = np.array([TIME, 6, 0])
CELLS = {"rnn": rt.SimpleRNNCell, "gru": rt.GRUCell, "lstm": rt.LSTMCell}
# Masks and a random initial carry all at once: one compilation per case
# (compilation dominates on a 2-core CPU). Every (cell, method) pair runs by
# default, one per cell in reverse; their forward twins are slow-marked.
REVERSED = (("rnn", "quasi"), ("gru", "damped"), ("lstm", "full"))
CASES = [pytest.param(cell, method, False, marks=pytest.mark.slow)
         if (cell, method) in REVERSED else (cell, method, False)
         for cell in CELLS for method in nr.METHODS] + [
             (cell, method, True) for cell, method in REVERSED]


def _inputs(shape=(BATCH, TIME, FEATURES), key=0):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _reset(in_padding=False):
  reset = np.zeros((BATCH, TIME), bool)
  reset[0, [0, 3, 7]] = True
  reset[1, 4] = True
  # Row 1's padding (length 6). RNN's forward pass (jax 0.10.2 tree) lets a
  # reset there zero the final carry; linear_scan and newton_scan restart
  # nothing, as RNN's docstring and its reverse pass say.
  reset[1, 8] = in_padding
  return jnp.asarray(reset)


def _random_like(tree, key):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  return jax.tree.unflatten(treedef, [
      0.5 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)])


def _weighted_sum(tree, weights):
  return sum(jnp.sum(a * w) for a, w in zip(jax.tree.leaves(tree),
                                            jax.tree.leaves(weights)))


@pytest.mark.parametrize("cell_name,method,reverse", CASES)
def test_matches_rnn_outputs_carry_and_gradients(cell_name, method, reverse):
  cell = CELLS[cell_name](HIDDEN)
  x = _inputs()
  layer = rt.RNN(cell, reverse=reverse, keep_order=True, return_carry=True)
  variables = layer.init(jax.random.key(1), x)
  carry0 = _random_like(
      cell.initialize_carry(jax.random.key(0), x[:, 0].shape), 2)
  masks = dict(seq_lengths=jnp.asarray(LENGTHS), reset=_reset())
  out_weights = _inputs((BATCH, TIME, HIDDEN), key=3)
  carry_weights = _random_like(carry0, 4)

  def loss(result):
    carry, outputs = result[:2]
    return (_weighted_sum(outputs, out_weights) +
            _weighted_sum(carry, carry_weights))

  def oracle(variables, x, carry0):
    result = layer.apply(variables, x, initial_carry=carry0, **masks)
    return loss(result), result

  def newton(variables, x, carry0):
    result = nr.newton_rnn(
        cell, {"params": variables["params"]["cell"]}, x,
        initial_carry=carry0, reverse=reverse, method=method, **masks)
    return loss(result), result

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2),
                                              has_aux=True))
  (_, want), want_grads = grad(oracle)(variables, x, carry0)
  (_, got), got_grads = grad(newton)(variables, x, carry0)
  info = got[2]
  assert bool(info.converged) and not bool(info.fell_back), info
  assert 1 <= int(info.iterations) <= TIME
  chex.assert_trees_all_close(got[:2], want, **tolerances.output_tol(
      jnp.float32))
  chex.assert_trees_all_close(got_grads, want_grads,
                              **tolerances.gradient_tol(jnp.float32))


def test_a_reset_in_the_padding_restarts_nothing():
  cell = rt.GRUCell(HIDDEN)
  x = _inputs()
  variables = cell.init(jax.random.key(1), jnp.zeros((BATCH, HIDDEN)), x[:, 0])
  run = jax.jit(lambda reset: nr.newton_rnn(
      cell, variables, x, seq_lengths=jnp.asarray(LENGTHS), reset=reset))
  chex.assert_trees_all_equal(run(_reset(in_padding=True)),
                              run(_reset(in_padding=False)))


def test_step_function_closing_over_parameters_both_adjoints():
  """A hand-written step (not a flax cell) and a hand-written lax.scan: the
  gradient w.r.t. a closed-over matrix flows through closure conversion."""
  x = _inputs((2, 12, 3))
  w = 0.6 * jax.random.normal(jax.random.key(5), (3, 3))
  carry0 = {"h": jnp.zeros((2, 3)), "m": jnp.ones((2, 2))}

  def run(w, method, adjoint):
    def step(carry, x_t):
      h = jnp.tanh(w @ carry["h"] + x_t + carry["m"].sum())
      return {"h": h, "m": 0.5 * carry["m"] + h[:2]}, h
    if method is None:
      def body(carry, x_t):
        return jax.vmap(step)(carry, x_t)
      carry, ys = jax.lax.scan(body, carry0, jnp.swapaxes(x, 0, 1))
      return carry, jnp.swapaxes(ys, 0, 1)
    return nr.newton_scan(step, x, carry0, method=method, adjoint=adjoint)[:2]

  def loss(w, *args):
    carry, ys = run(w, *args)
    return jnp.sum(ys ** 3) + jnp.sum(carry["m"])

  want = jax.jit(jax.grad(loss), static_argnums=(1, 2))(w, None, None)
  for method, adjoint in (("full", "sequential"), ("quasi", "associative")):
    got = jax.jit(jax.grad(loss), static_argnums=(1, 2))(w, method, adjoint)
    chex.assert_trees_all_close(got, want, **tolerances.gradient_tol(
        jnp.float32))


def _elman(radius, time, batch=2, hidden=8):
  cell = rt.SimpleRNNCell(hidden, recurrent_kernel_init=(
      initializers.gaussian_spectral_radius(radius)))
  x = _inputs((batch, time, FEATURES))
  variables = cell.init(jax.random.key(1), jnp.zeros((batch, hidden)), x[:, 0])
  want = rt.RNN(cell, keep_order=True).apply(
      {"params": {"cell": variables["params"]}}, x)
  return cell, variables, x, want


# Measured at T=1024, rho(W_hh)=0.5, H=8 (jax 0.10.2, CPU): full 4, quasi 13,
# damped (0.5) 13 iterations; bounds with a 2x margin.
ITERATION_BOUNDS = {"full": 8, "quasi": 26, "damped": 26}


@pytest.mark.parametrize("method", nr.METHODS)
def test_contracting_elman_rnn_converges_in_few_iterations(method):
  cell, variables, x, want = _elman(0.5, 1024)
  _, outputs, info = jax.jit(lambda v, x: nr.newton_rnn(
      cell, v, x, method=method, on_failure="return"))(variables, x)
  assert bool(info.converged), info
  assert int(info.iterations) <= ITERATION_BOUNDS[method], info
  chex.assert_trees_all_close(outputs, want, **tolerances.output_tol(
      jnp.float32))


def test_fallback_is_taken_and_reported_when_max_iters_is_too_small():
  cell, variables, x, want = _elman(1.5, 64)
  run = jax.jit(lambda v, x, on_failure: nr.newton_rnn(
      cell, v, x, max_iters=2, on_failure=on_failure), static_argnums=2)
  _, outputs, info = run(variables, x, "fallback")
  assert int(info.iterations) == 2
  assert bool(info.fell_back) and not bool(info.converged)
  assert float(info.residual) > nr.DEFAULT_TOL[jnp.dtype(jnp.float32)]
  chex.assert_trees_all_close(outputs, want, **tolerances.output_tol(
      jnp.float32))

  _, outputs, info = run(variables, x, "return")
  assert not bool(info.fell_back) and not bool(info.converged)
  assert np.abs(np.asarray(outputs - want)).max() > 1e-3  # the raw iterate


def test_an_overflowing_full_newton_is_never_reported_converged():
  """Expanding dynamics (rho = 3) over 512 steps: the Jacobian products of
  full Newton overflow float32. The residual is NaN, never a silent pass,
  and the fallback returns the scan's result."""
  cell, variables, x, want = _elman(3.0, 512)
  run = jax.jit(lambda v, x, on_failure: nr.newton_rnn(
      cell, v, x, method="full", max_iters=4, on_failure=on_failure),
                static_argnums=2)
  _, outputs, info = run(variables, x, "return")
  assert not bool(info.converged), info
  assert not float(info.residual) <= nr.DEFAULT_TOL[jnp.dtype(jnp.float32)]
  _, outputs, info = run(variables, x, "fallback")
  assert bool(info.fell_back), info
  chex.assert_trees_all_close(outputs, want, **tolerances.output_tol(
      jnp.float32))


def test_raise_on_failure_eagerly_and_explains_under_jit():
  cell, variables, x, _ = _elman(1.5, 16)
  with pytest.raises(ValueError, match="did not converge: residual .* after "
                     "1 iterations"):
    nr.newton_rnn(cell, variables, x, max_iters=1, on_failure="raise")
  with pytest.raises(ValueError, match="on_failure='raise' needs concrete "
                     "values"):
    jax.jit(lambda v, x: nr.newton_rnn(cell, v, x, on_failure="raise"))(
        variables, x)


def _identity_step(carry, x):
  return carry, x


X = np.zeros((2, 5, 3), np.float32)
CARRY = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(method="newton"), ValueError, r"method: expected one of \('full'"),
    (dict(max_iters=0), ValueError, "max_iters: expected a positive int"),
    (dict(max_iters=2.5), TypeError, "max_iters: expected an int"),
    (dict(tol=-1.0), ValueError, "tol: expected a positive finite number"),
    (dict(tol=float("inf")), ValueError, "tol: expected a positive finite "
     "number, got inf"),
    (dict(tol="1e-5"), TypeError, "tol: expected a number or None"),
    (dict(damping=1.5), ValueError, r"damping: expected a float in \[0, 1\]"),
    (dict(on_failure="ignore"), ValueError, "on_failure: expected one of"),
    (dict(adjoint="forward"), ValueError, "adjoint: expected one of"),
    (dict(reverse=1), TypeError, "reverse: expected True or False"),
    (dict(inputs=X[0]), ValueError, "inputs: expected rank 3"),
    (dict(inputs=X[:, :0]), ValueError, "inputs: expected at least one time"),
    (dict(inputs=X.astype(np.int32)), rt.DTypeError, "inputs: expected a "
     "floating dtype"),
    (dict(initial_carry=CARRY[:1]), ValueError, "initial_carry: expected "
     r"leaves of shape \(batch, ...\) with batch=2"),
    (dict(initial_carry=CARRY.astype(np.int32)), rt.DTypeError,
     "initial_carry: expected leaves of one floating dtype"),
    (dict(reset_carry=(CARRY, CARRY)), ValueError, "reset_carry: expected "
     "the structure and shapes of initial_carry"),
    (dict(reset_carry=CARRY.astype(np.int32)), rt.DTypeError,
     r"reset_carry: expected leaves of initial_carry's dtype float32, got "
     r"\['int32'\]"),
    (dict(reset_carry=CARRY.astype(np.float16)), rt.DTypeError,
     "reset_carry: expected leaves of initial_carry's dtype float32"),
    (dict(seq_lengths=np.array([5, 6])), ValueError, r"seq_lengths: expected "
     r"values in \[0, 5\]"),
    (dict(reset=np.zeros((2, 4), bool)), ValueError, "reset: expected shape"),
    (dict(step="cell"), TypeError, "step: expected a callable"),
    (dict(step=lambda c, x: (c[:2], x)), ValueError, "step: expected a new "
     "carry shaped like the carry"),
    (dict(step=lambda c, x: (c @ np.ones((4, 4)), x)), ValueError,
     "step: expected step.carry, x. -> .new_carry, output. for one example"),
    (dict(step=lambda c, x: (c.astype(jnp.bfloat16), x)), rt.DTypeError,
     r"step: expected a new carry of the carry's dtype \['float32'\], got "
     r"\['bfloat16'\]"),
    (dict(step=lambda c, x: (c, None)), TypeError, "step: expected .* with "
     "the output one array .*, got NoneType"),
    (dict(step=lambda c, x: (c, (x, x))), TypeError, "step: expected .* with "
     "the output one array .*, got tuple"),
])
def test_bad_arguments_raise_named_errors(kwargs, error, match):
  args = dict(step=_identity_step, inputs=X, initial_carry=CARRY)
  args.update(kwargs)
  with pytest.raises(error, match=match):
    nr.newton_scan(args.pop("step"), args.pop("inputs"),
                   args.pop("initial_carry"), **args)


def test_an_empty_batch_gives_the_initial_carry_and_empty_outputs():
  # As lax.scan (and RNN's sequential evaluation) over no sequences.
  carry, outputs, info = nr.newton_scan(
      lambda c, x: (jnp.tanh(c + x), 2.0 * c), X[:0], CARRY[:0])
  assert carry.shape == (0, 3) and carry.dtype == np.float32
  assert outputs.shape == (0, 5, 3) and outputs.dtype == np.float32
  assert bool(info.converged) and not bool(info.fell_back)
  assert int(info.iterations) == 0
  cell = rt.GRUCell(HIDDEN)
  variables = cell.init(jax.random.key(0), cell.initialize_carry(
      jax.random.key(0), X[:, 0].shape), X[:, 0])
  carry, outputs, _ = nr.newton_rnn(cell, variables, X[:0])
  assert carry.shape == (0, HIDDEN) and outputs.shape == (0, 5, HIDDEN)


def test_newton_rnn_refuses_an_empty_time_axis_by_name():
  cell = rt.GRUCell(HIDDEN)
  variables = cell.init(jax.random.key(0), cell.initialize_carry(
      jax.random.key(0), X[:, 0].shape), X[:, 0])
  with pytest.raises(ValueError, match="inputs: expected at least one time "
                     r"step, got shape \(2, 0, 3\)"):
    nr.newton_rnn(cell, variables, X[:, :0])


def test_newton_rnn_restarts_a_low_precision_carry_in_its_dtype():
  cell = rt.SimpleRNNCell(HIDDEN)
  x = _inputs((2, 4, FEATURES))
  variables = cell.init(jax.random.key(0), jnp.zeros((2, HIDDEN)), x[:, 0])
  reset = np.zeros((2, 4), bool)
  reset[:, 2] = True
  carry, _, info = nr.newton_rnn(
      cell, variables, x.astype(jnp.float16), reset=jnp.asarray(reset),
      initial_carry=jnp.zeros((2, HIDDEN), jnp.float16))
  assert carry.dtype == jnp.float16 and bool(info.converged)


def test_newton_rnn_checks_the_initial_carry_against_the_cell():
  cell = rt.LSTMCell(HIDDEN)
  x = _inputs()
  variables = cell.init(jax.random.key(0), cell.initialize_carry(
      jax.random.key(0), x[:, 0].shape), x[:, 0])
  with pytest.raises(ValueError, match="initial_carry: expected the structure "
                     "and shapes of LSTMCell's carry"):
    nr.newton_rnn(cell, variables, x,
                  initial_carry=jnp.zeros((BATCH, HIDDEN)))


@pytest.mark.parametrize("cell_name,time_major,reverse,keep_order", [
    ("lstm", False, False, False),
    pytest.param("gru", True, True, False, marks=pytest.mark.slow),
    ("rnn", False, True, True),
])
def test_rnn_evaluation_newton_is_the_scan(cell_name, time_major, reverse,
                                           keep_order):
  """`RNN(evaluation="newton")`: the same parameters as the scan's, the same
  outputs, final carry and gradients, in every layout, and its NewtonInfo
  sown as intermediates."""
  x = _inputs()
  if time_major:
    x = jnp.swapaxes(x, 0, 1)
  options = dict(reverse=reverse, keep_order=keep_order, return_carry=True,
                 time_major=time_major)
  scan = rt.RNN(CELLS[cell_name](HIDDEN), **options)
  newton = rt.RNN(CELLS[cell_name](HIDDEN), evaluation="newton",
                  newton={"method": "quasi"}, **options)
  variables = scan.init(jax.random.key(1), x)
  chex.assert_trees_all_equal(variables, newton.init(jax.random.key(1), x))
  lengths = jnp.asarray(LENGTHS)

  def loss(layer, variables):
    (carry, y), state = layer.apply(variables, x, seq_lengths=lengths,
                                    reset=_reset() if not time_major else
                                    None, mutable=["intermediates"])
    return jnp.sum(y ** 2) + _weighted_sum(carry, carry), (carry, y, state)

  (_, (carry, y, _)), grads = jax.value_and_grad(
      lambda v: loss(scan, v), has_aux=True)(variables)
  (_, (n_carry, n_y, state)), n_grads = jax.value_and_grad(
      lambda v: loss(newton, v), has_aux=True)(variables)
  chex.assert_trees_all_close((carry, y), (n_carry, n_y),
                              **tolerances.output_tol(jnp.float32))
  chex.assert_trees_all_close(grads, n_grads,
                              **tolerances.gradient_tol(jnp.float32))
  (info,) = state["intermediates"]["newton_info"]
  assert bool(info.converged) and not bool(info.fell_back)
  assert 1 <= int(info.iterations) <= TIME


def test_backbone_config_evaluation_newton():
  config = rt.ModelConfig(backbone="gru", num_layers=2, model_dim=8,
                          evaluation="newton", newton_method="full")
  x = _inputs((2, 7, 8))
  model, scanned = rt.build_backbone(config), rt.build_backbone(
      config.replace(evaluation="scan", newton_method=None))
  variables = model.init(jax.random.key(0), x)
  out, state = model.apply(variables, x, mutable=["intermediates"])
  chex.assert_trees_all_close(out.features,
                              scanned.apply(variables, x).features,
                              **tolerances.output_tol(jnp.float32))
  infos = jax.tree.leaves(state, is_leaf=lambda v: isinstance(
      v, nr.NewtonInfo))
  assert len(infos) == 2 and all(bool(i.converged) for i in infos)


@pytest.mark.parametrize("make, match", [
    (lambda: rt.RNN(rt.MinGRU(HIDDEN), evaluation="newton"),
     "linear recurrence"),
    (lambda: rt.RNN(rt.GRUCell(HIDDEN), evaluation="newton",
                    hoist_input_projection=True), "hoist_input_projection"),
    (lambda: rt.RNN(rt.GRUCell(HIDDEN), evaluation="parallel"),
     "evaluation"),
    (lambda: rt.RNN(rt.GRUCell(HIDDEN), newton={"method": "quasi"}),
     "newton: options for evaluation='newton' only"),
    (lambda: rt.RNN(rt.GRUCell(HIDDEN), evaluation="newton",
                    newton={"method": "exact"}), "method"),
])
def test_rnn_evaluation_errors_name_the_argument(make, match):
  with pytest.raises(ValueError, match=match):
    make().init(jax.random.key(0), _inputs())


def test_rnn_evaluation_newton_rejects_state_perturbation():
  layer = rt.RNN(rt.SimpleRNNCell(HIDDEN), evaluation="newton")
  x = _inputs()
  variables = layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="state_perturbation"):
    layer.apply(variables, x,
                state_perturbation=jnp.zeros((BATCH, TIME, HIDDEN)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(backbone="lru", evaluation="newton"), "evaluation"),
    (dict(backbone="gru", evaluation="sequential"), "evaluation"),
    (dict(backbone="gru", evaluation="newton", newton_method="exact"),
     "newton_method"),
])
def test_model_config_evaluation_is_validated(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rt.ModelConfig(model_dim=8, **kwargs)
