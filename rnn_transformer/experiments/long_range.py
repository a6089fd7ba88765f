r"""Accuracy against dependency distance per backbone (seed chapters 2 and 3).

The seed says a vanilla RNN forgets beyond short distances (its gradients
vanish, chapter 2), an LSTM (and GRU) carries information over a few hundred
steps, and a Transformer connects any two positions directly (chapter 3).
This experiment trains every backbone on the same task, `first_token`
(remember the class token across `distance` noise tokens, see
`rnn_transformer.training.tasks.FirstToken`), with the same budget (steps, batch,
learning rate, schedule), for several seeds and distances, and scores each
run on held-out sequences.

    python scripts/experiment.py --config=configs/experiments/long_range.py \
        --output_dir=/tmp/exp
    python scripts/experiment.py --config=configs/experiments/long_range.py:large \
        --config.seeds=5 --output_dir=/tmp/exp

Results hold for that fixed small budget: a backbone that fails a distance
here might learn it with more steps or data.

Speed: one compiled program per backbone. Every model here is causal, so
the output at position `d` of a sequence of the longest length sees exactly
a `FirstToken(distance=d)` input (`score_at`); all distances therefore share
one sequence length, and a whole run (`lax.scan` over the steps, held-out
evaluation) is `jax.vmap`-ed over every (seed, distance) pair. The initial
parameters are made before, one unbatched init per seed
(`train.init_params_per_key`): a vmapped init puts batched LAPACK QR in the
program, which deadlocked XLA:CPU. Compilation, which dominates on a CPU at
these sizes, is paid four times, not once per cell. The update is the
library's (`train.make_optimizer`, `train.make_train_step`,
`train.make_eval_step`); no checkpoints are written.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from rnn_transformer.training import tasks
from rnn_transformer.training import train
from rnn_transformer.training import train_config
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.experiments import progress
from rnn_transformer.experiments import reporting
from rnn_transformer.benchmarks import outputs

NAME = "long_range"
# minGRU and LRU (recurrences linear in h, scanned in parallel over time)
# run on the same task and budget as the classic cells; no seed claim is
# about them, so they appear in the figures and tables only.
BACKBONES = ("rnn", "lstm", "gru", "mingru", "lru", "transformer")

# Verdict thresholds, on the mean held-out accuracy over seeds of one cell.
# "Solves" a distance: at least 90% correct.
SOLVED_ACCURACY = 0.9
# "Fails" at a distance: within 10% of the way from chance to perfect, the
# margin `train.summary` uses for "did NOT learn".
CHANCE_MARGIN = 0.1
# "Remembers longer" than the RNN, at the distances the RNN does not solve:
# a longer solved range, or mean accuracy higher by at least this much.
MIN_GAIN = 0.1
# The seed's "a few hundred steps" for the LSTM.
FEW_HUNDRED = 200

# The seed's claims, as the report states them.
RNN_FORGETS = "A vanilla RNN forgets beyond short distances"
GATED_REMEMBER_LONGER = ("LSTMs and GRUs remember over longer distances than "
                         "the vanilla RNN")
LSTM_FEW_HUNDRED = (f"An LSTM remembers over a few hundred (>= {FEW_HUNDRED}) "
                    f"steps")
TRANSFORMER_SOLVES_ALL = ("A Transformer connects any two positions directly: "
                          "it solves every distance")


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  """The experiment at `scale`: "tiny" (seconds), "default", "large" (GPU).

  "default" takes a few minutes on a 2-core CPU; "large" reaches distances
  of 500 with more seeds, steps and width.
  """
  scale = reporting.check_scale(scale)
  config = ml_collections.ConfigDict()
  config.experiment = NAME
  config.scale = scale
  config.backbones = BACKBONES  # compared on the same task and budget
  config.seeds = 3  # runs per cell, seeds 0..seeds-1 (init and data)
  config.distances = (5, 10, 25, 50, 100)  # noise tokens after the class token
  config.num_classes = 4  # chance accuracy 1 / num_classes
  config.num_noise = 8  # distinct noise tokens
  config.model_dim = 32  # hidden size of every backbone
  config.recurrent_layers = 1  # layers of every recurrent backbone
  config.transformer_layers = 1  # Transformer blocks; one attention hop suffices
  config.num_heads = 2  # Transformer attention heads
  config.eval_examples = 512  # held-out sequences per seed
  # Held-out evaluations along training, evenly spaced, the last at the end
  # (train.steps must divide evenly): the learning curves. 1: the end only.
  config.curve_points = 1
  # Initial forget-gate bias of the LSTM (ModelConfig.forget_bias).
  config.lstm_forget_bias = 1.0
  # XLA:CPU backend optimisation level 0: compiles ~2.5x faster, runs slower;
  # pays off only where compilation dominates (the tiny scale).
  config.fast_compile = False
  config.train = ml_collections.ConfigDict()
  config.train.steps = 300  # optimizer updates, the same for every backbone
  config.train.batch_size = 32  # sequences per update
  config.train.learning_rate = 3e-3  # peak AdamW step size
  config.train.warmup_steps = 30  # linear warmup, then cosine decay to 0
  config.train.weight_decay = 1e-4  # AdamW decoupled weight decay
  config.train.grad_clip_norm = 1.0  # global-norm clipping; <= 0 disables
  if scale == "tiny":
    config.seeds = 2
    config.distances = (4, 16)
    config.model_dim = 16
    config.eval_examples = 256
    config.fast_compile = True
    config.train.steps = 100
    config.train.warmup_steps = 10
    config.curve_points = 2
    config.train.learning_rate = 1e-2
  elif scale == "large":
    config.seeds = 5
    config.distances = (5, 10, 25, 50, 100, 200, 500)
    config.model_dim = 128
    config.transformer_layers = 2
    config.num_heads = 4
    config.eval_examples = 2048
    config.train.steps = 3000
    config.train.batch_size = 64
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 200
  return config


def _backbone_config(config: ml_collections.ConfigDict,
                     backbone: str) -> ml_collections.ConfigDict:
  """The library's training config for `backbone` at the longest distance."""
  longest = max(config.distances)
  cell = train_config.task_config(
      "first_token", backbone, distance=longest,
      num_classes=config.num_classes, num_noise=config.num_noise)
  cell.model.model_dim = config.model_dim
  if backbone == "lstm":
    cell.model.forget_bias = config.lstm_forget_bias
  if backbone == "transformer":
    cell.model.num_layers = config.transformer_layers
    cell.model.num_heads = config.num_heads
    cell.model.max_len = longest + 1
  else:
    cell.model.num_layers = config.recurrent_layers
  cell.train.update(config.train.to_dict())
  return cell


