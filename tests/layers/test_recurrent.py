"""Recurrent cells and layers against flax.linen and the seed's equation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_transformer as rt
import tolerances
from flax_reference import CELL_PAIRS
from flax_reference import cell_params_from_flax
from flax_reference import random_flax_params

BATCH, TIME, FEATURES, HIDDEN = 3, 9, 5, 6


def _inputs(key=0, shape=(BATCH, TIME, FEATURES), dtype=jnp.float32):
  return jax.random.normal(jax.random.key(key), shape, dtype)


def _flax_cell_params(flax_cell_cls, x_step):
  cell = flax_cell_cls(features=HIDDEN)
  carry = cell.initialize_carry(jax.random.key(0), x_step.shape)
  params = cell.init(jax.random.key(1), carry, x_step)["params"]
  return random_flax_params(params, jax.random.key(2))


def _carry_like(cell, x_step, key):
  """A random carry of the cell's structure (not zeros, to test the state path)."""
  carry = cell.initialize_carry(jax.random.key(0), x_step.shape)
  leaves, tree = jax.tree.flatten(carry)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  return jax.tree.unflatten(
      tree, [jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)])


def test_elman_rnn_matches_numpy_loop_of_the_seed_equation():
  x = _inputs()
  layer = rt.RNN(rt.SimpleRNNCell(HIDDEN), return_carry=True)
  variables = layer.init(jax.random.key(3), x)
  params = variables["params"]["cell"]
  w_xh = np.asarray(params["input_projection"]["kernel"], np.float64).T
  b = np.asarray(params["input_projection"]["bias"], np.float64)
  w_hh = np.asarray(params["recurrent_projection"]["kernel"], np.float64).T

  h = np.zeros((BATCH, HIDDEN))
  expected = []
  for t in range(TIME):
    x_t = np.asarray(x[:, t], np.float64)
    h = np.tanh(h @ w_hh.T + x_t @ w_xh.T + b)  # h_t = tanh(W_hh h + W_xh x + b)
    expected.append(h)
  expected = np.stack(expected, axis=1)

  carry, outputs = layer.apply(variables, x)
  chex.assert_trees_all_close(outputs, expected.astype(np.float32), atol=1e-5)
  chex.assert_trees_all_close(carry, expected[:, -1].astype(np.float32),
                              atol=1e-5)


@pytest.mark.parametrize("ours,theirs", CELL_PAIRS,
                         ids=lambda c: getattr(c, "__name__", str(c)))
def test_cell_step_matches_flax_outputs_and_gradients(ours, theirs):
  x = _inputs(shape=(BATCH, FEATURES))
  flax_params = _flax_cell_params(theirs, x)
  our_params = cell_params_from_flax(ours, flax_params)
  flax_cell, our_cell = theirs(features=HIDDEN), ours(features=HIDDEN)
  carry = _carry_like(flax_cell, x, key=4)

  def loss(apply, params, carry, x):
    new_carry, y = apply({"params": params}, carry, x)
    return jnp.sum(y ** 2) + sum(jnp.sum(jnp.sin(c)) for c in
                                 jax.tree.leaves(new_carry))

  ref_out = flax_cell.apply({"params": flax_params}, carry, x)
  out = our_cell.apply({"params": our_params}, carry, x)
  chex.assert_trees_all_close(out, ref_out, **tolerances.output_tol(jnp.float32))

  ref_grads = jax.grad(loss, argnums=(1, 2, 3))(flax_cell.apply, flax_params,
                                                carry, x)
  grads = jax.grad(loss, argnums=(1, 2, 3))(our_cell.apply, our_params, carry,
                                            x)
  expected = (cell_params_from_flax(ours, ref_grads[0]),) + ref_grads[1:]
  chex.assert_trees_all_close(grads, expected,
                              **tolerances.gradient_tol(jnp.float32))


def _valid_loss(outputs, carry, valid, weights):
  outputs = jnp.where(valid[..., None], outputs, 0.0)
  return jnp.sum(outputs * weights) + sum(
      jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry))


