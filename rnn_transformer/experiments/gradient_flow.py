r"""Gradient flow through time, and clipping an exploding run (seed chapter 2).

The seed's claim, by the chain rule for a loss on the last step T:

    dL/dh_1 = dL/dh_T  prod_{t=2..T} dh_t/dh_{t-1},
    dh_t/dh_{t-1} = diag(f'(a_t)) W_hh      (Elman RNN, h_t = f(a_t))

so the gradient reaching early steps shrinks geometrically for a tanh RNN
with rho(W_hh) < 1 and grows for a linear RNN with rho(W_hh) > 1; LSTM and
GRU gates add a near-identity path that decays more slowly; global-norm
clipping (Pascanu et al., 2013) keeps an exploding gradient from wrecking
the parameters.

What runs: one recurrent layer (tanh at rho = 0.5, 1.0, 1.5; linear at
rho = 1.5; LSTM; GRU) with a Dense readout on a built-in task (the adding
problem by default). `gradient_flow.hidden_state_gradient_norms` measures
||dL/dh_t|| at every step on a held-out batch, at initialisation and after
a short AdamW run (`train.make_optimizer`, `train.make_train_step`). Then
the linear rho = 1.5 model is trained with and without clipping, same seed
and data, under SGD and under AdamW.

    python scripts/experiment.py --config=configs/experiments/gradient_flow.py:tiny \
        --output_dir=/tmp/experiments
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from rnn_transformer.analysis import gradient_flow
from rnn_transformer.layers import initializers
from rnn_transformer.training import tasks
from rnn_transformer.training import train
from rnn_transformer.layers.cells import GRUCell
from rnn_transformer.layers.cells import LSTMCell
from rnn_transformer.layers.cells import SimpleRNNCell
from rnn_transformer.experiments import progress
from rnn_transformer.experiments import reporting
from rnn_transformer.models.model_config import BackboneOutput
from rnn_transformer.layers.recurrent import RNN
from rnn_transformer.benchmarks import outputs

NAME = "gradient_flow"

# ||dL/dh_1|| / ||dL/dh_T|| below this is "vanishing", above EXPLODING_RATIO
# "exploding": three orders of magnitude either way.
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
# Gated cells "keep gradients from vanishing as fast" when their ratio is at
# least this many times that of the tanh RNN at rho = 1 (the radius of the
# gated cells' orthogonal recurrent blocks), at the same training stage.
GATING_MARGIN = 10.0
# A run is derailed when its loss is ever non-finite or its final loss (mean
# over the last tenth of the steps) exceeds this many times the task's
# trivial-predictor loss.
DERAILED_FACTOR = 10.0


def _linear(z: jax.Array) -> jax.Array:
  return z


# Model name -> (cell kind, spectral radius of W_hh at init, or None for the
# cell's default orthogonal blocks) and its legend label.
MODELS = {
    "tanh_0.5": ("tanh", 0.5, "tanh RNN, ρ=0.5"),
    "tanh_1.0": ("tanh", 1.0, "tanh RNN, ρ=1.0"),
    "tanh_1.5": ("tanh", 1.5, "tanh RNN, ρ=1.5"),
    "linear_1.5": ("linear", 1.5, "linear RNN, ρ=1.5"),
    "lstm": ("lstm", None, "LSTM (forget bias 1)"),
    "gru": ("gru", None, "GRU"),
}
# Trained with and without clipping.
EXPLODING_MODEL = "linear_1.5"


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  """The experiment's config at `scale` ("tiny", "default" or "large")."""
  reporting.check_scale(scale)
  # T=50 at most: at rho=1.5 the linear RNN's gradient norms grow as
  # 1.5^T, and their squares overflow float32 near T=100.
  seq_len = {"tiny": 30, "default": 50, "large": 50}[scale]
  config = ml_collections.ConfigDict()
  config.experiment = NAME
  config.seed = 0  # parameters, data stream and probe batch derive from it
  config.task = ml_collections.ConfigDict()
  config.task.name = "adding"  # a rnn_transformer.training.tasks name, loss on step T
  config.task.params = ml_collections.ConfigDict(
      {"seq_len": seq_len})  # its keyword arguments
  config.hidden = {"tiny": 16, "default": 32, "large": 128}[scale]  # H
  config.batch_size = {"tiny": 16, "default": 32, "large": 128}[scale]
  config.train = ml_collections.ConfigDict()  # read by train.make_optimizer
  config.train.steps = {"tiny": 60, "default": 1000, "large": 3000}[scale]
  config.train.learning_rate = 1e-2  # AdamW peak
  config.train.warmup_steps = {"tiny": 5, "default": 50, "large": 100}[scale]
  config.train.weight_decay = 0.0
  config.train.grad_clip_norm = 1.0  # the clipped runs' max global norm
  config.sgd_learning_rate = 0.1  # constant; the SGD clipping comparison
  # XLA's LLVM optimisation level for every compiled function (None: XLA's
  # default). 0 halves compile time, which dominates the tiny runs on a CPU.
  config.xla_backend_optimization_level = 0 if scale == "tiny" else None
  return config


