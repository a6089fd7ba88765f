"""Bad arguments fail with errors that name the public argument.

Every case is a call a user could make; each must raise TypeError or
ValueError naming the argument, what was expected and what came, before any
XLA or tracer error can surface.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import kernels
import rnn_transformer as rt
from rnn_transformer.training import train_config

def test_model_config_takes_numpy_ints_and_dtype_names():
  config = rt.ModelConfig(model_dim=np.int64(32), dtype="bfloat16")
  assert config == rt.ModelConfig(model_dim=32, dtype=jnp.bfloat16)


@pytest.mark.parametrize("field,value,message", [
    ("model.num_layers", 0, r"config.model.num_layers: expected a positive "
     r"int, got 0"),
    ("model.dropout_rate", 1.5, r"config.model.dropout_rate: expected a "
     r"value in \[0, 1\)"),
    ("model.attention_impl", "flash", r"config.model.attention_impl: "
     r"expected one of"),
])
def test_training_config_errors_carry_the_full_path(field, value, message):
  config = train_config.task_config("copy", "transformer")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    train_config.validate(config)


@pytest.mark.parametrize("change, error, message", [
    (lambda c: setattr(c.train, "learning_rate", float("nan")), ValueError,
     r"config.train.learning_rate: expected a positive finite number"),
    (lambda c: setattr(c.train, "weight_decay", -1.0), ValueError,
     r"config.train.weight_decay: expected >= 0"),
    (lambda c: setattr(c.train, "grad_clip_norm", "1"), TypeError,
     r"config.train.grad_clip_norm: expected a number"),
    (lambda c: setattr(c, "seed", 1.5), TypeError,
     r"config.seed: expected an int"),
    (lambda c: setattr(c.train, "warmup_steps", 10.5), TypeError,
     r"config.train.warmup_steps: expected an int"),
    (lambda c: setattr(c.train, "progress_bar", "no"), TypeError,
     r"config.train.progress_bar: expected True or False"),
    (lambda c: delattr(c.train, "steps"), ValueError,
     r"config.train.steps: missing"),
    (lambda c: setattr(c, "train", None), TypeError,
     r"config.train: expected a section"),
    (lambda c: setattr(c.task, "params", None), TypeError,
     r"config.task.params: expected a ConfigDict"),
    (lambda c: setattr(c.task, "name", ["copy"]), ValueError,
     r"config.task.name: expected one of"),
])
def test_run_scalars_are_checked_by_path(change, error, message):
  """Fields the trainer reads as numbers, flags and sections: a broken
  value is named before anything compiles (type_safe=False lets a
  command-line override or a hand-built config change a field's type)."""
  config = ml_collections.ConfigDict(
      train_config.task_config("copy", "lstm").to_dict(), type_safe=False)
  change(config)
  with pytest.raises(error, match=message):
    train_config.validate(config)


@pytest.mark.parametrize("module", [
    lambda **kw: rt.LSTMCell(4, **kw),
    lambda **kw: rt.MultiHeadAttention(num_heads=2, **kw)])
def test_modules_refuse_unknown_dtype_names(module):
  with pytest.raises(ValueError, match=r"param_dtype: expected one of "
                     r"\('float32', 'bfloat16', 'float16'\), got 'bf16'"):
    module(param_dtype="bf16")
  with pytest.raises(ValueError, match=r"dtype: expected one of"):
    module(dtype="half-ish")
  module(dtype="bfloat16", param_dtype=jnp.float32)


def test_a_recurrent_cache_of_another_batch_is_a_named_error():
  model = rt.build_backbone(rt.ModelConfig(backbone="gru", vocab_size=5,
                                           model_dim=4))
  params = model.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))
  cache = rt.init_cache(model, batch=2)
  with pytest.raises(ValueError, match=r"inputs: batch 3 differs from the "
                     r"cache's batch 2"):
    model.apply({**params, "cache": cache}, jnp.zeros((3, 1), jnp.int32),
                decode=True, mutable=["cache"])


