"""How `RNN` executes a cell: the deferred-weight-gradient backward against
autodiff of `lax.scan`, the per-backend defaults, and the flax.linen.RNN
conveniences (`time_major`, `num_batch_dims`) against flax itself."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_transformer as rt
import tolerances
from flax_reference import cell_params_from_flax
from flax_reference import random_flax_params
from rnn_transformer.layers import recurrent

BATCH, TIME, FEATURES, HIDDEN = 4, 7, 5, 6
CELLS = (rt.SimpleRNNCell, rt.LSTMCell, rt.GRUCell)
FLAX_CELLS = {rt.SimpleRNNCell: nn.SimpleCell, rt.LSTMCell: nn.LSTMCell,
              rt.GRUCell: nn.GRUCell}


def _normal(key, shape):
  return jax.random.normal(jax.random.key(key), shape)


def _masks():
  lengths = jnp.array([TIME, 3, 0, 5])
  reset = jax.random.bernoulli(jax.random.key(7), 0.3, (BATCH, TIME))
  return lengths, reset


def _random_carry(cell, key):
  carry = cell.initialize_carry(jax.random.key(0), (BATCH, FEATURES))
  leaves, tree = jax.tree.flatten(carry)
  return jax.tree.unflatten(
      tree, [_normal(key + i, leaf.shape) for i, leaf in enumerate(leaves)])


def _loss_and_grads(layer, variables, x, carry, perturbation, **kwargs):
  def loss(variables, x, carry, perturbation):
    final, out = layer.apply(variables, x, initial_carry=carry,
                             state_perturbation=perturbation,
                             return_carry=True, **kwargs)
    # Weights on every output and carry leaf so each cotangent is exercised.
    return jnp.sum(jnp.sin(out)) + sum(
        jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(final))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(
      variables, x, carry, perturbation)


@pytest.mark.parametrize("cell_cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("hoist", [True, False], ids=["hoisted", "per_step"])
@pytest.mark.parametrize("masks", ["none", "lengths_reset", "reverse"])
def test_deferred_weight_gradients_match_autodiff_of_the_scan(cell_cls, hoist,
                                                               masks):
  """Values and gradients w.r.t. params, inputs, initial carry and the state
  perturbation equal jax.grad through lax.scan (the oracle)."""
  x = _normal(0, (BATCH, TIME, FEATURES))
  perturbation = 0.1 * _normal(1, (BATCH, TIME, HIDDEN))
  lengths, reset = _masks()
  kwargs = {"none": {},
            "lengths_reset": dict(seq_lengths=lengths, reset=reset),
            "reverse": dict(seq_lengths=lengths, reset=reset, reverse=True,
                            keep_order=True)}[masks]
  make = lambda defer: rt.RNN(  # noqa: E731
      cell_cls(HIDDEN), hoist_input_projection=hoist,
      defer_weight_gradients=defer)
  variables = make(False).init(jax.random.key(2), x)
  variables = jax.tree.map(lambda v: v + 0.1 * _normal(3, v.shape), variables)
  carry = _random_carry(cell_cls(HIDDEN), 10)
  expected = _loss_and_grads(make(False), variables, x, carry, perturbation,
                             **kwargs)
  actual = _loss_and_grads(make(True), variables, x, carry, perturbation,
                           **kwargs)
  chex.assert_trees_all_close(actual, expected,
                              **tolerances.gradient_tol(jnp.float32))


@pytest.mark.parametrize("cell_cls", CELLS, ids=lambda c: c.__name__)
def test_deferred_weight_gradients_in_bfloat16_compute(cell_cls):
  x = _normal(0, (BATCH, TIME, FEATURES)).astype(jnp.bfloat16)
  make = lambda defer: rt.RNN(  # noqa: E731
      cell_cls(HIDDEN, dtype=jnp.bfloat16), defer_weight_gradients=defer)
  variables = make(False).init(jax.random.key(2), x)
  grad = lambda layer: jax.grad(  # noqa: E731
      lambda v: jnp.sum(layer.apply(v, x).astype(jnp.float32) ** 2))(variables)
  chex.assert_trees_all_close(grad(make(True)), grad(make(False)),
                              **tolerances.gradient_tol(jnp.bfloat16))


@pytest.mark.parametrize("cell_cls", CELLS, ids=lambda c: c.__name__)
def test_forward_mode_needs_deferral_off_and_agrees_with_reverse_mode(
    cell_cls):
  """<w, J v> by jax.jvp without deferral equals <J^T w, v> by the deferred
  backward; with deferral, forward mode is JAX's custom_vjp TypeError (the
  documented limit)."""
  x = _normal(0, (BATCH, TIME, FEATURES))
  v, w = _normal(1, x.shape), _normal(2, (BATCH, TIME, HIDDEN))
  layer = lambda defer: rt.RNN(  # noqa: E731
      cell_cls(HIDDEN), defer_weight_gradients=defer)
  variables = layer(False).init(jax.random.key(0), x)
  _, jv = jax.jvp(lambda x: layer(False).apply(variables, x), (x,), (v,))
  _, vjp = jax.vjp(lambda x: layer(True).apply(variables, x), x)
  (jtw,) = vjp(w)
  np.testing.assert_allclose(jnp.vdot(w, jv), jnp.vdot(jtw, v), rtol=1e-4)
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(lambda x: layer(True).apply(variables, x), (x,), (v,))


def test_defer_weight_gradients_needs_a_fused_gate_cell():
  x = _normal(0, (BATCH, TIME, FEATURES))
  with pytest.raises(ValueError, match="defer_weight_gradients=True needs"):
    rt.RNN(nn.GRUCell(HIDDEN), defer_weight_gradients=True).init(
        jax.random.key(0), x)


def test_a_reset_in_the_padding_leaves_the_final_carry():
  """Forward and reverse alike: padding never touches the carry."""
  x = _normal(0, (1, TIME, FEATURES))
  layer = rt.RNN(rt.SimpleRNNCell(HIDDEN), return_carry=True)
  variables = layer.init(jax.random.key(1), x)
  lengths = jnp.array([3])
  in_padding = jnp.zeros((1, TIME), bool).at[0, 5].set(True)
  for reverse in (False, True):
    final, _ = layer.apply(variables, x, seq_lengths=lengths, reverse=reverse)
    final_reset, _ = layer.apply(variables, x, seq_lengths=lengths,
                                 reset=in_padding, reverse=reverse)
    chex.assert_trees_all_close(final_reset, final)
    assert float(jnp.max(jnp.abs(final))) > 0.1


class TestDefaults:

  def test_every_backend_has_a_row_for_any_cell(self):
    for backend in recurrent.DEFAULTS_BY_BACKEND:
      for cell in (*(c(HIDDEN) for c in CELLS), nn.GRUCell(HIDDEN)):
        row = recurrent.backend_defaults(cell, backend)
        assert row.evidence

  def test_a_subclass_takes_its_parents_row(self):
    class MyLSTM(rt.LSTMCell):
      pass
    for backend in recurrent.DEFAULTS_BY_BACKEND:
      assert (recurrent.backend_defaults(MyLSTM(HIDDEN), backend)
              == recurrent.backend_defaults(rt.LSTMCell(HIDDEN), backend))

  def test_deferral_stops_above_its_batch_limit(self):
    row = recurrent.Defaults(False, True, "test", defer_max_batch=8)
    assert row.defers(1) and row.defers(8) and not row.defers(9)
    assert recurrent.Defaults(False, True, "test").defers(10_000)
    assert not recurrent.Defaults(False, False, "test").defers(1)

  @pytest.mark.parametrize("cell_cls", CELLS)
  @pytest.mark.parametrize("batch, layout", [
      (2, {}), (33, {}), (64, {}), ((3, 3), {}), ((3, 11), {}),
      (2, dict(time_major=True)), (33, dict(time_major=True))])
  def test_rnn_defers_as_its_row_says_for_the_batch(self, monkeypatch,
                                                    cell_cls, batch, layout):
    """The batch is every batch axis together, in either layout: under a
    row that defers up to 32 sequences, (3, 11) and time-major 33 are 33."""
    calls = []
    fused_scan = recurrent.fused_recurrence.scan

    def recording_scan(*args, **kwargs):
      calls.append(batch)
      return fused_scan(*args, **kwargs)

    row = recurrent.Defaults(False, True, "test", defer_max_batch=32)
    monkeypatch.setattr(recurrent, "backend_defaults", lambda cell: row)
    monkeypatch.setattr(recurrent.fused_recurrence, "scan", recording_scan)
    layer = rt.RNN(cell_cls(HIDDEN), **layout)
    batch_shape = batch if isinstance(batch, tuple) else (batch,)
    x = jnp.ones((TIME, *batch_shape, FEATURES) if layout
                 else (*batch_shape, TIME, FEATURES))
    jax.eval_shape(layer.init, jax.random.key(0), x)
    assert bool(calls) == (int(np.prod(batch_shape)) <= 32)

  def test_unknown_backend_is_named(self):
    with pytest.raises(ValueError, match="backend: expected one of"):
      recurrent.backend_defaults(rt.LSTMCell(HIDDEN), "quantum")


def _flax_and_ours(cell_cls, num_batch_dims=None, **layer_kwargs):
  """flax.linen.RNN and ours with the same (random) parameters; flax infers
  the batch axes from the input rank, ours is told `num_batch_dims`."""
  flax_cell = FLAX_CELLS[cell_cls](features=HIDDEN)
  step = jnp.zeros((1, FEATURES))
  flax_params = flax_cell.init(
      jax.random.key(1), flax_cell.initialize_carry(jax.random.key(0),
                                                    step.shape), step)["params"]
  flax_params = random_flax_params(flax_params, jax.random.key(2))
  ours = {"params": {"cell": cell_params_from_flax(cell_cls, flax_params)}}
  theirs = {"params": {"cell": flax_params}}
  return (nn.RNN(flax_cell, return_carry=True, **layer_kwargs), theirs,
          rt.RNN(cell_cls(HIDDEN), return_carry=True,
                 num_batch_dims=num_batch_dims, **layer_kwargs), ours)


@pytest.mark.parametrize("cell_cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("num_batch_dims", [1, 2])
def test_layouts_match_flax(cell_cls, time_major, num_batch_dims):
  batch_shape = (2, 3)[:num_batch_dims] if num_batch_dims == 2 else (BATCH,)
  shape = ((TIME, *batch_shape, FEATURES) if time_major
           else (*batch_shape, TIME, FEATURES))
  x = _normal(0, shape)
  # flax's seq_lengths handles one batch axis only (its final-carry gather
  # fails with two); the flattening test covers lengths with two.
  lengths = (jax.random.randint(jax.random.key(4), batch_shape, 1, TIME + 1)
             if num_batch_dims == 1 else jnp.full(batch_shape, TIME))
  theirs, their_vars, ours, our_vars = _flax_and_ours(
      cell_cls, time_major=time_major, num_batch_dims=num_batch_dims)
  their_carry, their_out = theirs.apply(
      their_vars, x, seq_lengths=lengths if num_batch_dims == 1 else None)
  our_carry, our_out = ours.apply(our_vars, x, seq_lengths=lengths)
  chex.assert_shape(our_out, shape[:-1] + (HIDDEN,))
  # flax computes through the padding; ours outputs zeros there.
  steps = jnp.arange(TIME).reshape((TIME,) + (1,) * num_batch_dims
                                   if time_major else (TIME,))
  valid = (steps < lengths if time_major else
           steps < lengths[..., None])[..., None]
  chex.assert_trees_all_close(our_out, jnp.where(valid, their_out, 0.0),
                              **tolerances.output_tol(jnp.float32))
  chex.assert_trees_all_close(our_carry, their_carry,
                              **tolerances.output_tol(jnp.float32))


@pytest.mark.parametrize("num_batch_dims", [None, 2])
def test_num_batch_dims_equals_running_the_flattened_batch(num_batch_dims):
  x = _normal(0, (2, 3, TIME, FEATURES))
  layer = rt.RNN(rt.LSTMCell(HIDDEN), num_batch_dims=num_batch_dims,
                 return_carry=True)
  flat = rt.RNN(rt.LSTMCell(HIDDEN), return_carry=True)
  variables = layer.init(jax.random.key(1), x)
  carry = jax.tree.map(lambda c: c + 1.0, rt.LSTMCell(HIDDEN).initialize_carry(
      jax.random.key(0), (2, 3, FEATURES)))
  lengths = jnp.array([[TIME, 2, 0], [5, 1, TIME]])
  final, out = layer.apply(variables, x, initial_carry=carry,
                           seq_lengths=lengths)
  flat_final, flat_out = flat.apply(
      variables, x.reshape(6, TIME, FEATURES),
      initial_carry=jax.tree.map(lambda c: c.reshape(6, HIDDEN), carry),
      seq_lengths=lengths.reshape(6))
  chex.assert_trees_all_close(out, flat_out.reshape(2, 3, TIME, HIDDEN))
  chex.assert_trees_all_close(
      final, jax.tree.map(lambda c: c.reshape(2, 3, HIDDEN), flat_final))


@pytest.mark.parametrize("kwargs,x_shape,match", [
    (dict(num_batch_dims=2), (BATCH, TIME, FEATURES),
     r"inputs: expected rank 4 \(2 batch axes, time, features\)"),
    (dict(time_major=True), (BATCH, FEATURES),
     r"inputs: expected rank 3 \(time, batch, features\)"),
    (dict(num_batch_dims=0), (TIME, FEATURES), "num_batch_dims"),
    (dict(), (TIME, FEATURES),
     r"inputs: expected rank 3 \(batch, time, features\) or more"),
])
def test_layout_errors_name_the_argument(kwargs, x_shape, match):
  with pytest.raises(ValueError, match=match):
    rt.RNN(rt.LSTMCell(HIDDEN), **kwargs).init(jax.random.key(0),
                                               _normal(0, x_shape))


def test_seq_lengths_shape_follows_the_batch_axes():
  x = _normal(0, (2, 3, TIME, FEATURES))
  layer = rt.RNN(rt.LSTMCell(HIDDEN), num_batch_dims=2)
  variables = layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"seq_lengths: expected shape \(\*batch"):
    layer.apply(variables, x, seq_lengths=jnp.full((6,), TIME))


def test_reverse_keeps_padding_in_place_where_flax_reverses_it():
  """The documented difference of `flip_sequences` from flax's."""
  x = jnp.arange(4.0).reshape(1, 4, 1)  # [x0, x1, pad0, pad1]
  lengths = jnp.array([2])
  ours = recurrent.flip_sequences(x, lengths)
  theirs = nn.recurrent.flip_sequences(x, lengths, num_batch_dims=1,
                                       time_major=False)
  np.testing.assert_array_equal(ours[0, :, 0], [1.0, 0.0, 2.0, 3.0])
  np.testing.assert_array_equal(theirs[0, :, 0], [1.0, 0.0, 3.0, 2.0])


def test_zero_length_sequence_returns_its_initial_carry_unlike_flax():
  theirs, their_vars, ours, our_vars = _flax_and_ours(rt.SimpleRNNCell)
  x = _normal(0, (1, TIME, FEATURES))
  carry = _normal(5, (1, HIDDEN))
  lengths = jnp.array([0])
  our_final, our_out = ours.apply(our_vars, x, initial_carry=carry,
                                  seq_lengths=lengths)
  chex.assert_trees_all_close(our_final, carry)
  np.testing.assert_array_equal(our_out, 0.0)
  # flax selects the carry at index length - 1 = -1: after the last step.
  their_final, their_out = theirs.apply(their_vars, x, initial_carry=carry,
                                        seq_lengths=lengths)
  chex.assert_trees_all_close(their_final, their_out[:, -1])