class ProbedRNN(nn.Module):
  """Embedding (token tasks), one `RNN` layer and a Dense readout.

  The backbone interface (`BackboneOutput`), so `train.make_train_step`
  trains it, plus `state_perturbation: (batch, time, hidden)` added to h_t,
  whose gradient is dL/dh_t (`gradient_flow.hidden_state_gradient_norms`).

  Attributes:
    cell: the recurrent cell, hidden size H.
    output_size: logits per step.
    vocab_size: token inputs `(batch, time)` are embedded to H; None: float
      inputs `(batch, time, features)` feed the cell directly.
  """
  cell: nn.RNNCellBase
  output_size: int
  vocab_size: int | None = None

  @nn.compact
  def __call__(self, inputs: jax.Array, *, deterministic: bool = True,
               state_perturbation: jax.Array | None = None) -> BackboneOutput:
    del deterministic  # no dropout
    x = inputs
    if self.vocab_size is not None:
      x = nn.Embed(self.vocab_size, self.cell.features, name="embedding")(x)
    h = RNN(self.cell.clone(parent=None), name="rnn")(
        x, state_perturbation=state_perturbation)
    return BackboneOutput(features=h, logits=nn.Dense(
        self.output_size, name="readout")(h))


def _cell(kind: str, hidden: int, radius: float | None) -> nn.RNNCellBase:
  init = {} if radius is None else {
      "recurrent_kernel_init": initializers.gaussian_spectral_radius(radius)}
  if kind == "tanh":
    return SimpleRNNCell(hidden, **init)
  if kind == "linear":
    return SimpleRNNCell(hidden, activation_fn=_linear, **init)
  return {"lstm": LSTMCell, "gru": GRUCell}[kind](hidden, **init)


