"""Every public name, fed a table of bad inputs, raises a named error.

`CASES[name]` lists calls a user could make with a wrong rank, dtype, shape,
sign, type or unknown option; each must raise `ValueError` or `TypeError`
(the library's `DTypeError` is both) whose message names the argument the
caller wrote, before any XLA, tracer or flax scope error can surface.
`test_every_public_name_has_a_row` fails when a name is added to
`rnn_transformer.__all__` or `kernels.__all__` without rows here (or a
reason in `NO_INPUTS`), so the table grows with the API.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import kernels
import rnn_transformer as rt

KEY = jax.random.key(0)
X = jnp.ones((2, 5, 3), jnp.float32)  # (batch, time, features)


def _init(module, *args, **kwargs):
  return module.init(KEY, *args, **kwargs)


def _init_apply(module, *args, **kwargs):
  """Initialises on `args` and applies to the same arguments."""
  variables = module.init(KEY, *args, **kwargs)
  return module.apply(variables, *args, **kwargs)


def _lm(**fields):
  return rt.TransformerLM(rt.ModelConfig(vocab_size=11, model_dim=8,
                                         num_heads=2, num_layers=1,
                                         max_len=16, **fields))


TOKENS = jnp.ones((2, 6), jnp.int32)
ONE_DEVICE_MESH = jax.sharding.Mesh(jax.devices()[:1], ("data",))


def _lm_params():
  return _lm().init(KEY, TOKENS)["params"]


def _rnn_variables(cell, x=X):
  return rt.RNN(cell).init(KEY, x)


def _newton_rnn_without_params_key():
  cell = rt.SimpleRNNCell(4)
  variables = rt.RNN(cell).init(KEY, X)["params"]
  return rt.newton_rnn(cell, variables["cell"], X)


def _newton_rnn_rank_2():
  cell = rt.GRUCell(4)
  variables = {"params": rt.RNN(cell).init(KEY, X)["params"]["cell"]}
  return rt.newton_rnn(cell, variables, X[0])


def _step(carry, x):
  return jnp.tanh(carry + x)


A = jnp.full((2, 5, 3), 0.5, jnp.float32)  # (batch, time, state)


def _cell_rows(cell_type):
  return [
      ("features zero", lambda: cell_type(features=0), ValueError,
       "features"),
      ("features negative", lambda: cell_type(features=-3), ValueError,
       "features"),
      ("features float", lambda: cell_type(features=2.5), TypeError,
       "features"),
      ("features str", lambda: cell_type(features="8"), TypeError,
       "features"),
      ("dtype unknown", lambda: cell_type(features=4, dtype="int8"),
       ValueError, "dtype"),
      ("param_dtype unknown",
       lambda: cell_type(features=4, param_dtype="float64"), ValueError,
       "param_dtype"),
      ("integer inputs",
       lambda: _init(rt.RNN(cell_type(4)), jnp.ones((2, 5, 3), jnp.int32)),
       TypeError, "inputs"),
  ]


CASES = {
    "SimpleRNNCell": _cell_rows(rt.SimpleRNNCell),
    "LSTMCell": _cell_rows(rt.LSTMCell) + [
        ("carry of another width",
         lambda: _init(rt.LSTMCell(4), (jnp.zeros((2, 5)), jnp.zeros((2, 4))),
                       X[:, 0]), ValueError, "carry"),
    ],
    "GRUCell": _cell_rows(rt.GRUCell) + [
        ("carry as a tuple", lambda: _init(
            rt.GRUCell(4), (jnp.zeros((2, 4)), jnp.zeros((2, 4))), X[:, 0]),
         (TypeError, ValueError), "carry"),
    ],
    "FusedGateCell": [
        ("the abstract base",
         lambda: _init(rt.RNN(rt.FusedGateCell(4)), X), TypeError,
         "FusedGateCell"),
    ],
    "MinGRU": _cell_rows(rt.MinGRU) + [
        ("log_space not a bool", lambda: rt.MinGRU(4, log_space="yes"),
         TypeError, "log_space"),
    ],
    "MinLSTM": _cell_rows(rt.MinLSTM) + [
        ("log_space not a bool", lambda: rt.MinLSTM(4, log_space=1),
         TypeError, "log_space"),
    ],
    "LRU": _cell_rows(rt.LRU) + [
        ("state_size zero", lambda: rt.LRU(4, state_size=0), ValueError,
         "state_size"),
        ("state_size float", lambda: rt.LRU(4, state_size=2.0), TypeError,
         "state_size"),
        ("r_min above r_max", lambda: rt.LRU(4, r_min=0.9, r_max=0.5),
         ValueError, "r_min"),
        ("r_max above 1", lambda: rt.LRU(4, r_max=1.5), ValueError, "r_max"),
        ("max_phase zero", lambda: rt.LRU(4, max_phase=0.0), ValueError,
         "max_phase"),
        ("max_phase str", lambda: rt.LRU(4, max_phase="pi"), TypeError,
         "max_phase"),
    ],
    "LinearRecurrentCell": [
        ("the abstract base",
         lambda: _init(rt.RNN(rt.LinearRecurrentCell(4)), X), TypeError,
         "LinearRecurrentCell"),
    ],
    "params_from_flax": [
        ("not a cell type", lambda: rt.params_from_flax(nn.LSTMCell, {}),
         ValueError, "cell_type"),
        ("a linear cell", lambda: rt.params_from_flax(rt.MinGRU, {}),
         ValueError, "cell_type"),
        ("missing gates", lambda: rt.params_from_flax(
            rt.LSTMCell, {"ii": {}}), ValueError, "flax_params"),
        ("with the params prefix", lambda: rt.params_from_flax(
            rt.GRUCell, nn.GRUCell(4).init(KEY, jnp.zeros((2, 4)),
                                           jnp.zeros((2, 3)))),
         ValueError, "flax_params"),
        ("one gate of another width", lambda: rt.params_from_flax(
            rt.SimpleRNNCell, {"i": {"kernel": jnp.ones((3, 4)),
                                     "bias": jnp.ones((4,))},
                               "h": {"kernel": jnp.ones((5, 5))}}),
         ValueError, "flax_params: expected SimpleRNNCell parameters of one"),
    ],
    "RNN": [
        ("scan_method unknown",
         lambda: _init(rt.RNN(rt.MinGRU(4), scan_method="fast"), X),
         ValueError, "scan_method"),
        ("cell not a cell", lambda: _init(rt.RNN(nn.Dense(4)), X), TypeError,
         "cell"),
        ("inputs rank 2", lambda: _init(rt.RNN(rt.LSTMCell(4)), X[0]),
         ValueError, "inputs"),
        ("inputs empty time", lambda: _init(rt.RNN(rt.LSTMCell(4)),
                                            X[:, :0]), ValueError, "inputs"),
        ("seq_lengths shape", lambda: _init(
            rt.RNN(rt.LSTMCell(4)), X, seq_lengths=jnp.array([1, 2, 3])),
         ValueError, "seq_lengths"),
        ("seq_lengths float", lambda: _init(
            rt.RNN(rt.LSTMCell(4)), X, seq_lengths=jnp.array([1.0, 2.0])),
         TypeError, "seq_lengths"),
        ("seq_lengths beyond time", lambda: _init(
            rt.RNN(rt.LSTMCell(4)), X, seq_lengths=jnp.array([1, 9])),
         ValueError, "seq_lengths"),
        ("unroll zero", lambda: _init(rt.RNN(rt.LSTMCell(4), unroll=0), X),
         ValueError, "unroll"),
        ("evaluation unknown",
         lambda: _init(rt.RNN(rt.LSTMCell(4), evaluation="deer"), X),
         ValueError, "evaluation"),
        ("unknown newton option", lambda: rt.RNN(
            rt.GRUCell(4), evaluation="newton", newton={"iters": 3}),
         TypeError, "newton"),
        ("newton options with evaluation scan",
         lambda: _init(rt.RNN(rt.GRUCell(4), newton={"method": "quasi"}), X),
         ValueError, "newton"),
        ("reverse not a bool",
         lambda: _init(rt.RNN(rt.LSTMCell(4), reverse="yes"), X), TypeError,
         "reverse"),
    ],
    "Bidirectional": [
        ("cells instead of RNN layers", lambda: _init(
            rt.Bidirectional(rt.LSTMCell(4), rt.LSTMCell(4)), X), TypeError,
         "forward_rnn"),
        ("backward not an RNN", lambda: _init(
            rt.Bidirectional(rt.RNN(rt.LSTMCell(4)), nn.Dense(4)), X),
         TypeError, "backward_rnn"),
        ("merge_fn not callable", lambda: _init(
            rt.Bidirectional(rt.RNN(rt.LSTMCell(4)), rt.RNN(rt.LSTMCell(4)),
                             merge_fn="concat"), X), TypeError, "merge_fn"),
        ("inputs rank 2", lambda: _init(
            rt.Bidirectional(rt.RNN(rt.LSTMCell(4)), rt.RNN(rt.LSTMCell(4))),
            X[0]), ValueError, "inputs"),
    ],
    "StackedRNN": [
        ("no cells", lambda: _init(rt.StackedRNN([]), X), ValueError,
         "cells"),
        ("a layer instead of a cell",
         lambda: _init(rt.StackedRNN([rt.RNN(rt.LSTMCell(4))]), X),
         TypeError, "cells"),
        ("dropout_rate above 1", lambda: _init(
            rt.StackedRNN([rt.LSTMCell(4)], dropout_rate=1.5), X),
         ValueError, "dropout_rate"),
        ("scan_method unknown", lambda: _init(
            rt.StackedRNN([rt.MinGRU(4)], scan_method="fast"), X),
         ValueError, "scan_method"),
        ("dropout without deterministic", lambda: _init(
            rt.StackedRNN([rt.LSTMCell(4)] * 2, dropout_rate=0.5), X),
         ValueError, "deterministic: StackedRNN"),
        ("deterministic not a bool", lambda: _init(
            rt.StackedRNN([rt.LSTMCell(4)]), X, deterministic="yes"),
         TypeError, "deterministic"),
        ("inputs rank 4", lambda: _init(rt.StackedRNN([rt.LSTMCell(4)]),
                                        X[None]), ValueError, "inputs"),
    ],
    "MultiHeadAttention": [
        ("num_heads zero", lambda: rt.MultiHeadAttention(num_heads=0),
         ValueError, "num_heads"),
        ("num_kv_heads not dividing", lambda: _init(
            rt.MultiHeadAttention(num_heads=4, num_kv_heads=3),
            jnp.ones((2, 5, 8))), ValueError, "num_kv_heads"),
        ("dropout_rate 2", lambda: rt.MultiHeadAttention(2, dropout_rate=2.0),
         ValueError, "dropout_rate"),
        ("dropout without deterministic", lambda: _init(
            rt.MultiHeadAttention(2, dropout_rate=0.1), jnp.ones((2, 5, 8))),
         ValueError, "deterministic: MultiHeadAttention"),
        ("attention_impl unknown",
         lambda: rt.MultiHeadAttention(2, attention_impl="flash"),
         ValueError, "attention_impl"),
        ("window negative", lambda: _init(
            rt.MultiHeadAttention(2, window=(-1, 0)), jnp.ones((2, 5, 8))),
         ValueError, "window"),
        ("softcap negative", lambda: _init(
            rt.MultiHeadAttention(2, softcap=-1.0), jnp.ones((2, 5, 8))),
         ValueError, "softcap"),
        ("inputs_q rank 2", lambda: _init(rt.MultiHeadAttention(2),
                                          jnp.ones((5, 8))), ValueError,
         "inputs_q"),
        ("inputs_q integer", lambda: _init(rt.MultiHeadAttention(2),
                                           jnp.ones((2, 5, 8), jnp.int32)),
         TypeError, "inputs_q"),
        ("features not divisible by heads", lambda: _init(
            rt.MultiHeadAttention(3), jnp.ones((2, 5, 8))), ValueError,
         "heads"),
        ("rotary positions of the wrong shape", lambda: _init(
            rt.MultiHeadAttention(2, rotary=True), jnp.ones((2, 5, 8)),
            positions=jnp.arange(4)), ValueError, "positions"),
        ("rotary positions of the wrong rank", lambda: _init(
            rt.MultiHeadAttention(2, rotary=True), jnp.ones((2, 5, 8)),
            positions=jnp.zeros((2, 5, 1), jnp.int32)), ValueError,
         "positions"),
    ],
    "LearnedPositionEmbedding": [
        ("max_len zero", lambda: rt.LearnedPositionEmbedding(0, 8),
         ValueError, "max_len"),
        ("features str", lambda: rt.LearnedPositionEmbedding(8, "8"),
         TypeError, "features"),
        ("positions float", lambda: _init(rt.LearnedPositionEmbedding(8, 4),
                                          jnp.ones((5,))), TypeError,
         "positions"),
    ],
    "ModelConfig": [
        ("num_layers='2'", lambda: rt.ModelConfig(num_layers="2"),
         TypeError, "num_layers: "),
        ("num_layers=2.0", lambda: rt.ModelConfig(num_layers=2.0),
         TypeError, "num_layers: "),
        ("model_dim=0", lambda: rt.ModelConfig(model_dim=0),
         ValueError, "model_dim: "),
        ("num_heads=-1", lambda: rt.ModelConfig(num_heads=-1),
         ValueError, "num_heads: "),
        ("num_kv_heads='2'", lambda: rt.ModelConfig(num_kv_heads="2"),
         TypeError, "num_kv_heads: "),
        ("max_len=True", lambda: rt.ModelConfig(max_len=True),
         TypeError, "max_len: "),
        ("vocab_size=0", lambda: rt.ModelConfig(vocab_size=0),
         ValueError, "vocab_size: "),
        ("dropout_rate=1.0", lambda: rt.ModelConfig(dropout_rate=1.0),
         ValueError, "dropout_rate: "),
        ("dropout_rate='0.1'", lambda: rt.ModelConfig(dropout_rate="0.1"),
         TypeError, "dropout_rate: "),
        ("dtype='bf16'", lambda: rt.ModelConfig(dtype="bf16"),
         ValueError, "dtype: "),
        ("param_dtype='float64'", lambda: rt.ModelConfig(param_dtype="float64"),
         ValueError, "param_dtype: "),
        ("attention_impl='flash'", lambda: rt.ModelConfig(attention_impl="flash"),
         ValueError, "attention_impl: "),
        ("causal=1", lambda: rt.ModelConfig(causal=1),
         TypeError, "causal: "),
        ("backbone unknown", lambda: rt.ModelConfig(backbone="mamba"),
         ValueError, "backbone"),
        ("num_layers zero", lambda: rt.ModelConfig(num_layers=0), ValueError,
         "num_layers"),
        ("attention_window on a recurrent backbone",
         lambda: rt.ModelConfig(backbone="lstm", attention_window=8),
         ValueError, "attention_window"),
        ("newton_method with evaluation scan",
         lambda: rt.ModelConfig(backbone="gru", newton_method="quasi"),
         ValueError, "newton_method"),
        ("num_heads on a recurrent backbone",
         lambda: rt.ModelConfig(backbone="lstm", num_heads=8), ValueError,
         "num_heads"),
        ("forget_bias on the transformer",
         lambda: rt.ModelConfig(backbone="transformer", forget_bias=5.0),
         ValueError, "forget_bias"),
    ],
    "TransformerBlock": [
        ("config a dict", lambda: _init(rt.TransformerBlock({"model_dim": 8}),
                                        jnp.ones((2, 5, 8))), TypeError,
         "config"),
        ("x rank 2", lambda: _init(
            rt.TransformerBlock(rt.ModelConfig(model_dim=8, num_heads=2)),
            jnp.ones((5, 8))), ValueError, "x"),
    ],
    "TransformerEncoder": [
        ("config a dict", lambda: _init(rt.TransformerEncoder({}),
                                        jnp.ones((2, 5, 8))), TypeError,
         "config"),
        ("inputs rank 2", lambda: _init(
            rt.TransformerEncoder(rt.ModelConfig(model_dim=8, num_heads=2,
                                                 causal=False)),
            jnp.ones((5, 8))), ValueError, "inputs"),
    ],
    "TransformerLM": [
        ("config a dict", lambda: _init(rt.TransformerLM({}), TOKENS),
         TypeError, "config"),
        ("float tokens", lambda: _init(_lm(), jnp.ones((2, 6))), TypeError,
         "inputs"),
        ("tokens rank 3", lambda: _init(_lm(), TOKENS[..., None]), ValueError,
         "inputs"),
        ("longer than max_len", lambda: _init(
            _lm(), jnp.ones((1, 17), jnp.int32)), ValueError, "max_len"),
        ("lengths with decode", lambda: _init(
            _lm(), TOKENS, lengths=jnp.array([1, 2]), decode=True),
         ValueError, "lengths"),
    ],
    "RecurrentBackbone": [
        ("a transformer config", lambda: _init(
            rt.RecurrentBackbone(rt.ModelConfig(backbone="transformer")), X),
         ValueError, "backbone"),
        ("config a dict", lambda: _init(rt.RecurrentBackbone({}), X),
         TypeError, "config"),
        ("lengths float", lambda: _init(
            rt.RecurrentBackbone(rt.ModelConfig(backbone="lstm",
                                                model_dim=8, output_size=2)),
            X, lengths=jnp.array([1.0, 2.0])), TypeError, "lengths"),
    ],
    "build_backbone": [
        ("unknown field", lambda: rt.build_backbone({"widht": 8}), ValueError,
         "widht"),
        ("not a config", lambda: rt.build_backbone("lstm"), TypeError,
         "config"),
    ],
    "flip_sequences": [
        ("x rank 1", lambda: rt.flip_sequences(jnp.ones(5), None),
         ValueError, "x"),
        ("seq_lengths shape", lambda: rt.flip_sequences(
            X, jnp.array([1, 2, 3])), ValueError, "seq_lengths"),
    ],
    "generate": [
        ("max_new_tokens negative", lambda: rt.generate(
            _lm(), _lm_params(), TOKENS, -1), ValueError, "max_new_tokens"),
        ("temperature negative", lambda: rt.generate(
            _lm(), _lm_params(), TOKENS, 2, temperature=-1.0), ValueError,
         "temperature"),
        ("top_k zero", lambda: rt.generate(
            _lm(), _lm_params(), TOKENS, 2, temperature=1.0, top_k=0,
            rng=0), ValueError, "top_k"),
        ("float prompt", lambda: rt.generate(
            _lm(), _lm_params(), jnp.ones((2, 6)), 2), TypeError, "prompt"),
        ("prompt rank 1", lambda: rt.generate(
            _lm(), _lm_params(), TOKENS[0], 2), ValueError, "prompt"),
        ("beyond max_len", lambda: rt.generate(
            _lm(), _lm_params(), TOKENS, 11), ValueError, "max_new_tokens"),
    ],
    "init_cache": [
        ("batch zero", lambda: rt.init_cache(_lm(), 0), ValueError, "batch"),
        ("cache_len beyond max_len", lambda: rt.init_cache(_lm(), 2, 17),
         ValueError, "cache_len"),
        ("not a decoder", lambda: rt.init_cache(nn.Dense(3), 2), ValueError,
         "model"),
    ],
    "linear_scan": [
        ("a and b shapes differ", lambda: rt.linear_scan(A, A[..., :2]),
         ValueError, "b"),
        ("method unknown", lambda: rt.linear_scan(A, A, method="fast"),
         ValueError, "method"),
        ("chunk_size zero", lambda: rt.linear_scan(
            A, A, method="chunked", chunk_size=0), ValueError, "chunk_size"),
        ("integer a", lambda: rt.linear_scan(A.astype(jnp.int32), A),
         TypeError, "a"),
        ("a rank 1", lambda: rt.linear_scan(A[0, 0], A[0, 0]), ValueError,
         "a"),
        ("initial_carry shape", lambda: rt.linear_scan(
            A, A, initial_carry=jnp.zeros((2, 4))), ValueError,
         "initial_carry"),
        ("reset shape", lambda: rt.linear_scan(
            A, A, reset=jnp.zeros((2, 4), bool)), ValueError, "reset"),
    ],
    "log_linear_scan": [
        ("shapes differ", lambda: rt.log_linear_scan(A, A[:, :3]),
         ValueError, "log_b"),
        ("method unknown", lambda: rt.log_linear_scan(A, A, method="fast"),
         ValueError, "method"),
        ("log_initial_carry shape", lambda: rt.log_linear_scan(
            A, A, log_initial_carry=jnp.zeros((3,))), ValueError,
         "log_initial_carry"),
    ],
    "linear_recurrence": [
        ("default_method of an unknown backend",
         lambda: rt.linear_recurrence.default_method("tpu9"), ValueError,
         "backend"),
    ],
    "newton_rnn": [
        ("variables without the params key", _newton_rnn_without_params_key,
         ValueError, "variables"),
        ("inputs rank 2", _newton_rnn_rank_2, ValueError, "inputs"),
        ("unknown option", lambda: rt.newton_rnn(
            rt.GRUCell(4),
            {"params": _rnn_variables(rt.GRUCell(4))["params"]["cell"]},
            X, colour="red"), TypeError, "colour"),
        ("a layer instead of a cell", lambda: rt.newton_rnn(
            rt.RNN(rt.GRUCell(4)), {"params": {}}, X), TypeError, "cell"),
        ("empty time", lambda: rt.newton_rnn(
            rt.GRUCell(4),
            {"params": _rnn_variables(rt.GRUCell(4))["params"]["cell"]},
            X[:, :0]), ValueError, "inputs"),
    ],
    "newton_scan": [
        ("method unknown", lambda: rt.newton_scan(
            _step, A, jnp.zeros((2, 3)), method="fast"), ValueError,
         "method"),
        ("max_iters zero", lambda: rt.newton_scan(
            _step, A, jnp.zeros((2, 3)), max_iters=0), ValueError,
         "max_iters"),
        ("tol negative", lambda: rt.newton_scan(
            _step, A, jnp.zeros((2, 3)), tol=-1.0), ValueError, "tol"),
        ("on_failure unknown", lambda: rt.newton_scan(
            _step, A, jnp.zeros((2, 3)), on_failure="ignore"), ValueError,
         "on_failure"),
        ("inputs rank 1", lambda: rt.newton_scan(
            _step, A[0, 0], jnp.zeros((3,))), ValueError, "inputs"),
        ("tol inf", lambda: rt.newton_scan(
            _step, A, jnp.zeros((2, 3)), tol=float("inf")), ValueError,
         "tol"),
        ("reset_carry int", lambda: rt.newton_scan(
            _step, A, jnp.zeros((2, 3)),
            reset_carry=jnp.zeros((2, 3), jnp.int32)), TypeError,
         "reset_carry"),
        ("step changes the carry dtype", lambda: rt.newton_scan(
            lambda c, x: (jnp.tanh(c + x).astype(jnp.bfloat16), x), A,
            jnp.zeros((2, 3))), TypeError, "step"),
        ("step returns no output", lambda: rt.newton_scan(
            lambda c, x: (jnp.tanh(c + x), None), A, jnp.zeros((2, 3))),
         TypeError, "step"),
        ("empty time", lambda: rt.newton_scan(
            _step, A[:, :0], jnp.zeros((2, 3))), ValueError, "inputs"),
    ],
    "newton_recurrence": [
        ("newton_scan through the module", lambda:
         rt.newton_recurrence.newton_scan(_step, A, jnp.zeros((2, 3)),
                                          method="fast"), ValueError,
         "method"),
    ],
    "rotary_position_embedding": [
        ("odd features", lambda: rt.rotary_position_embedding(
            jnp.ones((2, 5, 2, 3)), jnp.arange(5)), ValueError, "x"),
        ("positions shape", lambda: rt.rotary_position_embedding(
            jnp.ones((2, 5, 2, 4)), jnp.arange(4)), ValueError, "positions"),
        ("base zero", lambda: rt.rotary_position_embedding(
            jnp.ones((2, 5, 2, 4)), jnp.arange(5), base=0.0), ValueError,
         "base"),
    ],
    "sinusoidal_position_encoding": [
        ("features zero", lambda: rt.sinusoidal_position_encoding(
            jnp.arange(5), 0), ValueError, "features"),
        ("features odd", lambda: rt.sinusoidal_position_encoding(
            jnp.arange(5), 7), ValueError, "features"),
        ("max_timescale zero", lambda: rt.sinusoidal_position_encoding(
            jnp.arange(5), 8, max_timescale=0.0), ValueError,
         "max_timescale"),
    ],
    "spectral_radius": [
        ("not square", lambda: rt.spectral_radius(jnp.ones((3, 4))),
         ValueError, "matrix"),
        ("rank 1", lambda: rt.spectral_radius(jnp.ones(3)), ValueError,
         "matrix"),
        ("empty", lambda: rt.spectral_radius(jnp.ones((0, 0))), ValueError,
         "matrix"),
        ("nan", lambda: rt.spectral_radius(jnp.full((2, 2), jnp.nan)),
         ValueError, "matrix"),
        ("inf in a batch", lambda: rt.spectral_radius(
            jnp.stack([jnp.eye(2), jnp.full((2, 2), jnp.inf)])), ValueError,
         "matrix"),
    ],
    "gradient_flow": [
        ("inputs rank 2",
         lambda: rt.gradient_flow.rnn_hidden_state_gradient_norms(
             rt.RNN(rt.SimpleRNNCell(4)), _rnn_variables(rt.SimpleRNNCell(4)),
             X[0], jnp.sum), ValueError, "inputs"),
        ("perturbation_shape rank 2",
         lambda: rt.gradient_flow.hidden_state_gradient_norms(
             jnp.sum, (2, 5)), ValueError, "perturbation_shape"),
    ],
    "initializers": [
        ("orthogonal scale negative",
         lambda: rt.initializers.orthogonal(scale=-1.0), ValueError,
         "scale"),
        ("identity scale str", lambda: rt.initializers.identity("1"),
         TypeError, "scale"),
        ("gaussian radius zero",
         lambda: rt.initializers.gaussian_spectral_radius(0.0), ValueError,
         "radius"),
    ],
    "stack_block_params": [
        ("no blocks", lambda: rt.stack_block_params({"embed": {}}),
         ValueError, "params"),
        ("None", lambda: rt.stack_block_params(None), TypeError, "params"),
        ("blocks of different shapes", lambda: rt.stack_block_params(
            {"blocks_0": {"w": jnp.ones(2)}, "blocks_1": {"w": jnp.ones(3)}}),
         ValueError, "params"),
    ],
    "unstack_block_params": [
        ("no stacked blocks", lambda: rt.unstack_block_params({"embed": {}}),
         ValueError, "params"),
        ("empty blocks", lambda: rt.unstack_block_params({"blocks": {}}),
         ValueError, "params"),
        ("None", lambda: rt.unstack_block_params(None), TypeError, "params"),
        ("layer axes differ", lambda: rt.unstack_block_params(
            {"blocks": {"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}}),
         ValueError, "params"),
    ],
    "attention": [
        ("q rank 3", lambda: kernels.attention(
            jnp.ones((2, 5, 8)), jnp.ones((2, 5, 8)), jnp.ones((2, 5, 8))),
         ValueError, "q"),
        ("k head dim differs", lambda: kernels.attention(
            jnp.ones((2, 5, 2, 8)), jnp.ones((2, 5, 2, 4)),
            jnp.ones((2, 5, 2, 8))), ValueError, "k"),
        ("dtypes differ", lambda: kernels.attention(
            jnp.ones((2, 5, 2, 8)), jnp.ones((2, 5, 2, 8), jnp.bfloat16),
            jnp.ones((2, 5, 2, 8))), TypeError, "k"),
        ("integer q", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8), jnp.int32)] * 3), TypeError, "q"),
        ("implementation unknown", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, implementation="flash"),
         ValueError, "implementation"),
        ("causal not a bool", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, causal="yes"), TypeError,
         "causal"),
        ("softcap zero", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, softcap=0.0), ValueError,
         "softcap"),
        ("window of three", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, window=(1, 2, 3)), ValueError,
         "window"),
        ("key_lengths shape", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, key_lengths=jnp.array([1, 2, 3])),
         ValueError, "key_lengths"),
        ("q_offset shape", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, q_offset=jnp.array([1, 2, 3])),
         ValueError, "q_offset"),
        ("q_offset float", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, q_offset=jnp.ones((2,))),
         TypeError, "q_offset"),
        ("q_offset through xla", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, q_offset=jnp.ones((2,), jnp.int32),
            implementation="xla"), ValueError, "q_offset"),
        ("context_layout without context_axis", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, context_layout="zigzag"),
         ValueError, "context_layout"),
        ("mesh not a Mesh", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, mesh="data", batch_axes="data"),
         TypeError, "mesh"),
        ("batch_axes not a mesh axis", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, mesh=ONE_DEVICE_MESH,
            batch_axes="rows"), ValueError, "batch_axes"),
        ("the same axis for batch and heads", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, mesh=ONE_DEVICE_MESH,
            batch_axes="data", head_axes="data"), ValueError, "head_axes"),
        ("scale str", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, scale="0.1"), TypeError, "scale"),
        ("scale nan", lambda: kernels.attention(
            *[jnp.ones((2, 5, 2, 8))] * 3, scale=float("nan")), ValueError,
         "scale"),
    ],
    "to_zigzag": [
        ("length not divisible", lambda: kernels.to_zigzag(
            jnp.ones((1, 6, 2)), 2), ValueError, "x"),
        ("devices zero", lambda: kernels.to_zigzag(jnp.ones((1, 8)), 0),
         ValueError, "devices"),
        ("axis out of range", lambda: kernels.to_zigzag(
            jnp.ones((1, 8)), 2, axis=3), ValueError, "axis"),
    ],
    "from_zigzag": [
        ("length not divisible", lambda: kernels.from_zigzag(
            jnp.ones((1, 6, 2)), 2), ValueError, "x"),
        ("devices a float", lambda: kernels.from_zigzag(
            jnp.ones((1, 8)), 2.0), ValueError, "devices"),
    ],
    "cuda_compute_capability": [
        ("capability str", lambda: kernels.cuda_compute_capability(
            "90").__enter__(), TypeError, "capability"),
        ("capability zero", lambda: kernels.cuda_compute_capability(
            0).__enter__(), ValueError, "capability"),
    ],
    "triton_interpret": [
        ("enabled str", lambda: kernels.triton_interpret("yes").__enter__(),
         TypeError, "enabled"),
    ],
}

# Public names that take no input a user could get wrong, with the reason.
NO_INPUTS = {
    "BackboneOutput": "a result container the backbones return",
    "NewtonInfo": "a result container newton_rnn/newton_scan return",
    "DTypeError": "the error class itself",
    "COMPUTE_CAPABILITY_ENV": "a constant (an environment variable's name)",
    "INTERPRET_ENV": "a constant (an environment variable's name)",
    "IMPLEMENTATIONS": "a constant (the implementation names)",
    "XLA_SCORE_BYTES_LIMIT": "a constant (bytes)",
}

ROWS = [pytest.param(thunk, error, name_in_message, id=f"{name}: {label}")
        for name, rows in CASES.items()
        for label, thunk, error, name_in_message in rows]


def test_every_public_name_has_a_row():
  public = set(rt.__all__) | set(kernels.__all__)
  missing = sorted(public - set(CASES) - set(NO_INPUTS))
  assert not missing, f"public names without bad-input rows: {missing}"
  stale = sorted((set(CASES) | set(NO_INPUTS)) - public)
  assert not stale, f"rows for names that are not public: {stale}"


@pytest.mark.parametrize("thunk,error,name_in_message", ROWS)
def test_bad_input_raises_a_named_error(thunk, error, name_in_message):
  with pytest.raises(error) as raised:
    thunk()
  assert isinstance(raised.value, (TypeError, ValueError))
  message = str(raised.value)
  assert name_in_message in message, message
  # ... and says what it expected (or what it cannot take).
  assert re.search(r"expect|must|only|needs|unknown|abstract|exceeds|"
                   r"not supported|builds",
                   message), message
  # Raised by the library (or flax's dataclass constructor naming the
  # field), never from inside XLA or a tracer.
  assert "Traced<" not in message and "XlaRuntimeError" not in message, (
      message)