@pytest.mark.parametrize("reverse,keep_order",
                         [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("ours,theirs", CELL_PAIRS,
                         ids=lambda c: getattr(c, "__name__", str(c)))
def test_rnn_layer_matches_flax_rnn(ours, theirs, with_lengths, reverse,
                                    keep_order):
  x = _inputs(key=5)
  seq_lengths = jnp.array([TIME, 4, 1]) if with_lengths else None
  valid = (jnp.arange(TIME)[None] < (seq_lengths if with_lengths else
                                     jnp.full((BATCH,), TIME))[:, None])
  flax_params = _flax_cell_params(theirs, x[:, 0])
  our_params = cell_params_from_flax(ours, flax_params)
  weights = jax.random.normal(jax.random.key(6), (BATCH, TIME, HIDDEN))

  flax_rnn = nn.RNN(theirs(features=HIDDEN), return_carry=True,
                    reverse=reverse, keep_order=keep_order)
  our_rnn = rt.RNN(ours(features=HIDDEN), return_carry=True, reverse=reverse,
                   keep_order=keep_order)

  def run(rnn, params, x):
    carry, outputs = rnn.apply({"params": {"cell": params}}, x,
                               seq_lengths=seq_lengths)
    return carry, outputs

  def loss(rnn, params, x):
    carry, outputs = run(rnn, params, x)
    return _valid_loss(outputs, carry, valid, weights)

  ref_carry, ref_outputs = run(flax_rnn, flax_params, x)
  carry, outputs = run(our_rnn, our_params, x)
  tol = tolerances.output_tol(jnp.float32)
  chex.assert_trees_all_close(carry, ref_carry, **tol)
  chex.assert_trees_all_close(jnp.where(valid[..., None], outputs, 0.0),
                              jnp.where(valid[..., None], ref_outputs, 0.0),
                              **tol)
  if with_lengths:  # flax leaves padded outputs unspecified; ours are zero
    chex.assert_trees_all_equal(jnp.where(valid[..., None], 0.0, outputs),
                                jnp.zeros_like(outputs))

  ref_grads = jax.grad(loss, argnums=(1, 2))(flax_rnn, flax_params, x)
  grads = jax.grad(loss, argnums=(1, 2))(our_rnn, our_params, x)
  expected = (cell_params_from_flax(ours, ref_grads[0]), ref_grads[1])
  chex.assert_trees_all_close(grads, expected,
                              **tolerances.gradient_tol(jnp.float32))


CELLS = [rt.SimpleRNNCell, rt.LSTMCell, rt.GRUCell]
cell_ids = [c.__name__ for c in CELLS]


@pytest.mark.parametrize("cell_cls", CELLS, ids=cell_ids)
def test_final_carry_is_carry_at_each_sequence_end(cell_cls):
  x = _inputs(key=7)
  lengths = [TIME, 5, 0]
  layer = rt.RNN(cell_cls(HIDDEN), return_carry=True)
  variables = layer.init(jax.random.key(8), x)
  initial = _carry_like(cell_cls(HIDDEN), x[:, 0], key=9)
  carry, _ = layer.apply(variables, x, seq_lengths=jnp.array(lengths),
                         initial_carry=initial)
  def example(tree, b):
    return jax.tree.map(lambda c: c[b:b + 1], tree)

  for b, length in enumerate(lengths):
    expected = example(initial, b)
    if length:
      expected, _ = layer.apply(variables, x[b:b + 1, :length],
                                initial_carry=example(initial, b))
    chex.assert_trees_all_close(example(carry, b), expected, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell_cls", CELLS, ids=cell_ids)
def test_reset_mask_equals_running_packed_sequences_separately(cell_cls,
                                                               reverse):
  # Row 0 packs sequences of lengths 4 and 5; row 1 packs 2, 3 and 4.
  segments = [[4, 5], [2, 3, 4]]
  x = _inputs(key=10, shape=(2, TIME, FEATURES))
  reset = np.zeros((2, TIME), bool)
  for b, lengths in enumerate(segments):
    reset[b, np.cumsum([0] + lengths[:-1])] = True
  layer = rt.RNN(cell_cls(HIDDEN), reverse=reverse, keep_order=True)
  variables = layer.init(jax.random.key(11), x)
  packed = layer.apply(variables, x, reset=jnp.asarray(reset))
  for b, lengths in enumerate(segments):
    start = 0
    for length in lengths:
      alone = layer.apply(variables, x[b:b + 1, start:start + length])
      chex.assert_trees_all_close(packed[b:b + 1, start:start + length],
                                  alone, atol=1e-6)
      start += length


@pytest.mark.parametrize("cell_cls", CELLS, ids=cell_ids)
def test_carry_flows_across_chunks_for_truncated_bptt(cell_cls):
  x = _inputs(key=12)
  layer = rt.RNN(cell_cls(HIDDEN), return_carry=True)
  variables = layer.init(jax.random.key(13), x)
  full_carry, full = layer.apply(variables, x)
  carry, first = layer.apply(variables, x[:, :4])
  carry, second = layer.apply(variables, x[:, 4:],
                              initial_carry=jax.lax.stop_gradient(carry))
  chex.assert_trees_all_close(jnp.concatenate([first, second], axis=1), full,
                              atol=1e-6)
  chex.assert_trees_all_close(carry, full_carry, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell_cls", CELLS, ids=cell_ids)
def test_hoisted_input_projection_equals_per_step(cell_cls, reverse):
  x = _inputs(key=14)
  lengths = jnp.array([TIME, 3, 6])
  per_step = rt.RNN(cell_cls(HIDDEN), hoist_input_projection=False,
                    reverse=reverse)
  hoisted = rt.RNN(cell_cls(HIDDEN), hoist_input_projection=True,
                   reverse=reverse)
  variables = per_step.init(jax.random.key(15), x)
  chex.assert_trees_all_close(
      hoisted.apply(variables, x, seq_lengths=lengths),
      per_step.apply(variables, x, seq_lengths=lengths), atol=1e-6)


def test_flax_cells_run_in_our_layer_and_refuse_forced_hoisting():
  x = _inputs(key=16)
  layer = rt.RNN(nn.GRUCell(HIDDEN))
  variables = layer.init(jax.random.key(17), x)
  chex.assert_shape(layer.apply(variables, x), (BATCH, TIME, HIDDEN))
  with pytest.raises(ValueError, match="hoist_input_projection=True"):
    rt.RNN(nn.GRUCell(HIDDEN), hoist_input_projection=True).init(
        jax.random.key(0), x)


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("options", [
    {}, dict(seq_lengths=jnp.array([4, 2])),
    dict(reverse=True, keep_order=True)])
def test_cells_with_several_feature_axes_match_flax_rnn(time_major, options):
  """flax's `num_feature_axes` convention: ConvLSTMCell steps over
  `(height, width, channels)`, so time sits before three axes."""
  x = jax.random.normal(jax.random.key(30), (2, 4, 5, 5, 1))
  if time_major:
    x = jnp.swapaxes(x, 0, 1)
  cell = nn.ConvLSTMCell(2, (3, 3))
  theirs = nn.RNN(cell, time_major=time_major)
  variables = theirs.init(jax.random.key(31), x)
  want = theirs.apply(variables, x, **options)
  got = rt.RNN(cell, time_major=time_major).apply(variables, x, **options)
  if "seq_lengths" in options:  # flax computes through the padding
    valid = (jnp.arange(4)[None, :] < options["seq_lengths"][:, None])
    valid = valid[:, :, None, None, None]
    if time_major:
      valid = jnp.swapaxes(valid, 0, 1)
    want = jnp.where(valid, want, 0.0)
  chex.assert_trees_all_close(got, want, atol=1e-6)


def test_bidirectional_matches_flax_bidirectional():
  x = _inputs(key=18)
  lengths = jnp.array([TIME, 5, 2])
  flax_fwd = _flax_cell_params(nn.LSTMCell, x[:, 0])
  flax_bwd = random_flax_params(flax_fwd, jax.random.key(19))
  theirs = nn.Bidirectional(nn.RNN(nn.LSTMCell(HIDDEN)),
                            nn.RNN(nn.LSTMCell(HIDDEN)))
  ours = rt.Bidirectional(rt.RNN(rt.LSTMCell(HIDDEN)),
                          rt.RNN(rt.LSTMCell(HIDDEN)))
  ref = theirs.apply({"params": {"forward_rnn": {"cell": flax_fwd},
                                 "backward_rnn": {"cell": flax_bwd}}},
                     x, seq_lengths=lengths)
  out = ours.apply({"params": {
      "forward_rnn": {"cell": cell_params_from_flax(rt.LSTMCell, flax_fwd)},
      "backward_rnn": {"cell": cell_params_from_flax(rt.LSTMCell, flax_bwd)}}},
                   x, seq_lengths=lengths)
  chex.assert_shape(out, (BATCH, TIME, 2 * HIDDEN))
  valid = (jnp.arange(TIME)[None] < lengths[:, None])[..., None]
  chex.assert_trees_all_close(jnp.where(valid, out, 0), jnp.where(valid, ref, 0),
                              atol=1e-5)


def test_stacked_rnn_equals_composed_layers_and_applies_dropout():
  x = _inputs(key=20)
  stack = rt.StackedRNN([rt.LSTMCell(HIDDEN), rt.GRUCell(4)], dropout_rate=0.5)
  variables = stack.init(jax.random.key(21), x, deterministic=True)
  params = variables["params"]
  h = rt.RNN(rt.LSTMCell(HIDDEN)).apply({"params": params["layers_0"]}, x)
  expected = rt.RNN(rt.GRUCell(4)).apply({"params": params["layers_1"]}, h)
  chex.assert_trees_all_close(stack.apply(variables, x, deterministic=True),
                              expected, atol=1e-6)
  # As flax's Dropout: with dropout, deterministic must be said.
  with pytest.raises(ValueError, match=r"deterministic: StackedRNN\(dropout"):
    stack.apply(variables, x)

  dropped = stack.apply(variables, x, deterministic=False,
                        rngs={"dropout": jax.random.key(22)})
  h_dropped = nn.Dropout(0.5).apply({}, h, deterministic=False,
                                    rngs={"dropout": jax.random.key(22)})
  del h_dropped  # the rng stream differs inside the stack; check the effect
  assert not np.allclose(dropped, expected)
  chex.assert_shape(dropped, (BATCH, TIME, 4))


def test_stacked_bidirectional_carry_per_layer():
  x = _inputs(key=23)
  stack = rt.StackedRNN([rt.SimpleRNNCell(HIDDEN)] * 2, bidirectional=True)
  variables = stack.init(jax.random.key(24), x)
  carries, outputs = stack.apply(variables, x, return_carry=True)
  chex.assert_shape(outputs, (BATCH, TIME, 2 * HIDDEN))
  assert len(carries) == 2 and all(len(c) == 2 for c in carries)
  # The two directions have separate parameters.
  layer = variables["params"]["layers_0"]
  assert not np.allclose(
      layer["forward_rnn"]["cell"]["recurrent_projection"]["kernel"],
      layer["backward_rnn"]["cell"]["recurrent_projection"]["kernel"])


@pytest.mark.parametrize("cell_cls", CELLS, ids=cell_ids)
def test_jit_vmap_grad_compose(cell_cls):
  x = _inputs(key=25, shape=(2, BATCH, TIME, FEATURES))
  layer = rt.RNN(cell_cls(HIDDEN))
  variables = layer.init(jax.random.key(26), x[0])
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(variables, x):
    return jnp.mean(jax.vmap(lambda xi: layer.apply(variables, xi))(x) ** 2)

  grads = jax.grad(loss)(variables, x)
  grads_again = jax.grad(loss)(variables, x + 1.0)  # no retrace
  def slice_loss(v, xi):
    return jnp.mean(layer.apply(v, xi) ** 2)
  per_slice = [jax.grad(slice_loss)(variables, x[i]) for i in range(2)]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, *per_slice)
  chex.assert_trees_all_close(grads, expected, atol=1e-6)
  chex.assert_tree_all_finite(grads_again)


@pytest.mark.parametrize("cell_cls", CELLS, ids=cell_ids)
def test_bfloat16_compute_runs_close_to_float32(cell_cls):
  x = _inputs(key=27)
  f32 = rt.RNN(cell_cls(HIDDEN))
  bf16 = rt.RNN(cell_cls(HIDDEN, dtype=jnp.bfloat16))
  variables = f32.init(jax.random.key(28), x)
  chex.assert_trees_all_equal_dtypes(
      bf16.init(jax.random.key(28), x), variables)  # params stay float32
  out = bf16.apply(variables, x.astype(jnp.bfloat16))
  chex.assert_tree_all_finite(out)
  chex.assert_trees_all_close(out.astype(jnp.float32), f32.apply(variables, x),
                              atol=5e-2)
  grads = jax.grad(lambda v: jnp.sum(
      bf16.apply(v, x.astype(jnp.bfloat16)).astype(jnp.float32)))(variables)
  chex.assert_tree_all_finite(grads)


def test_nnx_bridge_wraps_a_linen_rnn():
  from flax import nnx
  x = _inputs(key=29)
  linen_layer = rt.RNN(rt.LSTMCell(HIDDEN))
  model = nnx.bridge.ToNNX(linen_layer, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(model, x)
  out = model(x)
  params = nnx.state(model, nnx.Param)
  linen_params = jax.tree.map(lambda p: p, nnx.to_pure_dict(params))
  chex.assert_trees_all_close(out, linen_layer.apply({"params": linen_params}, x),
                              atol=1e-6)


class TestBadInput:
  layer = rt.RNN(rt.LSTMCell(HIDDEN))
  variables = layer.init(jax.random.key(0), _inputs())

  def test_wrong_rank(self):
    with pytest.raises(ValueError, match=r"inputs: expected rank 3 .*\(3, 5\)"):
      self.layer.apply(self.variables, jnp.ones((3, 5)))

  def test_feature_size_differs_from_params(self):
    with pytest.raises(ValueError, match=r"inputs: expected 5 features.*"
                       r"got shape \(3, (9, )?7\)"):
      self.layer.apply(self.variables, jnp.ones((3, 9, 7)))

  def test_integer_inputs(self):
    with pytest.raises(ValueError, match="inputs: expected a floating dtype"):
      self.layer.apply(self.variables, jnp.ones((3, 9, 5), jnp.int32))
    with pytest.raises(TypeError):  # DTypeError is both
      self.layer.apply(self.variables, jnp.ones((3, 9, 5), jnp.int32))

  def test_seq_lengths_shape_dtype_and_range(self):
    x = _inputs()
    with pytest.raises(ValueError, match=r"seq_lengths: expected shape "
                       r"\(batch,\) = \(3,\), got \(3, 1\)"):
      self.layer.apply(self.variables, x, seq_lengths=jnp.ones((3, 1), int))
    with pytest.raises(ValueError, match="seq_lengths: expected an integer"):
      self.layer.apply(self.variables, x, seq_lengths=jnp.ones((3,)))
    with pytest.raises(ValueError, match=r"seq_lengths: expected values in "
                       r"\[0, 9\].*max 10"):
      self.layer.apply(self.variables, x, seq_lengths=jnp.array([1, 2, 10]))

  def test_reset_and_initial_carry(self):
    x = _inputs()
    with pytest.raises(ValueError, match=r"reset: expected shape"):
      self.layer.apply(self.variables, x, reset=jnp.ones((3, 8), bool))
    with pytest.raises(ValueError, match="initial_carry: expected"):
      self.layer.apply(self.variables, x, initial_carry=jnp.zeros((3, HIDDEN)))

  def test_errors_are_raised_under_jit_before_tracing_reaches_xla(self):
    with pytest.raises(ValueError, match="inputs: expected rank 3"):
      jax.jit(self.layer.apply)(self.variables, jnp.ones((9, 5)))


def test_backbone_forget_bias_reaches_every_lstm_layer():
  config = rt.ModelConfig(backbone="lstm", num_layers=2, model_dim=6,
                          forget_bias=5.0)
  params = rt.build_backbone(config).init(
      jax.random.key(0), jnp.ones((1, 3, 6)))["params"]
  biases = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if "bias" in jax.tree_util.keystr(path)]
  assert len(biases) == 2
  for bias in biases:  # gates (i, f, g, o): f starts at the bias, others 0
    np.testing.assert_array_equal(bias[6:12], 5.0)
    np.testing.assert_array_equal(np.delete(bias, np.s_[6:12]), 0.0)


@pytest.mark.parametrize("kwargs", [dict(backbone="gru", forget_bias=3.0),
                                    dict(backbone="lstm", forget_bias="5"),
                                    dict(backbone="lstm",
                                         forget_bias=float("nan"))])
def test_forget_bias_is_validated(kwargs):
  with pytest.raises(ValueError, match="forget_bias"):
    rt.ModelConfig(model_dim=6, **kwargs)


@pytest.mark.parametrize("ours,theirs,flax_layers,extra", [
    (rt.LSTMCell, nn.LSTMCell, 8, {}),
    (rt.GRUCell, nn.GRUCell, 6, {"candidate_bias": (4,)}),
])
def test_fused_parameter_layout_differs_from_flax_by_design(
    ours, theirs, flax_layers, extra):
  # Our convention: two fused kernels, gates side by side; flax: one Dense
  # per gate and side. `params_from_flax` maps one onto the other.
  x = jnp.zeros((2, 3))
  gates = ours.num_gates
  our_params = ours(4).init(jax.random.key(0), ours(4).initialize_carry(
      jax.random.key(1), x.shape), x)["params"]
  assert jax.tree.map(jnp.shape, our_params) == {
      "input_projection": {"kernel": (3, gates * 4), "bias": (gates * 4,)},
      "recurrent_projection": {"kernel": (4, gates * 4)}, **extra}
  cell = theirs(4)
  flax_params = cell.init(jax.random.key(0), cell.initialize_carry(
      jax.random.key(1), x.shape), x)["params"]
  assert len(flax_params) == flax_layers
  mapped = rt.params_from_flax(ours, flax_params)
  assert jax.tree.map(jnp.shape, mapped) == jax.tree.map(jnp.shape,
                                                         our_params)