def _clip_when(enabled: jax.Array, max_norm: float
               ) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm(max_norm)` where `enabled`, else the identity.

  A traced switch, so the clipped and unclipped runs share one compilation
  and are otherwise the same program.
  """
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    clipped, state = clip.update(updates, state, params)
    return jax.tree.map(lambda c, u: jnp.where(enabled, c, u), clipped,
                        updates), state

  return optax.GradientTransformation(clip.init, update)


class _Runner:
  """Compiled probes and training loops, one per cell kind and optimizer.

  The RNNs that differ only in their initial W_hh share one apply function
  (and so one compilation): initialisers play no part in `apply`. Training
  batches are drawn once for all runs (batch i from `fold_in(data_key, i)`,
  as in `train.Trainer`), since the random-bit generator inside every loop
  would dominate compile time on a CPU.
  """

  def __init__(self, config: ml_collections.ConfigDict, task: tasks.Task):
    self.config = config
    self.task = task
    root = jax.random.key(config.seed)
    init_key, data_key, probe_key, self.dropout_key = jax.random.split(root, 4)
    steps = jnp.arange(config.train.steps)

    def draw(data_key, probe_key):
      batches = jax.vmap(lambda s: task.batch(jax.random.fold_in(data_key, s),
                                              config.batch_size))(steps)
      return batches, task.eval_batch(probe_key, config.batch_size)

    self.batches, self.probe_batch = self.compile(draw, data_key, probe_key)(
        data_key, probe_key)
    sample = self.probe_batch["inputs"][:1]

    def init(key):
      return {name: self.model(name, for_init=True).init(key, sample)["params"]
              for name in MODELS}

    self.initial_params = self.compile(init, init_key)(init_key)
    self._compiled: dict[Any, Any] = {}

  def compile(self, fn, *args):
    """`fn` compiled for `args`, at the configured optimisation level."""
    level = self.config.xla_backend_optimization_level
    options = None if level is None else {
        "xla_backend_optimization_level": level}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)

  def model(self, name: str, for_init: bool = False) -> ProbedRNN:
    kind, radius, _ = MODELS[name]
    cell = _cell(kind, self.config.hidden, radius if for_init else None)
    return ProbedRNN(cell, self.task.output_size, self.task.vocab_size)

  def gradient_norms(self, name: str, params: Any) -> np.ndarray:
    """`(time,)` batch-mean ||dL/dh_t|| on the probe batch."""
    kind = MODELS[name][0]
    if ("norms", kind) not in self._compiled:
      model, task = self.model(name), self.task
      batch_size, time = self.probe_batch["inputs"].shape[:2]
      shape = (batch_size, time, self.config.hidden)

      def norms(params, batch):
        def loss_of_perturbation(perturbation):
          out = model.apply({"params": params}, batch["inputs"],
                            state_perturbation=perturbation)
          return task.metrics(out.logits, batch)["loss"]
        return gradient_flow.hidden_state_gradient_norms(
            loss_of_perturbation, shape)

      self._compiled["norms", kind] = self.compile(norms, params,
                                                   self.probe_batch)
    norms = self._compiled["norms", kind](params, self.probe_batch)
    return np.asarray(norms, np.float64).mean(axis=0)

  def optimizer(self, name: str) -> optax.GradientTransformation:
    """"adamw": `train.make_optimizer` without its clipping; "sgd": constant."""
    if name == "adamw":
      config = ml_collections.ConfigDict({"train": self.config.train.to_dict()})
      config.train.grad_clip_norm = 0.0  # clipping is _clip_when's switch
      return train.make_optimizer(config)[0]
    return optax.sgd(self.config.sgd_learning_rate)

  def train(self, name: str, optimizer: str, clip: bool
            ) -> tuple[Any, np.ndarray, np.ndarray]:
    """`config.train.steps` updates from the initial params of `name`.

    Returns the trained params, and the loss and global gradient norm
    (before clipping) at every step.
    """
    kind = MODELS[name][0]
    key = ("train", kind, optimizer)
    args = (self.initial_params[name], self.batches, self.dropout_key,
            jnp.asarray(clip))
    if key not in self._compiled:
      model, task = self.model(name), self.task
      base = self.optimizer(optimizer)
      max_norm = self.config.train.grad_clip_norm
      # make_train_step only logs the schedule; AdamW's lives inside `base`.
      step_fn = train.make_train_step(model, task, optax.constant_schedule(
          0.0), grad_accum_steps=1)

      def run(params, batches, dropout_key, clip):
        tx = optax.chain(_clip_when(clip, max_norm), base)
        state = train_state.TrainState.create(apply_fn=model.apply,
                                              params=params, tx=tx)

        def body(state, xs):
          step, batch = xs
          state, metrics = step_fn(state, batch,
                                   jax.random.fold_in(dropout_key, step))
          return state, (metrics["loss"], metrics["grad_norm"])

        steps = jnp.arange(jax.tree.leaves(batches)[0].shape[0])
        state, (losses, grad_norms) = jax.lax.scan(body, state,
                                                   (steps, batches))
        return state.params, losses, grad_norms

      self._compiled[key] = self.compile(run, *args)
    params, losses, grad_norms = self._compiled[key](*args)
    return (params, np.asarray(losses, np.float64),
            np.asarray(grad_norms, np.float64))


def _radius(params: Any) -> float:
  """rho(W_hh); for gated cells the largest over the gate blocks."""
  return float(np.max(gradient_flow.recurrent_spectral_radius(
      params["rnn"]["cell"])))


def _final_loss(losses: np.ndarray) -> float:
  return float(np.mean(losses[-max(1, len(losses) // 10):]))


def _derailed(losses: np.ndarray, baseline: float) -> bool:
  return bool(not np.all(np.isfinite(losses)) or
              _final_loss(losses) > DERAILED_FACTOR * baseline)


def _first_non_finite(values: np.ndarray) -> int | None:
  bad = np.flatnonzero(~np.isfinite(values))
  return None if bad.size == 0 else int(bad[0])


def _ratio(norms: np.ndarray) -> float:
  return float(norms[0] / norms[-1])


def _grade(passed: list[bool]) -> str:
  if all(passed):
    return "supported"
  return "partly supported" if any(passed) else "not supported"


def _claims(ratios: dict[tuple[str, str], float],
            clipping: dict[str, dict[str, Any]], seq_len: int
            ) -> list[reporting.Claim]:
  claims = []
  vanish = [ratios["tanh_0.5", stage] for stage in ("init", "trained")]
  claims.append(reporting.Claim(
      "a tanh RNN with spectral radius < 1 has vanishing gradients",
      _grade([r < VANISHING_RATIO for r in vanish]),
      f"tanh RNN at rho(W_hh)=0.5 over T={seq_len} steps: "
      f"||dL/dh_1||/||dL/dh_T|| = {vanish[0]:.3g} at init, {vanish[1]:.3g} "
      f"after training (vanishing: < {VANISHING_RATIO:g}; 0 is float32 "
      f"underflow)."))

  explode = ratios["linear_1.5", "init"]
  claims.append(reporting.Claim(
      "with spectral radius > 1 (linear activation) gradients explode",
      "supported" if explode > EXPLODING_RATIO else
      "partly supported" if explode > 1 else "not supported",
      f"linear RNN at rho(W_hh)=1.5: ||dL/dh_1||/||dL/dh_T|| = "
      f"{explode:.3g} at init (exploding: > {EXPLODING_RATIO:g}); after "
      f"clipped AdamW training {ratios['linear_1.5', 'trained']:.3g}."))

  passed, parts = [], []
  for stage in ("init", "trained"):
    base = ratios["tanh_1.0", stage]
    for gated in ("lstm", "gru"):
      ratio = ratios[gated, stage]
      passed.append(ratio >= GATING_MARGIN * base)
      parts.append(f"{gated.upper()} {ratio:.3g} vs tanh {base:.3g} ({stage})")
  claims.append(reporting.Claim(
      "LSTM/GRU gating keeps gradients from vanishing as fast",
      _grade(passed),
      "||dL/dh_1||/||dL/dh_T|| against the tanh RNN at rho=1 (pass: at "
      f"least {GATING_MARGIN:g} times larger): " + "; ".join(parts) + "."))

  derailed = [opt for opt, r in clipping.items()
              if r["derailed_unclipped"] and r["norm_overflow_clipped"] is None]
  rescued = [opt for opt in derailed if not clipping[opt]["derailed_clipped"]]
  overflowed = [f"{opt} (the clipped run's gradient norm overflowed float32 "
                f"at step {r['norm_overflow_clipped']}: not counted)"
                for opt, r in clipping.items()
                if r["norm_overflow_clipped"] is not None]
  evidence = "; ".join(overflowed + [
      f"{opt}: final loss {r['final_unclipped']:.3g} unclipped (first "
      f"non-finite step {r['non_finite_unclipped']}) vs "
      f"{r['final_clipped']:.3g} clipped"
      for opt, r in clipping.items()])
  if not derailed:
    verdict = "not measured"
  elif len(rescued) == len(derailed):
    verdict = "supported"
  else:
    verdict = "partly supported" if rescued else "not supported"
  claims.append(reporting.Claim(
      "gradient clipping prevents exploding gradients from derailing "
      "training", verdict,
      f"{EXPLODING_MODEL}, same seed and data; derailed = non-finite or final "
      f"loss > {DERAILED_FACTOR:g} x the trivial baseline. " + evidence + "."))
  return claims


def _plot_norms(output_dir: str, norms: dict[tuple[str, str], np.ndarray],
                config: ml_collections.ConfigDict) -> str:
  plt = outputs.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True,
                           layout="constrained")
  for ax, stage, title in zip(axes, ("init", "trained"), (
      "at initialisation", f"after {config.train.steps} AdamW steps (clipped "
      f"at {config.train.grad_clip_norm:g})")):
    for name, (_, _, label) in MODELS.items():
      curve = norms[name, stage]
      steps = np.arange(1, curve.size + 1)
      shown = curve > 0  # float32 underflow to 0 has no place on a log axis
      if not shown.all():
        label += f" (0 up to t={steps[~shown].max()})"
      ax.semilogy(steps[shown], curve[shown], label=label)
    ax.set_title(title)
    ax.set_xlabel("time step t")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("||dL/dh_t|| (batch mean)")
  fig.suptitle(f"Gradient reaching h_t from a loss on step T, "
               f"{config.task.name} task\n{outputs.device_description()}")
  return outputs.save_figure(fig, output_dir, "gradient_norms")


def _plot_losses(output_dir: str, name: str, title: str,
                 curves: dict[str, dict[str, np.ndarray]],
                 baseline: float, panel_titles: dict[str, str]) -> str:
  plt = outputs.pyplot()
  fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 5),
                           squeeze=False, layout="constrained")
  for ax, (panel, lines) in zip(axes[0], curves.items()):
    for label, losses in lines.items():
      steps = np.arange(losses.size)
      finite = np.isfinite(losses)
      (line,) = ax.semilogy(steps[finite], losses[finite], label=label)
      bad = _first_non_finite(losses)
      if bad is not None:
        ax.axvline(bad, color=line.get_color(), linestyle=":",
                   label=f"{label}: non-finite from step {bad}")
    ax.axhline(baseline, color="gray", linestyle="--",
               label="trivial predictor")
    ax.set_title(panel_titles[panel])
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{title}\n{outputs.device_description()}")
  return outputs.save_figure(fig, output_dir, name)


def run(config: ml_collections.ConfigDict, output_dir: str) -> reporting.Report:
  """Measures, plots and tabulates; returns the report with verdicts."""
  outputs.check_positive(config, "hidden", "batch_size", "train.steps",
                           "task.params.seq_len")
  task = tasks.make_task(config.task.name, **config.task.params.to_dict())
  runner = _Runner(config, task)
  baseline = task.baseline["loss"]
  norms, ratios, losses, grad_norms, rows, radii = {}, {}, {}, {}, [], {}
  for name in progress.cells(NAME, MODELS, lambda n: f"{n}: probe, train, probe"):
    params = runner.initial_params[name]
    norms[name, "init"] = runner.gradient_norms(name, params)
    radii[name, "init"] = _radius(params)
    trained, losses[name], grad_norms[name] = runner.train(
        name, "adamw", clip=True)
    norms[name, "trained"] = runner.gradient_norms(name, trained)
    radii[name, "trained"] = _radius(trained)
  for (name, stage), curve in norms.items():
    ratios[name, stage] = _ratio(curve)
    underflow = np.flatnonzero(curve == 0)
    rows.append((name, stage, radii[name, stage], curve[0], curve[-1],
                 ratios[name, stage],
                 ratios[name, stage] ** (1.0 / (curve.size - 1)),
                 int(underflow.max()) + 1 if underflow.size else "",
                 _final_loss(losses[name]) if stage == "trained" else ""))

  clip_losses: dict[str, dict[str, np.ndarray]] = {}
  clip_grads: dict[str, dict[str, np.ndarray]] = {}
  clipping: dict[str, dict[str, Any]] = {}
  for optimizer in progress.cells(f"{NAME} clipping", ("sgd", "adamw")):
    clip_losses[optimizer], clip_grads[optimizer] = {}, {}
    for clip in (False, True):
      if optimizer == "adamw" and clip:  # the run above: same seed, data, tx
        curve, grads = losses[EXPLODING_MODEL], grad_norms[EXPLODING_MODEL]
      else:
        _, curve, grads = runner.train(EXPLODING_MODEL, optimizer, clip)
      label = "clipped" if clip else "unclipped"
      clip_losses[optimizer][label] = curve
      clip_grads[optimizer][label] = grads
    result = {}
    for label in ("unclipped", "clipped"):
      curve = clip_losses[optimizer][label]
      result[f"final_{label}"] = _final_loss(curve)
      result[f"derailed_{label}"] = _derailed(curve, baseline)
      result[f"non_finite_{label}"] = _first_non_finite(curve)
    # An infinite global norm makes clip_by_global_norm scale by 1/inf = 0:
    # the clipped run then stands still and says nothing about clipping.
    result["norm_overflow_clipped"] = _first_non_finite(
        clip_grads[optimizer]["clipped"])
    clipping[optimizer] = result

  files = [_plot_norms(output_dir, norms, config)]
  files.append(_plot_losses(
      output_dir, "clipping",
      f"{MODELS[EXPLODING_MODEL][2]} on {config.task.name}: global-norm "
      f"clipping at {config.train.grad_clip_norm:g}, same seed and data",
      clip_losses, baseline,
      {"sgd": f"SGD, learning rate {config.sgd_learning_rate:g}",
       "adamw": f"AdamW (train.make_optimizer), peak "
                f"{config.train.learning_rate:g}"}))
  files.append(_plot_losses(
      output_dir, "training_loss",
      f"Training runs behind the 'trained' panel (AdamW, clipped at "
      f"{config.train.grad_clip_norm:g})",
      {"all": {MODELS[n][2]: losses[n] for n in MODELS}}, baseline,
      {"all": f"{config.task.name}, T={task.seq_len}"}))

  files += outputs.write_table(
      output_dir, "gradient_ratio",
      ["model", "stage", "rho(W_hh)", "norm_dL_dh_1", "norm_dL_dh_T",
       "ratio_1_over_T", "per_step_factor", "underflow_to_step",
       "final_train_loss"], rows)
  time = task.seq_len
  files += outputs.write_table(
      output_dir, "gradient_norms",
      ["t"] + [f"{n}_{s}" for n in MODELS for s in ("init", "trained")],
      [[t + 1] + [norms[n, s][t] for n in MODELS for s in ("init", "trained")]
       for t in range(time)])
  files += outputs.write_table(
      output_dir, "training_loss", ["step"] + list(MODELS),
      [[s] + [losses[n][s] for n in MODELS]
       for s in range(config.train.steps)])
  header = ["step"] + [f"{opt}_{label}_{what}" for opt in clip_losses
                       for label in ("unclipped", "clipped")
                       for what in ("loss", "grad_norm")]
  files += outputs.write_table(
      output_dir, "clipping", header,
      [[s] + [series[opt][label][s] for opt in clip_losses
               for label in ("unclipped", "clipped")
               for series in (clip_losses, clip_grads)]
       for s in range(config.train.steps)])

  figures: dict[str, float] = {
      f"ratio {n} {s}": ratios[n, s] for n in MODELS
      for s in ("init", "trained")}
  figures.update({f"final loss {n}": _final_loss(losses[n]) for n in MODELS})
  figures["trivial-predictor loss"] = baseline
  for opt, result in clipping.items():
    for label in ("unclipped", "clipped"):
      figures[f"{opt} {label} final loss"] = result[f"final_{label}"]
  files += [os.path.join(output_dir, f) for f in ("summary.md",
                                                  "summary.json")]
  report = reporting.Report(
      name="gradient_flow", device=outputs.device_description(),
      figures=figures, claims=_claims(ratios, clipping, time), files=files)
  report.write(output_dir)
  return report
