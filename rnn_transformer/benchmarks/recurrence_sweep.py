"""Forward+backward time against sequence length for sequential and parallel
recurrences, and the sequential depth of each compiled program.

Used by scripts/bench_recurrence_sweep.py. Variants, each one layer of width
H on `(batch, n, H)` inputs:

* `lstm/scan`: `RNN(LSTMCell)`, `lax.scan` (hoisted input projection);
* `mingru/<method>`, `lru/<method>`: `RNN(MinGRU | LRU, scan_method=...)`
  for the methods of `linear_recurrence.linear_scan`;
* `transformer/layer`: one Transformer block (`build_backbone`,
  `num_layers=1`, attention chosen by `kernels.attention`).

Each `(variant, n)` is compiled once; all of them are then timed round-robin
(`timing.interleaved_median_seconds`) so background load shifts every
curve alike, and the whole round-robin is repeated `config.repeats` times:
a row reports the median over repeats and their min and max (the spread).
Depth is `program_depth.critical_path_length` of the traced program and
`scan_steps` the loop iterations (`analysis.program_depth.sequential_steps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rnn_transformer.analysis import program_depth
from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import recurrent_benchmark
from rnn_transformer.benchmarks import timing
from rnn_transformer.layers.cells import LSTMCell
from rnn_transformer.layers.linear_rnn import LRU
from rnn_transformer.layers.linear_rnn import MinGRU
from rnn_transformer.layers.recurrent import RNN
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.models.model_config import ModelConfig
from rnn_transformer.recurrences import linear_recurrence

LINEAR_LAYERS = {"mingru": MinGRU, "lru": LRU}
VARIANTS = ("lstm/scan",
            *(f"{layer}/{method}" for layer in LINEAR_LAYERS
              for method in linear_recurrence.METHODS),
            "transformer/layer")
BASELINE = "lstm/scan"


def _check(config: ml_collections.ConfigDict) -> None:
  unknown = [v for v in config.variants if v not in VARIANTS]
  if unknown or not config.variants:
    raise ValueError(f"config.variants: expected names from {VARIANTS}, got "
                     f"{tuple(config.variants)}")
  lens = list(config.seq_lens)
  if len(lens) < 2 or lens != sorted(set(lens)) or lens[0] < 1:
    raise ValueError(f"config.seq_lens: expected at least two ascending "
                     f"positive lengths, got {tuple(lens)}")
  outputs.check_positive(config, "batch", "hidden_size", "num_heads",
                           "iters", "repeats", "chunk_size")


def build_layer(variant: str, config: ml_collections.ConfigDict):
  """`(module, apply(variables, x) -> (batch, n, H))` for `variant`."""
  layer, method = variant.split("/")
  dtype = jnp.dtype(config.dtype)
  if layer == "lstm":
    module = RNN(LSTMCell(config.hidden_size, dtype=dtype))
  elif layer in LINEAR_LAYERS:
    module = RNN(LINEAR_LAYERS[layer](config.hidden_size, dtype=dtype),
                 scan_method=method, chunk_size=config.chunk_size)
  else:
    module = build_backbone(ModelConfig(
        backbone="transformer", num_layers=1, model_dim=config.hidden_size,
        num_heads=config.num_heads, max_len=max(config.seq_lens),
        dtype=dtype))
    return module, lambda variables, x: module.apply(variables, x).features
  return module, module.apply


def measure(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """One row per variant and sequence length (see the module doc)."""
  _check(config)
  lens = list(config.seq_lens)
  dtype = jnp.dtype(config.dtype)
  rng = np.random.default_rng(0)
  # Drawn on the host: jax.random would compile a program per shape.
  inputs = {n: jnp.asarray(rng.standard_normal(
      (config.batch, n, config.hidden_size)), dtype) for n in lens}
  calls, depth, steps = {}, {}, {}
  for variant in config.variants:
    module, apply = build_layer(variant, config)
    # No parameter depends on n, so one initialisation serves every length.
    variables = jax.jit(module.init)(jax.random.key(0), inputs[lens[0]])
    step = recurrent_benchmark.forward_backward(apply)
    for n in lens:
      traced = step.trace(variables, inputs[n])
      compiled = traced.lower().compile()
      key = (variant, n)
      calls[key] = (lambda c=compiled, v=variables, x=inputs[n]: c(v, x))
      depth[key] = program_depth.critical_path_length(traced.jaxpr)
      steps[key] = program_depth.sequential_steps(traced.jaxpr)
  samples = timing.repeated_interleaved_ms(
      calls, warmup=config.warmup, iters=config.iters, repeats=config.repeats)
  rows = []
  for n in lens:
    for variant in config.variants:
      layer, method = variant.split("/")
      ms = samples[variant, n]
      rows.append(dict(
          variant=variant, layer=layer, method=method, seq_len=n,
          ms=float(np.median(ms)), ms_min=min(ms), ms_max=max(ms),
          depth=depth[variant, n], scan_steps=steps[variant, n]))
  _add_ratios(rows)
  return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
  """`lstm_over_this` and `sequential_over_this` (> 1: this is faster)."""
  by_key = {(r["variant"], r["seq_len"]): r for r in rows}
  for row in rows:
    base = by_key.get((BASELINE, row["seq_len"]))
    row["lstm_over_this"] = base["ms"] / row["ms"] if base else float("nan")
    seq = by_key.get((f"{row['layer']}/sequential", row["seq_len"]))
    row["sequential_over_this"] = (
        seq["ms"] / row["ms"] if seq and row["layer"] in LINEAR_LAYERS
        else float("nan"))


def slopes(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """Per variant: log-log slope of ms and of depth against n."""
  result = {}
  for variant in dict.fromkeys(r["variant"] for r in rows):
    mine = [r for r in rows if r["variant"] == variant]
    n = np.array([r["seq_len"] for r in mine], np.float64)
    result[variant] = {
        "ms": outputs.loglog_slope(n, [r["ms"] for r in mine]),
        # Depth >= 1 for any program with an operation; max() guards a
        # variant that only forwards its inputs.
        "depth": outputs.loglog_slope(n, [max(1, r["depth"]) for r in mine]),
    }
  return result


def fastest_methods(rows: Sequence[dict[str, Any]]
                    ) -> list[tuple[str, int, str, str]]:
  """`(layer, n, fastest measured method, the table's default)` rows."""
  table = linear_recurrence.default_method()
  result = []
  for layer in LINEAR_LAYERS:
    for n in dict.fromkeys(r["seq_len"] for r in rows):
      mine = [r for r in rows if r["layer"] == layer and r["seq_len"] == n]
      if mine:
        result.append((layer, n, min(mine, key=lambda r: r["ms"])["method"],
                       table))
  return result


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
  def ratio(x):
    return "" if np.isnan(x) else f"{x:.2f}"
  return outputs.markdown_table(
      ["variant", "n", "fwd+bwd ms (median)", "spread (min-max)", "depth",
       "scan steps", "lstm / this", "sequential / this"],
      [(r["variant"], r["seq_len"], f"{r['ms']:.2f}",
        f"{r['ms_min']:.2f}-{r['ms_max']:.2f}", r["depth"], r["scan_steps"],
        ratio(r["lstm_over_this"]), ratio(r["sequential_over_this"]))
       for r in rows])


def format_slopes(rows: Sequence[dict[str, Any]]) -> str:
  return outputs.markdown_table(
      ["variant", "log-log slope of time", "log-log slope of depth"],
      [(v, f"{s['ms']:.2f}", f"{s['depth']:.2f}")
       for v, s in slopes(rows).items()])


def format_fastest(rows: Sequence[dict[str, Any]]) -> str:
  backend = jax.default_backend()
  choice = linear_recurrence.DEFAULT_METHOD_BY_BACKEND.get(backend)
  return outputs.markdown_table(
      ["layer", "n", "fastest here", f"table default ({backend})"],
      [(layer, n, best, f"{table}" + ("" if choice is None else
                                      f" ({choice.provenance.split(':')[0]})"))
       for layer, n, best, table in fastest_methods(rows)])