def parameter_count(config: ml_collections.ConfigDict, backbone: str) -> int:
  """Trainable parameters of `backbone` as the experiment builds it."""
  task, model_config = train_config.validate(_backbone_config(config, backbone))
  shapes = jax.eval_shape(build_backbone(model_config).init, jax.random.key(0),
                          jnp.zeros((1, task.seq_len), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def score_at(batch: tasks.Batch, distance: jax.Array) -> tasks.Batch:
  """A `FirstToken` batch re-targeted to answer at position `distance`.

  For a causal model the output at position `d` depends on tokens `0..d`
  only, which are distributed exactly as `FirstToken(distance=d)`: the class
  token, then `d` noise tokens. Scoring position `d` of a longer sequence is
  therefore the task at distance `d`, and every distance shares one sequence
  length and so one compiled program.

  Args:
    batch: from `FirstToken.batch`, inputs `(batch, time)` with the class
      token at position 0.
    distance: scalar int in `[1, time)`, may be traced.

  Returns:
    The batch with `targets` the class token and `weights` 1 at position
    `distance` only, both `(batch, time)`.
  """
  inputs = batch["inputs"]
  at = (jnp.arange(inputs.shape[1]) == distance)[None, :]
  return {"inputs": inputs,
          "targets": jnp.where(at, inputs[:, :1], 0).astype(jnp.int32),
          "weights": jnp.broadcast_to(at, inputs.shape).astype(jnp.float32)}


def compile_runs(config: ml_collections.ConfigDict, backbone: str
                 ) -> tuple[Any, tuple[Any, ...], tuple[int, int]]:
  """The compiled program of `train_backbone`, its arguments and the
  `(seeds, distances)` shape of its flat outputs.

  The program is `vmap(run)` over (initial params, seed key, distance)
  triples; the parameters come from `train.init_params_per_key`, outside it.
  """
  cell = _backbone_config(config, backbone)
  task, model_config = train_config.validate(cell)
  model = build_backbone(model_config)
  tx, schedule = train.make_optimizer(cell)
  # The same update on one flat vector: a third fewer ops to compile.
  tx = optax.flatten(tx)
  train_step = train.make_train_step(model, task, schedule, grad_accum_steps=1)
  eval_step = train.make_eval_step(model, task)
  steps, batch_size = cell.train.steps, cell.train.batch_size
  points = config.curve_points
  eval_chunks = max(1, -(-config.eval_examples // batch_size))
  sample = jnp.zeros((1, task.seq_len), jnp.int32)

  def run_one(params, key, distance):
    _, data_key, dropout_key, eval_key = jax.random.split(key, 4)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=tx)

    def body(state, step):
      batch = score_at(task.batch(jax.random.fold_in(data_key, step),
                                  batch_size), distance)
      state, metrics = train_step(state, batch,
                                  jax.random.fold_in(dropout_key, step))
      return state, metrics["loss"]

    def evaluate(params):
      def chunk(index):  # in training-sized chunks, to bound memory
        batch = task.eval_batch(jax.random.fold_in(eval_key, index),
                                batch_size)
        return eval_step(params, score_at(batch, distance))

      # Every chunk scores batch_size positions, so the mean of chunk means
      # is the mean over all held-out sequences (the same ones every time).
      return jax.tree.map(jnp.mean, jax.lax.map(chunk,
                                                jnp.arange(eval_chunks)))

    def segment(state, first):  # steps // points updates, then evaluate
      state, losses = jax.lax.scan(
          body, state, first + jnp.arange(steps // points))
      return state, (losses, evaluate(state.params))

    _, (losses, curve) = jax.lax.scan(
        segment, state, jnp.arange(points) * (steps // points))
    losses = losses.reshape(-1)
    tail = max(1, steps // 10)
    return {"accuracy": curve["accuracy"][-1], "loss": curve["loss"][-1],
            "train_loss": losses[-tail:].mean(),
            "curve_accuracy": curve["accuracy"]}

  # One flat vmap over (seed, distance) pairs compiles faster on XLA:CPU
  # than nested vmaps.
  seeds, distances = np.meshgrid(np.arange(config.seeds),
                                 np.asarray(config.distances), indexing="ij")
  seed_keys = [jax.random.key(seed) for seed in range(config.seeds)]
  # Parameters outside the vmapped program: see `train.init_params_per_key`.
  params = train.init_params_per_key(
      model, [jax.random.split(key, 4)[0] for key in seed_keys], sample)
  args = (jax.tree.map(lambda x: x[seeds.ravel()], params),
          jnp.stack([seed_keys[seed] for seed in seeds.ravel()]),
          jnp.asarray(distances.ravel(), jnp.int32))
  compiled = jax.jit(jax.vmap(run_one)).lower(*args).compile(
      compiler_options=_compiler_options(config.fast_compile))
  return compiled, args, seeds.shape


def train_backbone(config: ml_collections.ConfigDict,
                   backbone: str) -> dict[str, np.ndarray]:
  """Trains `backbone` for every seed and distance; held-out metrics.

  One program, compiled once: a run (`lax.scan` over the steps, then an
  evaluation) is `jax.vmap`-ed over all (seed, distance) pairs. Seed `s`
  fixes the initial parameters and the data stream, shared by all
  distances, so distances differ only in the position that is scored.

  Returns:
    A dict of `(seeds, distances)` arrays: `accuracy` and `loss` on
    `config.eval_examples` (rounded up to whole batches) fresh sequences per
    run, `train_loss`, the mean training loss over the last tenth of the
    steps, and `curve_accuracy`, `(seeds, distances, curve_points)`: the
    held-out accuracy after each `train.steps / curve_points` updates.
  """
  compiled, args, shape = compile_runs(config, backbone)
  metrics = jax.device_get(compiled(*args))
  return {k: np.asarray(v).reshape(shape + np.shape(v)[1:])
          for k, v in metrics.items()}


def _compiler_options(fast_compile: bool) -> dict[str, int]:
  if jax.default_backend() != "cpu" or not fast_compile:
    return {}
  return {"xla_backend_optimization_level": 0}


def chance_accuracy(config: ml_collections.ConfigDict) -> float:
  return 1.0 / config.num_classes


def _reach(accuracy: dict[int, float]) -> int:
  """The longest distance up to which every measured distance is solved."""
  reach = 0
  for distance in sorted(accuracy):
    if accuracy[distance] < SOLVED_ACCURACY:
      break
    reach = distance
  return reach


def _fmt(accuracy: dict[int, float]) -> str:
  return ", ".join(f"{a:.2f}@{d}" for d, a in sorted(accuracy.items()))


def _rnn_forgets(acc: dict[int, float], failed_below: float) -> reporting.Claim:
  text = RNN_FORGETS
  shortest, longest = min(acc), max(acc)
  evidence = (f"rnn accuracy (mean@distance) {_fmt(acc)}; solved (>= "
              f"{SOLVED_ACCURACY}) up to distance {_reach(acc)}; chance level "
              f"is below {failed_below:.3f}")
  if acc[shortest] < SOLVED_ACCURACY:
    return reporting.Claim(text, "partly supported", evidence + (
        "; it does not solve even the shortest distance, so forgetting is "
        "not separated from failing to train"))
  if acc[longest] < failed_below:
    return reporting.Claim(text, "supported", evidence)
  if _reach(acc) == longest:
    return reporting.Claim(text, "not supported",
                           evidence + "; it solves every distance measured")
  return reporting.Claim(text, "partly supported", evidence + (
      "; it degrades but stays above chance at the longest distance"))


def _gated_remember_longer(mean_accuracy: dict[str, dict[int, float]]
                           ) -> reporting.Claim:
  text = GATED_REMEMBER_LONGER
  rnn = mean_accuracy["rnn"]
  gated = [b for b in ("lstm", "gru") if b in mean_accuracy]
  beyond = [d for d in sorted(rnn) if rnn[d] < SOLVED_ACCURACY]
  if not beyond:
    return reporting.Claim(text, "not measured", (
        f"the rnn solves every distance measured ({_fmt(rnn)}); longer "
        f"distances are needed to separate the backbones"))
  longer, parts = [], []
  for b in gated:
    acc = mean_accuracy[b]
    gain = float(np.mean([acc[d] - rnn[d] for d in beyond]))
    if _reach(acc) > _reach(rnn) or gain >= MIN_GAIN:
      longer.append(b)
    parts.append(f"{b} solved up to {_reach(acc)}, {gain:+.2f} accuracy over "
                 f"the rnn there")
  evidence = (f"at the distances the rnn does not solve ({beyond}; it solves "
              f"up to {_reach(rnn)}): " + "; ".join(parts))
  if len(longer) == len(gated):
    verdict = "supported"
  elif longer:
    verdict = "partly supported"
  else:
    verdict = "not supported"
  return reporting.Claim(text, verdict, evidence)


def _lstm_few_hundred(acc: dict[int, float],
                      failed_below: float) -> reporting.Claim:
  text = LSTM_FEW_HUNDRED
  evidence = (f"lstm accuracy {_fmt(acc)}; solved up to distance "
              f"{_reach(acc)}")
  far = [d for d in sorted(acc) if d >= FEW_HUNDRED]
  if not far:
    return reporting.Claim(text, "not measured", evidence + (
        f"; distances stop at {max(acc)} (the large scale reaches "
        f"{FEW_HUNDRED})"))
  if _reach(acc) >= FEW_HUNDRED:
    verdict = "supported"
  elif acc[far[0]] >= failed_below:
    verdict = "partly supported"
    evidence += f"; above chance but not solved at {far[0]}"
  else:
    verdict = "not supported"
  return reporting.Claim(text, verdict, evidence)


def _transformer_solves_all(acc: dict[int, float]) -> reporting.Claim:
  text = TRANSFORMER_SOLVES_ALL
  solved = [d for d, a in acc.items() if a >= SOLVED_ACCURACY]
  evidence = (f"transformer accuracy {_fmt(acc)}; solves {len(solved)} of "
              f"{len(acc)} distances")
  if len(solved) == len(acc):
    verdict = "supported"
  elif 2 * len(solved) >= len(acc):
    verdict = "partly supported"
  else:
    verdict = "not supported"
  return reporting.Claim(text, verdict, evidence)


def claims(mean_accuracy: dict[str, dict[int, float]],
           chance: float) -> list[reporting.Claim]:
  """The seed's claims judged from `mean_accuracy[backbone][distance]`.

  Args:
    mean_accuracy: mean held-out accuracy over seeds per backbone and
      distance; a claim about a backbone that is missing is "not measured".
    chance: accuracy of guessing, 1 / num_classes.

  Returns:
    One `Claim` per seed statement, its verdict computed with the module's
    thresholds (`SOLVED_ACCURACY`, `CHANCE_MARGIN`, `MIN_GAIN`,
    `FEW_HUNDRED`).
  """
  failed_below = chance + CHANCE_MARGIN * (1.0 - chance)
  acc = {b: mean_accuracy.get(b) for b in BACKBONES}
  missing = lambda text, needs: reporting.Claim(text, "not measured",
                                                f"no {needs} runs")
  return [
      _rnn_forgets(acc["rnn"], failed_below) if acc["rnn"]
      else missing(RNN_FORGETS, "rnn"),
      _gated_remember_longer(mean_accuracy)
      if acc["rnn"] and (acc["lstm"] or acc["gru"])
      else missing(GATED_REMEMBER_LONGER,
                   "lstm or gru" if acc["rnn"] else "rnn"),
      _lstm_few_hundred(acc["lstm"], failed_below) if acc["lstm"]
      else missing(LSTM_FEW_HUNDRED, "lstm"),
      _transformer_solves_all(acc["transformer"]) if acc["transformer"]
      else missing(TRANSFORMER_SOLVES_ALL, "transformer"),
  ]


def _plot(config: ml_collections.ConfigDict,
          accuracy: dict[tuple[str, int], np.ndarray], output_dir: str) -> str:
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  distances = np.asarray(config.distances)
  for i, backbone in enumerate(config.backbones):
    runs = np.stack([accuracy[backbone, d] for d in config.distances])
    mean = runs.mean(axis=1)
    # A small horizontal offset per backbone keeps overlapping points apart.
    shift = 1.0 + 0.04 * (i - (len(config.backbones) - 1) / 2)
    ax.errorbar(distances * shift, mean,
                yerr=[mean - runs.min(axis=1), runs.max(axis=1) - mean],
                marker="o", capsize=3, label=backbone)
  chance = chance_accuracy(config)
  ax.axhline(chance, color="gray", linestyle="--",
             label=f"chance (1/{config.num_classes})")
  ax.axhline(SOLVED_ACCURACY, color="gray", linestyle=":",
             label=f"solved (>= {SOLVED_ACCURACY})")
  ax.set_xscale("log")
  ax.set_xticks(distances, [str(d) for d in distances])
  ax.minorticks_off()
  ax.set_ylim(0.0, 1.05)
  ax.set_xlabel("dependency distance (noise tokens between class token and "
                "answer)")
  ax.set_ylabel("held-out accuracy (fraction correct)")
  train_cfg = config.train
  ax.set_title(
      f"Remember the first token: mean and min/max over {config.seeds} seeds\n"
      f"{train_cfg.steps} steps x batch {train_cfg.batch_size}, lr "
      f"{train_cfg.learning_rate:g}, width {config.model_dim}; "
      f"{outputs.device_description()}", fontsize=9)
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.grid(alpha=0.3)
  return outputs.save_figure(fig, output_dir, NAME)


def _plot_curves(config: ml_collections.ConfigDict,
                 curves: dict[tuple[str, int], np.ndarray],
                 output_dir: str) -> str:
  """Held-out accuracy against updates, one panel per distance."""
  plt = outputs.pyplot()
  distances = list(config.distances)
  fig, axes = plt.subplots(1, len(distances), sharey=True,
                           figsize=(4 * len(distances) + 1.5, 4))
  axes = np.atleast_1d(axes)
  every = config.train.steps // config.curve_points
  steps = every * np.arange(1, config.curve_points + 1)
  for ax, distance in zip(axes, distances):
    for i, backbone in enumerate(config.backbones):
      runs = curves[backbone, distance]  # (seeds, points)
      ax.plot(steps, runs.mean(axis=0), color=f"C{i}", label=backbone)
      ax.fill_between(steps, runs.min(axis=0), runs.max(axis=0),
                      color=f"C{i}", alpha=0.15)
    ax.axhline(chance_accuracy(config), color="gray", linestyle="--")
    ax.set_title(f"distance {distance}", fontsize=9)
    ax.set_xlabel("updates")
    ax.set_ylim(0.0, 1.05)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("held-out accuracy (mean, min-max over seeds)")
  axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  train_cfg = config.train
  fig.suptitle(
      f"Remember the first token: learning curves, batch "
      f"{train_cfg.batch_size}, lr {train_cfg.learning_rate:g}, width "
      f"{config.model_dim}, LSTM forget bias {config.lstm_forget_bias:g}; "
      f"{outputs.device_description()}", fontsize=9)
  return outputs.save_figure(fig, output_dir, f"{NAME}_curves")


def run(config: ml_collections.ConfigDict, output_dir: str) -> reporting.Report:
  """Trains every (backbone, distance, seed); writes figure, tables, summary."""
  start = time.perf_counter()
  unknown = sorted(set(config.backbones) - set(BACKBONES))
  if unknown:
    raise ValueError(f"config.backbones: expected names from {BACKBONES}, got "
                     f"{unknown}")
  distances = list(config.distances)
  if not distances or len(set(distances)) != len(distances) or any(
      not isinstance(d, int) or d < 1 for d in distances):
    raise ValueError(f"config.distances: expected distinct positive integers, "
                     f"got {config.distances}")
  if config.seeds < 1:
    raise ValueError(f"config.seeds: expected at least 1, got {config.seeds}")
  outputs.check_positive(config, "curve_points")
  if config.train.steps % config.curve_points:
    raise ValueError(f"config.curve_points: expected a divisor of "
                     f"config.train.steps ({config.train.steps}), got "
                     f"{config.curve_points}")
  results, seconds = {}, {}
  for backbone in progress.cells(NAME, config.backbones):
    backbone_start = time.perf_counter()
    metrics = train_backbone(config, backbone)
    seconds[backbone] = time.perf_counter() - backbone_start
    for j, distance in enumerate(config.distances):
      results[backbone, distance] = {k: v[:, j] for k, v in metrics.items()}

  raw_rows, summary_rows = [], []
  mean_accuracy: dict[str, dict[int, float]] = {}
  for (backbone, distance), metrics in results.items():
    for seed in range(config.seeds):
      raw_rows.append((backbone, distance, seed,
                       float(metrics["accuracy"][seed]),
                       float(metrics["loss"][seed]),
                       float(metrics["train_loss"][seed])))
    acc = metrics["accuracy"].astype(np.float64)
    mean_accuracy.setdefault(backbone, {})[distance] = float(acc.mean())
    summary_rows.append((backbone, distance, float(acc.mean()),
                         float(acc.std()), float(acc.min()), float(acc.max())))
  files = outputs.write_table(
      output_dir, NAME, ["backbone", "distance", "seed", "accuracy",
                         "eval_loss", "final_train_loss"], raw_rows)
  files += outputs.write_table(
      output_dir, f"{NAME}_summary",
      ["backbone", "distance", "mean_accuracy", "std_accuracy",
       "min_accuracy", "max_accuracy"], summary_rows)
  files.append(_plot(config,
                     {k: v["accuracy"] for k, v in results.items()},
                     output_dir))
  if config.curve_points > 1:
    every = config.train.steps // config.curve_points
    files += outputs.write_table(
        output_dir, f"{NAME}_curves",
        ["backbone", "distance", "seed", "step", "accuracy"],
        [(backbone, distance, seed, (i + 1) * every, float(acc))
         for (backbone, distance), metrics in results.items()
         for seed in range(config.seeds)
         for i, acc in enumerate(metrics["curve_accuracy"][seed])])
    files.append(_plot_curves(config, {k: v["curve_accuracy"]
                                       for k, v in results.items()},
                              output_dir))

  chance = chance_accuracy(config)
  figures: dict[str, float] = {
      "steps": config.train.steps, "batch_size": config.train.batch_size,
      "learning_rate": config.train.learning_rate, "seeds": config.seeds,
      "chance_accuracy": chance}
  for backbone, acc in mean_accuracy.items():
    figures[f"{backbone}_solved_up_to_distance"] = _reach(acc)
    figures[f"{backbone}_accuracy_at_{max(acc)}"] = acc[max(acc)]
    figures[f"{backbone}_parameters"] = parameter_count(config, backbone)
    figures[f"{backbone}_seconds"] = round(seconds[backbone], 1)
  figures["wall_seconds"] = round(time.perf_counter() - start, 1)
  report = reporting.Report(
      name=(f"{NAME}: accuracy against dependency distance at a fixed small "
            f"budget ({config.train.steps} steps x batch "
            f"{config.train.batch_size}, width {config.model_dim})"),
      device=outputs.device_description(), figures=figures,
      claims=claims(mean_accuracy, chance), files=files)
  files.append(report.write(output_dir))
  files.append(os.path.join(output_dir, "summary.json"))
  return report

