"""Newton iterations and time of `newton_rnn` against `lax.scan`.

Used by scripts/bench_newton.py. An Elman RNN (`SimpleRNNCell`, tanh) of
width H reads the adding task's `(batch, T, 2)` inputs (`tasks.Adding`).

* Iterations: for each `W_hh` (a Gaussian matrix at spectral radius rho,
  `initializers.gaussian_spectral_radius`, or the same RNN after
  `train_steps` Adam steps on the adding task at `train_seq_len`), each
  method and each T, the iterations `newton_rnn` takes to reach `tol`
  (`on_failure="return"`, `max_iters` up to T), its residual, and the largest
  output difference from `RNN`'s `lax.scan`.
* Time: for each T, `lax.scan` (`RNN`) and each method, forward and
  forward+backward (`jax.grad` of the mean square of the outputs w.r.t.
  parameters and inputs), compiled once, timed round-robin
  (`timing.interleaved_median_seconds`) and the whole comparison
  repeated: a row gives the median over repeats and the min-max spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnn_transformer.analysis.spectral import spectral_radius
from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import timing
from rnn_transformer.layers import initializers
from rnn_transformer.layers.cells import SimpleRNNCell
from rnn_transformer.layers.recurrent import RNN
from rnn_transformer.recurrences import newton_recurrence
from rnn_transformer.training import tasks

TRAINED = "trained"


def check_config(config: ml_collections.ConfigDict) -> None:
  for field in ("methods", "timed_methods"):
    unknown = [m for m in config[field] if m not in newton_recurrence.METHODS]
    if unknown or not config[field]:
      raise ValueError(f"config.{field}: expected names from "
                       f"{newton_recurrence.METHODS}, got "
                       f"{tuple(config[field])}")
  for field in ("seq_lens", "time_seq_lens"):
    lens = list(config[field])
    if not lens or lens != sorted(set(lens)) or lens[0] < 2:
      raise ValueError(f"config.{field}: expected ascending lengths >= 2, got "
                       f"{tuple(lens)}")
  if not config.radii or any(r <= 0 for r in config.radii):
    raise ValueError(f"config.radii: expected positive spectral radii, got "
                     f"{tuple(config.radii)}")
  outputs.check_positive(config, "batch", "hidden_size", "train_seq_len",
                           "iters", "repeats")
  if config.train_steps < 0:
    raise ValueError(f"config.train_steps: expected an int >= 0 (0: no "
                     f"trained row), got {config.train_steps}")


def _cell(config, radius: float) -> SimpleRNNCell:
  return SimpleRNNCell(config.hidden_size, recurrent_kernel_init=(
      initializers.gaussian_spectral_radius(radius)))


def _init(cell: SimpleRNNCell, config) -> Any:
  x = jnp.zeros((config.batch, 2))
  return cell.init(jax.random.key(config.seed), jnp.zeros(
      (config.batch, config.hidden_size)), x)


class _Regressor(nn.Module):
  """RNN(cell) and a linear readout of the last output: the adding task."""
  cell: SimpleRNNCell

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(RNN(self.cell)(x))


def train_on_adding(config) -> tuple[Any, float]:
  """Adam on the adding task; `(cell variables, final training MSE)`."""
  task = tasks.Adding(seq_len=config.train_seq_len)
  model = _Regressor(_cell(config, 1.0))
  key = jax.random.key(config.seed)
  params = model.init(key, task.batch(key, config.batch)["inputs"])
  optimizer = optax.adam(config.learning_rate)

  def loss_fn(params, batch):
    return task.metrics(model.apply(params, batch["inputs"]), batch)["loss"]

  @jax.jit
  def train_step(params, opt_state, step):
    batch = task.batch(jax.random.fold_in(key, step), config.batch)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  loss = jnp.nan
  for step in range(config.train_steps):
    params, opt_state, loss = train_step(params, opt_state, step)
  return {"params": params["params"]["cell"]}, float(loss)


def _recurrent_kernels(config) -> list[tuple[str, SimpleRNNCell, Any]]:
  """`(label, cell, variables)` per W_hh: each radius, then the trained RNN."""
  kernels = []
  for radius in config.radii:
    cell = _cell(config, radius)
    kernels.append((f"rho={radius:g}", cell, _init(cell, config)))
  if config.train_steps:
    variables, loss = train_on_adding(config)
    rho = float(spectral_radius(
        variables["params"]["recurrent_projection"]["kernel"]))
    kernels.append((f"{TRAINED} (rho={rho:.2f}, mse={loss:.3f})",
                    _cell(config, 1.0), variables))
  return kernels


def _adding_inputs(config, time: int) -> jax.Array:
  return tasks.Adding(seq_len=time).batch(
      jax.random.key(config.seed + 1), config.batch)["inputs"]


def measure_iterations(config) -> list[dict[str, Any]]:
  """One row per W_hh, method and T (see the module doc)."""
  rows = []
  for label, cell, variables in _recurrent_kernels(config):
    oracle = jax.jit(lambda v, x, cell=cell: RNN(cell, keep_order=True).apply(
        {"params": {"cell": v["params"]}}, x))
    for time in config.seq_lens:
      x = _adding_inputs(config, time)
      want = oracle(variables, x)
      for method in config.methods:
        run = jax.jit(lambda v, x, cell=cell, method=method, time=time:
                      newton_recurrence.newton_rnn(
                          cell, v, x, method=method, on_failure="return",
                          max_iters=min(time, config.max_iters)))
        _, outputs, info = run(variables, x)
        rows.append(dict(
            weights=label, method=method, seq_len=time,
            iterations=int(info.iterations), residual=float(info.residual),
            converged=bool(info.converged),
            # numpy's max propagates NaN (XLA's may not).
            max_abs_error=float(np.max(np.abs(np.asarray(outputs - want))))))
  return rows


def _timed_calls(config, cell, variables, time):
  x = _adding_inputs(config, time)
  applies = {"scan": lambda v, x: RNN(cell, keep_order=True).apply(
      {"params": {"cell": v["params"]}}, x)}
  for method in config.timed_methods:
    applies[method] = (
        lambda v, x, method=method: newton_recurrence.newton_rnn(
            cell, v, x, method=method, max_iters=min(time, config.max_iters))[1])
  calls = {}
  for name, apply in applies.items():
    forward = jax.jit(apply).lower(variables, x).compile()
    backward = jax.jit(jax.grad(
        lambda v, x, apply=apply: jnp.mean(apply(v, x) ** 2),
        argnums=(0, 1))).lower(variables, x).compile()
    calls[name, "fwd", time] = lambda f=forward: f(variables, x)
    calls[name, "fwd+bwd", time] = lambda f=backward: f(variables, x)
  return calls


def measure_times(config) -> list[dict[str, Any]]:
  """One row per contender, pass and T; ms median and spread over repeats."""
  cell = _cell(config, config.time_radius)
  variables = _init(cell, config)
  calls = {}
  for time in config.time_seq_lens:
    calls.update(_timed_calls(config, cell, variables, time))
  samples = timing.repeated_interleaved_ms(
      calls, warmup=config.warmup, iters=config.iters, repeats=config.repeats)
  rows = []
  for (name, direction, time), ms in samples.items():
    scan = float(np.median(samples["scan", direction, time]))
    rows.append(dict(contender=name, pass_=direction, seq_len=time,
                     ms=float(np.median(ms)), ms_min=min(ms), ms_max=max(ms),
                     scan_over_this=scan / float(np.median(ms))))
  return rows


def format_iterations(rows: Sequence[dict[str, Any]]) -> str:
  return outputs.markdown_table(
      ["W_hh", "method", "T", "iterations", "residual", "converged",
       "max |newton - scan|"],
      [(r["weights"], r["method"], r["seq_len"], r["iterations"],
        f"{r['residual']:.2e}", r["converged"], f"{r['max_abs_error']:.2e}")
       for r in rows])


def format_times(rows: Sequence[dict[str, Any]]) -> str:
  return outputs.markdown_table(
      ["contender", "pass", "T", "ms (median)", "spread (min-max)",
       "scan / this"],
      [(r["contender"], r["pass_"], r["seq_len"], f"{r['ms']:.3f}",
        f"{r['ms_min']:.3f}-{r['ms_max']:.3f}", f"{r['scan_over_this']:.2f}")
       for r in rows])


def plot(iteration_rows, time_rows, title: str, output_dir: str) -> str:
  """newton.png: iterations against T per W_hh and method; time against T."""
  plt = outputs.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  for weights in dict.fromkeys(r["weights"] for r in iteration_rows):
    for method in dict.fromkeys(r["method"] for r in iteration_rows):
      mine = [r for r in iteration_rows
              if r["weights"] == weights and r["method"] == method]
      # A run that did not converge has no iteration count to plot: it is
      # drawn as a cross at the top of the axis.
      done = [r for r in mine if r["converged"]]
      line, = left.plot([r["seq_len"] for r in done],
                        [r["iterations"] for r in done], marker="o",
                        label=f"{weights}, {method}")
      failed = [r["seq_len"] for r in mine if not r["converged"]]
      if failed:
        left.plot(failed, [max(r["seq_len"] for r in iteration_rows)] *
                  len(failed), marker="x", linestyle="none", markersize=9,
                  color=line.get_color())
  left.set(xscale="log", yscale="log", xlabel="T (steps)",
           ylabel="Newton iterations to tol (x: not converged)",
           title="iterations against T")
  left.legend(fontsize=6)
  for name, direction in dict.fromkeys(
      (r["contender"], r["pass_"]) for r in time_rows):
    mine = [r for r in time_rows
            if r["contender"] == name and r["pass_"] == direction]
    t = [r["seq_len"] for r in mine]
    right.errorbar(t, [r["ms"] for r in mine],
                   yerr=[[r["ms"] - r["ms_min"] for r in mine],
                         [r["ms_max"] - r["ms"] for r in mine]],
                   marker="o", capsize=2, label=f"{name} {direction}")
  right.set(xscale="log", yscale="log", xlabel="T (steps)",
            ylabel="ms (median, min-max)", title="time against T")
  right.legend(fontsize=7)
  for axis, rows in ((left, iteration_rows), (right, time_rows)):
    lens = sorted({r["seq_len"] for r in rows})
    axis.set_xticks(lens, [str(n) for n in lens])
    axis.minorticks_off()
  fig.suptitle(title, fontsize=8)
  return outputs.save_figure(fig, output_dir, "newton")

