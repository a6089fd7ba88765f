"""The training loop: optax, orbax checkpoints, metrics, data parallelism.

`train_and_evaluate(config, workdir)` trains `config.model` on `config.task`
and is what `scripts/train.py` runs. Relaunching with the same workdir
resumes from the latest checkpoint, including the optimizer state, the step
and so the data-stream position (batch `s` is a pure function of the seed
and `s`), so an interrupted run continued to the end equals an uninterrupted
one.

Data parallelism: one `data` mesh axis over all devices; batches are split
along it, parameters and optimizer state are replicated; XLA inserts the
gradient all-reduce.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rnn_transformer.models import generation
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.training import metric_writer
from rnn_transformer.training import tasks
from rnn_transformer.training import train_config  # noqa: F401 (scripts use train.train_config)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"

# Dense bf16 peak FLOP/s per device, for model FLOPs utilisation on GPUs.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


# Fields a relaunch may change on an existing workdir: how long to train and
# how often to log, evaluate and save. Everything else shapes the parameters,
# the optimizer state or the data stream the checkpoints belong to.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.eval_every",
                    "train.eval_batches", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.progress_bar",
                    "train.sample_chars")


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is intact."""


class WorkdirMismatchError(ValueError):
  """A workdir holds a run this config cannot continue; nothing was written.

  `fields` lists the dotted config paths (`model.model_dim`, ...) that differ
  from the saved config (empty when there is no saved config to compare).
  """

  def __init__(self, message: str, fields: tuple[str, ...] = ()):
    super().__init__(message)
    self.fields = fields


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists and tuples are leaves."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
  return flat