@pytest.mark.parametrize("cell,carry,message", [
    (rt.LSTMCell(4), jnp.zeros((2, 4)), r"carry: LSTMCell\(features=4\) "
     r"expects the pair \(c, h\) with shapes \(\(2, 4\), \(2, 4\)\)"),
    (rt.LSTMCell(4), (jnp.zeros((2, 4)), jnp.zeros((2, 5))),
     r"expects the pair \(c, h\)"),
    (rt.GRUCell(4), (jnp.zeros((2, 4)), jnp.zeros((2, 4))),
     r"carry: GRUCell\(features=4\) expects h with shapes \(2, 4\)"),
    (rt.SimpleRNNCell(4), jnp.zeros((3, 4)), r"expects h with shapes"),
])
def test_a_cell_called_directly_checks_its_carry(cell, carry, message):
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match=message):
    cell.init(jax.random.key(0), carry, x)


def test_a_cell_called_directly_with_its_carry_matches_the_rnn_layer():
  cell = rt.LSTMCell(4)
  x = jax.random.normal(jax.random.key(1), (2, 1, 3))
  rnn = rt.RNN(cell)
  variables = rnn.init(jax.random.key(0), x)
  carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
  _, y = cell.apply({"params": variables["params"]["cell"]}, carry, x[:, 0])
  np.testing.assert_allclose(y, rnn.apply(variables, x)[:, 0], rtol=1e-6)


def test_bidirectional_explains_its_carry_pair():
  layer = rt.Bidirectional(rt.RNN(rt.LSTMCell(4)), rt.RNN(rt.LSTMCell(4)))
  x = jnp.ones((2, 5, 3))
  carry = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"initial_carry: Bidirectional expects "
                     r"the pair \(forward_carry, backward_carry\)"):
    layer.init(jax.random.key(0), x, initial_carry=(carry, carry, carry))
  with pytest.raises(ValueError, match=r"initial_carry: expected the cell's "
                     r"carry structure"):
    layer.init(jax.random.key(0), x, initial_carry=carry)  # (h, h), not pairs


@pytest.mark.parametrize("make_and_call", [
    lambda x: rt.RNN(rt.GRUCell(4)).init(jax.random.key(0), x),
    lambda x: rt.StackedRNN([rt.LSTMCell(4)]).init(jax.random.key(0), x),
    lambda x: rt.MultiHeadAttention(num_heads=1).init(jax.random.key(0), x),
    lambda x: rt.build_backbone(rt.ModelConfig(
        model_dim=4, num_heads=1, output_size=2)).init(jax.random.key(0), x),
], ids=["rnn", "stacked", "attention", "transformer"])
def test_a_zero_length_time_axis_is_a_named_error(make_and_call):
  with pytest.raises(ValueError, match=r"inputs(_q)?: expected at least one "
                     r"time step, got shape \(2, 0, 3\)"):
    make_and_call(jnp.zeros((2, 0, 3)))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(num_heads="2"), TypeError, r"num_heads: expected an int, got str"),
    (dict(num_heads=2, dropout_rate=1.0), ValueError, r"dropout_rate"),
    (dict(num_heads=2, attention_impl="flash"), ValueError,
     r"attention_impl: expected one of"),
    (dict(num_heads=2, cache_len=0), ValueError, r"cache_len: expected a "
     r"positive int"),
])
def test_attention_module_refuses_bad_attributes(kwargs, error, message):
  with pytest.raises(error, match=message):
    rt.MultiHeadAttention(**kwargs)


def test_attention_module_names_inputs_kv_and_key_lengths():
  layer = rt.MultiHeadAttention(num_heads=2)
  q = jnp.ones((2, 3, 8))
  init = functools.partial(layer.init, jax.random.key(0))
  with pytest.raises(ValueError, match=r"inputs_kv: expected the batch of "
                     r"inputs_q \(2\), got shape \(3, 5, 8\)"):
    init(q, jnp.ones((3, 5, 8)))
  with pytest.raises(ValueError, match=r"key_lengths: expected values in "
                     r"\[0, 5\]"):
    init(q, jnp.ones((2, 5, 8)), key_lengths=jnp.array([5, 6]))


