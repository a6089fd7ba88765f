"""Forward+backward time of our recurrent layers against flax.linen.RNN.

Used by scripts/bench_recurrent.py. Every variant runs the same sizes in one
process on one device, jitted, timed after compilation; the table reports
each variant's time and `flax / ours` (> 1 means ours is faster).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rnn_transformer import benchmarking
from rnn_transformer.cells import GRUCell, LSTMCell, SimpleRNNCell
from rnn_transformer.recurrent import RNN

# cell name -> (our cell, flax's fastest equivalent cell)
CELLS: dict[str, tuple[type, type]] = {
    "rnn": (SimpleRNNCell, nn.SimpleCell),
    "lstm": (LSTMCell, nn.OptimizedLSTMCell),
    "gru": (GRUCell, nn.GRUCell),
}


def forward_backward(apply: Callable[..., jax.Array]) -> Callable[..., Any]:
  """jit(grad) of a scalar loss of the outputs w.r.t. params and inputs.

  `apply(params, x)` returns the outputs; the loss is their mean square, so
  the backward pass runs through every output step.
  """
  def loss(params, x):
    return jnp.mean(apply(params, x).astype(jnp.float32) ** 2)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _layer_variant(layer: nn.Module, x: jax.Array) -> Callable[..., Any]:
  params = layer.init(jax.random.key(0), x)
  step = forward_backward(layer.apply)
  return lambda: step(params, x)


def _cudnn_lstm_variant(config, x: jax.Array) -> Callable[..., Any]:
  """jax.experimental.rnn's cuDNN LSTM (GPU only)."""
  from jax.experimental import rnn as cudnn_rnn  # pylint: disable=g-import-not-at-top
  batch = x.shape[0]
  weights = cudnn_rnn.init_lstm_weight(jax.random.key(0), config.input_size,
                                       config.hidden_size, 1, False)
  zeros = jnp.zeros((1, batch, config.hidden_size), x.dtype)
  lengths = jnp.full((batch,), config.time, jnp.int32)

  def apply(weights, x):
    outputs, _, _ = cudnn_rnn.lstm(x, zeros, zeros, weights, lengths,
                                   config.input_size, config.hidden_size, 1,
                                   0.0, False)
    return outputs
  step = forward_backward(apply)
  return lambda: step(weights.astype(x.dtype), x)


def run(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Times every variant of every cell in `config.cells`; one row each."""
  dtype = jnp.dtype(config.dtype)
  x = jax.random.normal(jax.random.key(1), (config.batch, config.time,
                                            config.input_size), dtype)
  rows = []
  for name in config.cells:
    if name not in CELLS:
      raise ValueError(f"config.cells: expected names from {sorted(CELLS)}, "
                       f"got {name!r}")
    ours, theirs = CELLS[name]
    variants = {
        "flax.linen.RNN": nn.RNN(theirs(config.hidden_size, dtype=dtype),
                                 unroll=config.unroll),
        "ours": RNN(ours(config.hidden_size, dtype=dtype), unroll=config.unroll,
                    hoist_input_projection=False),
        "ours (hoisted input projection)": RNN(
            ours(config.hidden_size, dtype=dtype), unroll=config.unroll,
            hoist_input_projection=True),
    }
    calls = {label: _layer_variant(layer, x) for label, layer in
             variants.items()}
    if name == "lstm" and jax.default_backend() == "gpu":
      calls["jax.experimental.rnn (cuDNN)"] = _cudnn_lstm_variant(config, x)
    times = benchmarking.interleaved_median_seconds(
        calls, warmup=config.warmup, iters=config.iters)
    reference = times["flax.linen.RNN"]
    for label, seconds in times.items():
      rows.append(dict(cell=name, implementation=label, ms=1e3 * seconds,
                       flax_over_this=reference / seconds))
  return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
  return benchmarking.markdown_table(
      ["cell", "implementation", "fwd+bwd ms", "flax / this"],
      [(r["cell"], r["implementation"], f"{r['ms']:.2f}",
        f"{r['flax_over_this']:.2f}") for r in rows])