def _as_saved(config: ml_collections.ConfigDict) -> dict:
  """The config as `config.json` stores it (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises unless `config` may train in `workdir`; writes nothing.

  A fresh directory is fine. A run's directory must have been trained with
  the same config up to `RESUMABLE_FIELDS`; checkpoints without a
  `config.json` cannot be matched and are refused too.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
      raise WorkdirMismatchError(
          f"workdir: {checkpoints} holds checkpoints but {path} is missing, "
          f"so they cannot be matched to this config; use a new --workdir. "
          f"The workdir was not modified.")
    return
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  new = _as_saved(config)
  flat_saved, flat_new = _flatten(saved), _flatten(new)
  differ = sorted(k for k in set(flat_saved) | set(flat_new)
                  if k not in RESUMABLE_FIELDS
                  and flat_saved.get(k, "<absent>") != flat_new.get(
                      k, "<absent>"))
  if differ:
    changes = "; ".join(f"{k}: saved {flat_saved.get(k, '<absent>')!r}, now "
                        f"{flat_new.get(k, '<absent>')!r}" for k in differ)
    raise WorkdirMismatchError(
        f"workdir: {workdir} holds a run with another config ({changes}). A "
        f"resume may change only {', '.join(RESUMABLE_FIELDS)}. Use a new "
        f"--workdir, or relaunch with the saved values; the workdir was not "
        f"modified.", tuple(differ))


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `config.json` atomically: a kill leaves the old or the new one."""
  path = os.path.join(workdir, CONFIG_FILE)
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup and cosine decay, after global-norm clipping.

  Clipping the global gradient norm is the seed's cure for exploding
  gradients (Pascanu et al., 2013).
  """
  train = config.train
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate,
      warmup_steps=train.warmup_steps, decay_steps=train.steps, end_value=0.0)
  parts = []
  if train.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train.grad_clip_norm))
  parts.append(optax.adamw(schedule, weight_decay=train.weight_decay))
  return optax.chain(*parts), schedule


def _loss_and_metrics(model: nn.Module, task: tasks.Task, params: Any,
                      batch: tasks.Batch, rng: jax.Array,
                      deterministic: bool) -> tuple[jax.Array, dict]:
  out = model.apply({"params": params}, batch["inputs"],
                    deterministic=deterministic, rngs={"dropout": rng})
  metrics = task.metrics(out.logits, batch)
  return metrics["loss"], metrics


def make_train_step(model: nn.Module, task: tasks.Task,
                    schedule: optax.Schedule, grad_accum_steps: int):
  """`(state, batch, rng) -> (state, metrics)`; averages micro-batch grads."""

  def grads_of(params, batch, rng):
    grad_fn = jax.value_and_grad(_loss_and_metrics, argnums=2, has_aux=True)
    (_, metrics), grads = grad_fn(model, task, params, batch, rng, False)
    return grads, metrics

  def train_step(state: train_state.TrainState, batch: tasks.Batch,
                 rng: jax.Array):
    if grad_accum_steps == 1:
      grads, metrics = grads_of(state.params, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape(
          (grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:]),
                           batch)

      def accumulate(total, xs):
        index, micro_batch = xs
        grads, metrics = grads_of(state.params, micro_batch,
                                  jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, total, (grads, metrics)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          grads_of, state.params, jax.tree.map(lambda x: x[0], micro), rng))
      total, _ = jax.lax.scan(accumulate, zeros,
                              (jnp.arange(grad_accum_steps), micro))
      grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, total)
    metrics["grad_norm"] = jnp.sqrt(sum(  # optax renames its helper across
        jnp.sum(jnp.square(g.astype(jnp.float32)))  # versions
        for g in jax.tree.leaves(grads)))
    metrics["learning_rate"] = schedule(state.step)
    return state.apply_gradients(grads=grads), metrics

  return train_step


def init_params_per_key(model: nn.Module, keys: Any, sample: jax.Array
                        ) -> Any:
  """Initial parameters for each key, stacked on a leading `(len(keys),)` axis.

  One compiled, unbatched `model.init`, run once per key, rather than
  `vmap(model.init)` inside a larger program: under vmap the orthogonal
  recurrent initialiser becomes a batched LAPACK QR, which XLA:CPU runs on
  its intra-op pool with `ParallelBatchMap` and which deadlocked that
  2-thread pool (every thread parked in `BlockingCounter::Wait`). Unbatched,
  each QR is one LAPACK call and the vmapped program holds none.

  Args:
    model: any Flax module.
    keys: a sequence (or `(n,)` array) of PRNG keys.
    sample: an input of the shape `model.init` needs.
  """
  init = jax.jit(lambda key: model.init(key, sample)["params"])
  per_key = [init(key) for key in keys]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *per_key)


def make_eval_step(model: nn.Module, task: tasks.Task):
  def eval_step(params, batch):
    _, metrics = _loss_and_metrics(model, task, params, batch,
                                   jax.random.key(0), True)
    return metrics
  return eval_step


class Trainer:
  """Everything a run needs, built once from a validated config."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.task, self.model_config = train_config.validate(config)
    self.model = build_backbone(self.model_config)
    train = config.train
    self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.tx, self.schedule = make_optimizer(config)
    root = jax.random.key(config.seed)
    self.init_key, self.data_key, self.dropout_key, self.eval_key = (
        jax.random.split(root, 4))
    self.next_batch = jax.jit(
        lambda step: self.task.batch(jax.random.fold_in(self.data_key, step),
                                     train.batch_size),
        out_shardings=self.data_sharding)
    self.train_step = jax.jit(
        make_train_step(self.model, self.task, self.schedule,
                        train.grad_accum_steps),
        in_shardings=(self.replicated, self.data_sharding, self.replicated),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(make_eval_step(self.model, self.task),
                             in_shardings=(self.replicated, self.data_sharding),
                             out_shardings=self.replicated)
    self.checkpoints = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=train.keep_checkpoints, create=True,
            enable_async_checkpointing=False))

  def init_state(self) -> train_state.TrainState:
    sample = self.task.batch(jax.random.key(0), 1)["inputs"]

    def init(key):
      params = self.model.init(key, sample)["params"]
      return train_state.TrainState.create(apply_fn=self.model.apply,
                                           params=params, tx=self.tx)
    return jax.jit(init, out_shardings=self.replicated)(self.init_key)

  def restore_or_init(self) -> train_state.TrainState:
    """The latest checkpoint's state, or a fresh one."""
    state = self.init_state()
    step = self.checkpoints.latest_step()
    if step is None:
      return state
    target = {"params": state.params, "opt_state": state.opt_state,
              "step": state.step}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self.checkpoints.restore(
        step, args=ocp.args.StandardRestore(abstract))
    restored = jax.device_put(restored, self.replicated)
    return state.replace(params=restored["params"],
                         opt_state=restored["opt_state"],
                         step=restored["step"])

  def save(self, state: train_state.TrainState) -> None:
    step = int(state.step)
    if self.checkpoints.latest_step() == step:
      return
    self.checkpoints.save(step, args=ocp.args.StandardSave(
        {"params": state.params, "opt_state": state.opt_state,
         "step": state.step}), force=True)
    self.checkpoints.wait_until_finished()

  def evaluate(self, params: Any) -> dict[str, float]:
    """Mean metrics over `config.train.eval_batches` held-out batches."""
    train = self.config.train
    sums: dict[str, float] = {}
    for i in range(train.eval_batches):
      batch = jax.device_put(
          self.task.eval_batch(jax.random.fold_in(self.eval_key, i),
                               train.batch_size), self.data_sharding)
      for k, v in jax.device_get(self.eval_step(params, batch)).items():
        sums[k] = sums.get(k, 0.0) + float(v) / train.eval_batches
    return sums

  def sample_text(self, params: Any, step: int) -> str | None:
    """For language models: characters generated from a validation prompt."""
    if not isinstance(self.task, tasks.CharLM):
      return None
    prompt = self.task.eval_batch(jax.random.fold_in(self.eval_key, step),
                                  1)["inputs"][:, :16]
    budget = self.config.train.sample_chars
    if self.model_config.backbone == "transformer":
      budget = min(budget, self.model_config.max_len - prompt.shape[1])
    tokens = generation.generate(
        self.model, jax.device_get(params), prompt, budget, temperature=0.8,
        rng=jax.random.fold_in(self.eval_key, step))
    return self.task.decode(tokens[0])


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  stacked = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in stacked])) for k in stacked[0]}