def test_backbones_name_lengths():
  for backbone in ("lstm", "transformer"):
    heads = {"num_heads": 1} if backbone == "transformer" else {}
    model = rt.build_backbone(rt.ModelConfig(
        backbone=backbone, vocab_size=5, model_dim=4, causal=False, **heads))
    with pytest.raises(ValueError, match=r"^lengths: expected values in "
                       r"\[0, 3\]"):
      model.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32),
                 lengths=jnp.array([1, 4]))


@pytest.mark.parametrize("lengths", [[-1, 4], [4, 9]])
def test_kernel_refuses_concrete_key_lengths_outside_kv_len(lengths):
  q = jnp.ones((2, 4, 1, 8))
  kv = jnp.ones((2, 8, 1, 8))
  with pytest.raises(ValueError, match=r"key_lengths must lie in \[0, "
                     r"kv_len=8\]"):
    kernels.attention(q, kv, kv, key_lengths=jnp.array(lengths),
                      implementation="reference")


def test_kernel_accepts_key_lengths_at_the_bounds():
  q = jax.random.normal(jax.random.key(0), (2, 4, 1, 8))
  kv = jax.random.normal(jax.random.key(1), (2, 8, 1, 8))
  out = kernels.attention(q, kv, kv, key_lengths=jnp.array([0, 8]),
                          implementation="reference")
  np.testing.assert_array_equal(out[0], 0.0)  # no key: zero rows
  np.testing.assert_allclose(
      out[1], kernels.attention(q, kv, kv, implementation="reference")[1],
      rtol=1e-6)


@pytest.mark.parametrize("content,message", [
    (None, r"config.task.params.path: no file at '.*missing.txt'"),
    ("", r"config.task.params.path: '.*empty.txt' is empty"),
])
def test_char_lm_names_a_missing_or_empty_path(content, message, tmp_path):
  name = "missing.txt" if content is None else "empty.txt"
  if content is not None:
    (tmp_path / name).write_text(content)
  config = train_config.task_config("char_lm", "lstm",
                                    path=str(tmp_path / name), seq_len=8)
  with pytest.raises(ValueError, match=message):
    train_config.validate(config)


_X = jnp.ones((2, 5, 3))


@pytest.mark.parametrize("call, error, message", [
    (lambda: rt.RNN(rt.LSTMCell(4)).init(
        jax.random.key(0), _X, seq_lengths=[5, 3]), TypeError,
     r"seq_lengths: expected an array, got list; wrap it in jnp.asarray"),
    (lambda: rt.RNN(rt.GRUCell(4)).init(
        jax.random.key(0), _X, reset=[[True] * 5] * 2), TypeError,
     r"reset: expected an array, got list"),
    (lambda: rt.MultiHeadAttention(2).init(
        jax.random.key(0), jnp.ones((2, 5, 4)), key_lengths=[5, 3]),
     TypeError, r"key_lengths: expected an array"),
    (lambda: rt.RNN(rt.LSTMCell(4)).init(jax.random.key(0), _X[..., :0]),
     ValueError, r"inputs: expected at least one feature"),
    (lambda: rt.MultiHeadAttention(2).init(
        jax.random.key(0), jnp.ones((2, 5, 0))), ValueError,
     r"inputs_q: expected at least one feature"),
    (lambda: rt.MultiHeadAttention(2, rope_base=-1.0), ValueError,
     r"rope_base: expected a positive finite number"),
    (lambda: rt.MultiHeadAttention(2, use_bias="no"), TypeError,
     r"use_bias: expected True or False"),
    (lambda: rt.RNN(rt.LSTMCell(4)).init(
        jax.random.key(0), _X, return_carry=1), TypeError,
     r"return_carry: expected True or False"),
])
def test_layer_arguments_are_named(call, error, message):
  with pytest.raises(error, match=message):
    call()
