"""Forward+backward time of our recurrent layers against flax.linen.RNN.

Used by scripts/bench_recurrent.py. Every variant runs the same sizes in one
process on one device, jitted, timed after compilation, round-robin, and the
whole comparison repeats; the table reports each variant's median time and
`flax / ours` (> 1 means ours is faster) with its spread over repeats.
"""

import statistics
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rnn_transformer import validation
from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import timing
from rnn_transformer.layers.cells import GRUCell
from rnn_transformer.layers.cells import LSTMCell
from rnn_transformer.layers.cells import SimpleRNNCell
from rnn_transformer.layers.recurrent import backend_defaults
from rnn_transformer.layers.recurrent import RNN

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


# label -> RNN options; "default" is whatever DEFAULTS_BY_BACKEND picks here.
VARIANTS: dict[str, dict[str, Any]] = {
    "ours (per-step projection)": dict(hoist_input_projection=False,
                                       defer_weight_gradients=False),
    "ours (hoisted)": dict(hoist_input_projection=True,
                           defer_weight_gradients=False),
    "ours (hoisted, deferred weight gradients)": dict(
        hoist_input_projection=True, defer_weight_gradients=True),
    "ours (per-step projection, deferred weight gradients)": dict(
        hoist_input_projection=False, defer_weight_gradients=True),
}
REFERENCE = "flax.linen.RNN"


def default_label(cell: str, batch: int) -> str:
  """The `VARIANTS` label `RNN(cell)` runs by default on this backend for
  `batch` sequences."""
  defaults = backend_defaults(CELLS[cell][0](1))
  options = dict(hoist_input_projection=defaults.hoist_input_projection,
                 defer_weight_gradients=defaults.defers(batch))
  (label,) = [label for label, o in VARIANTS.items() if o == options]
  return label


def run(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Times every variant of every cell in `config.cells`; one row each.

  The variants of a cell run round-robin (`interleaved_median_seconds`), and
  the whole comparison is repeated `config.repeats` times: each row gives the
  median over repeats of each repeat's median time, and of `flax / this`,
  with the ratio's min-max spread.
  """
  validation.check_int("config.repeats", config.repeats)
  dtype = jnp.dtype(config.dtype)
  x = jax.random.normal(jax.random.key(1), (config.batch, config.time,
                                            config.input_size), dtype)
  rows = []
  for name in config.cells:
    if name not in CELLS:
      raise ValueError(f"config.cells: expected names from {sorted(CELLS)}, "
                       f"got {name!r}")
    ours, theirs = CELLS[name]
    layers = {REFERENCE: nn.RNN(theirs(config.hidden_size, dtype=dtype),
                                unroll=config.unroll)}
    layers.update({
        label: RNN(ours(config.hidden_size, dtype=dtype), unroll=config.unroll,
                   **options) for label, options in VARIANTS.items()})
    calls = {label: _layer_variant(layer, x) for label, layer in
             layers.items()}
    if name == "lstm" and jax.default_backend() == "gpu":
      calls["jax.experimental.rnn (cuDNN)"] = _cudnn_lstm_variant(config, x)
    ms = timing.repeated_interleaved_ms(
        calls, warmup=config.warmup, iters=config.iters,
        repeats=config.repeats)
    for label, samples in ms.items():
      ratios = [ref / t for ref, t in zip(ms[REFERENCE], samples)]
      rows.append(dict(
          cell=name, implementation=label,
          default=label == default_label(name, config.batch),
          ms=statistics.median(samples),
          flax_over_this=statistics.median(ratios),
          ratio_min=min(ratios), ratio_max=max(ratios)))
  return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
  return outputs.markdown_table(
      ["cell", "implementation", "fwd+bwd ms", "flax / this", "spread"],
      [(r["cell"], r["implementation"] + (" [default]" if r["default"] else ""),
        f"{r['ms']:.2f}", f"{r['flax_over_this']:.2f}",
        f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}") for r in rows])