def _first_non_finite(history: list[dict[str, jax.Array]],
                      first_step: int) -> int | None:
  losses = np.asarray(jax.device_get([h["loss"] for h in history]))
  bad = np.flatnonzero(~np.isfinite(losses))
  return None if bad.size == 0 else first_step + int(bad[0])


def _flops_per_step(trainer: Trainer, state, batch) -> float | None:
  try:
    analysis = trainer.train_step.lower(
        state, batch, trainer.dropout_key).compile().cost_analysis()
  except Exception:  # noqa: BLE001 - cost analysis is best effort per backend
    return None
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else {}
  return analysis.get("flops") if analysis else None


def _peak_flops() -> float | None:
  device = jax.devices()[0]
  if device.platform != "gpu":
    return None
  for name, peak in PEAK_FLOPS.items():
    if name in device.device_kind:
      return peak * jax.device_count()
  return None


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains, evaluates and checkpoints; returns the final eval metrics."""
  check_workdir(config, workdir)  # before anything touches the workdir
  os.makedirs(workdir, exist_ok=True)
  log_file = metric_writer.log_to_file(workdir)
  try:
    return _train(config, workdir)
  finally:
    logging.getLogger().removeHandler(log_file)
    log_file.close()


def _train(config: ml_collections.ConfigDict,
           workdir: str) -> dict[str, float]:
  trainer = Trainer(config, workdir)
  train = config.train
  state = trainer.restore_or_init()
  _write_config(config, workdir)
  step = int(state.step)
  if trainer.checkpoints.latest_step() is not None:
    metric_writer.console(f"resumed from checkpoint at step {step}")
  writer = metric_writer.MetricWriter(workdir, train.steps,
                                      train.progress_bar, start_step=step)
  tokens_per_step = train.batch_size * trainer.task.seq_len
  peak = _peak_flops()
  flops = None
  history: list[dict[str, jax.Array]] = []
  final = None
  last_log_step, last_log_time = step, time.perf_counter()
  try:
    while step < train.steps:
      batch = trainer.next_batch(step)
      if peak is not None and flops is None:  # once: compile for cost analysis
        flops = _flops_per_step(trainer, state, batch) or 0.0
      state, metrics = trainer.train_step(
          state, batch, jax.random.fold_in(trainer.dropout_key, step))
      step += 1
      writer.progress(step)
      history.append(metrics)
      log_now = step % train.log_every == 0 or step == train.steps
      save_now = step % train.checkpoint_every == 0 or step == train.steps
      if log_now or save_now:
        bad = _first_non_finite(history, step - len(history) + 1)
        if bad is not None:
          raise NonFiniteLossError(
              f"loss became non-finite at step {bad}; the last good "
              f"checkpoint is step {trainer.checkpoints.latest_step()} in "
              f"{os.path.join(workdir, CHECKPOINT_DIR)} (left intact)")
      if log_now:
        scalars = _mean_metrics(history)
        elapsed = time.perf_counter() - last_log_time
        steps_done = step - last_log_step
        scalars["step_time_s"] = elapsed / steps_done
        scalars["tokens_per_s"] = tokens_per_step * steps_done / elapsed
        if flops and peak:
          scalars["mfu"] = flops * steps_done / elapsed / peak
        writer.write(step, "train", scalars)
        history = []
        last_log_step, last_log_time = step, time.perf_counter()
      if save_now:
        trainer.save(state)
      if step % train.eval_every == 0 or step == train.steps:
        final = trainer.evaluate(state.params)
        writer.write(step, "eval", {**final, **{
            f"baseline_{k}": v for k, v in trainer.task.baseline.items()}})
        sample = trainer.sample_text(state.params, step)
        if sample is not None:
          writer.text(step, "sample", sample)
    if final is None:  # relaunched a finished run: nothing left to train
      final = trainer.evaluate(state.params)
  finally:
    writer.close()
    trainer.checkpoints.close()
  return final


def summary(task: tasks.Task, metrics: dict[str, float]) -> str:
  """One line a newcomer can read: each metric against its trivial baseline."""
  parts = []
  for name, baseline in task.baseline.items():
    if name == "loss" or name not in metrics:
      continue
    value = metrics[name]
    # "learned" needs a margin: 10% of the way from the baseline to perfect
    # (accuracy 1, error 0), so noise around chance does not count.
    if name in ("mse", "bits_per_char"):
      learned = value <= 0.9 * baseline
    else:
      learned = value >= baseline + 0.1 * (1.0 - baseline)
    parts.append(f"{name} {value:.4g} vs trivial baseline {baseline:.4g} "
                 f"({'learned' if learned else 'did NOT learn'})")
  loss_note = (f"loss {metrics['loss']:.4g} vs baseline "
               f"{task.baseline['loss']:.4g}")
  return f"{task.name}: " + "; ".join(parts + [loss_note])


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved in its workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f"workdir: no {CONFIG_FILE} in {workdir}; is it a "
                     f"training run's directory?")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def sample_workdir(workdir: str, prompt: str, num_chars: int, *,
                   temperature: float = 0.8, top_k: int | None = None,
                   seed: int = 0) -> str:
  """Text a char-LM run's latest checkpoint writes after `prompt`.

  Args:
    workdir: a `char_lm` training run's directory.
    prompt: at least one character, all from the training text's vocabulary.
    num_chars: characters to generate; a Transformer's `max_len` bounds
      `len(prompt) + num_chars`.
    temperature, top_k, seed: as `generation.generate` takes them (its `rng`
      is `seed`).

  Returns:
    The `num_chars` generated characters (without the prompt).
  """
  config = load_config(workdir)
  if config.task.name != "char_lm":
    raise ValueError(f"workdir: {workdir} is a {config.task.name!r} run; "
                     f"sampling text needs a 'char_lm' run")
  if not isinstance(prompt, str) or not prompt:
    raise ValueError(f"prompt: expected at least one character, got "
                     f"{prompt!r}")
  trainer = Trainer(config, workdir)
  try:
    if trainer.checkpoints.latest_step() is None:
      raise ValueError(f"workdir: no checkpoint under "
                       f"{os.path.join(workdir, CHECKPOINT_DIR)}")
    try:
      tokens = trainer.task.encode(prompt)[None, :]
    except ValueError as e:
      raise ValueError(f"prompt: {e}") from e
    limit = trainer.model.max_len
    if limit is not None and tokens.shape[1] + num_chars > limit:
      raise ValueError(
          f"num_chars: the prompt ({tokens.shape[1]} characters) plus "
          f"{num_chars} exceeds the model's max_len {limit}")
    params = jax.device_get(trainer.restore_or_init().params)
    out = generation.generate(trainer.model, params, tokens, num_chars,
                              temperature=temperature, top_k=top_k, rng=seed)
  finally:
    trainer.checkpoints.close()
  return trainer.task.decode(out[0, tokens.shape[1]:])


def evaluate_workdir(workdir: str) -> tuple[tasks.Task, dict[str, float],
                                            str | None]:
  """Restores the latest checkpoint of a run; returns task, metrics, sample."""
  config = load_config(workdir)
  trainer = Trainer(config, workdir)
  if trainer.checkpoints.latest_step() is None:
    raise ValueError(f"workdir: no checkpoint under "
                     f"{os.path.join(workdir, CHECKPOINT_DIR)}")
  state = trainer.restore_or_init()
  step = int(state.step)
  metrics = trainer.evaluate(state.params)
  sample = trainer.sample_text(state.params, step)
  trainer.checkpoints.close()
  return trainer.task, metrics, sample


