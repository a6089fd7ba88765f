"""Training configs: one builder for every (task x backbone) pair, and checks.

`configs/<task>.py:<backbone>` files call `task_config`, so no config is
copied per backbone. `validate` runs before anything is compiled and names
the offending field and its valid choices.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from rnn_transformer import parallel
from rnn_transformer import validation
from rnn_transformer.models import model_config
from rnn_transformer.training import tasks

# Per-backbone model defaults, small enough for a 2-core CPU.
_MODEL_DEFAULTS = {
    "rnn": dict(num_layers=1, model_dim=128),
    "lstm": dict(num_layers=1, model_dim=128),
    "gru": dict(num_layers=1, model_dim=128),
    # No nonlinearity acts across time inside a linear recurrence: the
    # papers stack layers (two here) for it.
    "mingru": dict(num_layers=2, model_dim=128),
    "minlstm": dict(num_layers=2, model_dim=128),
    "lru": dict(num_layers=2, model_dim=128),
    "transformer": dict(num_layers=2, model_dim=64, num_heads=4,
                        positional="sinusoidal"),
}
# Fields the task decides, not the user.
_TASK_OWNED = ("vocab_size", "output_size", "causal")


def task_config(task: str, backbone: str | None, **task_params
                ) -> ml_collections.ConfigDict:
  """The config for `task` trained with `backbone` ("transformer" if None)."""
  backbone = backbone or "transformer"
  if backbone not in model_config.BACKBONES:
    raise ValueError(f"backbone (the config argument): expected one of "
                     f"{model_config.BACKBONES}, got {backbone!r}")
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters, data stream and dropout all derive from it

  config.task = ml_collections.ConfigDict()
  config.task.name = task  # one of rnn_transformer.training.tasks.TASKS
  config.task.params = ml_collections.ConfigDict(task_params)  # its arguments

  config.model = ml_collections.ConfigDict()
  fields = {f.name: f.default for f in dataclasses.fields(
      model_config.ModelConfig) if f.name not in _TASK_OWNED}
  fields.update(backbone=backbone, **_MODEL_DEFAULTS[backbone])
  fields["dtype"] = "float32"  # compute dtype; "bfloat16" for mixed precision
  fields["param_dtype"] = "float32"
  for name, value in fields.items():
    # Optional fields get a placeholder of their type so overrides parse.
    config.model[name] = value
  config.model.attention_impl = ml_collections.config_dict.placeholder(str)
  config.model.num_kv_heads = ml_collections.config_dict.placeholder(int)
  config.model.mlp_dim = ml_collections.config_dict.placeholder(int)
  config.model.scan_method = ml_collections.config_dict.placeholder(str)
  config.model.newton_method = ml_collections.config_dict.placeholder(str)
  config.model.attention_window = ml_collections.config_dict.placeholder(int)
  config.model.attention_softcap = ml_collections.config_dict.placeholder(
      float)

  # Devices: a mesh of named axes and a strategy placing the state on it
  # (rnn_transformer.parallel, docs/scaling.md).
  config.mesh = ml_collections.ConfigDict()
  # Sizes per axis, one -1 for "the rest"; None: (-1,) for a one-axis mesh.
  config.mesh.shape = ml_collections.config_dict.placeholder(tuple)
  # Among ("data", "fsdp", "tensor"); None: the strategy's, i.e. dp: data,
  # fsdp: fsdp, tp: (data, tensor), fsdp_tp: (fsdp, tensor).
  config.mesh.axes = ml_collections.config_dict.placeholder(tuple)
  config.sharding = ml_collections.ConfigDict()
  config.sharding.strategy = "dp"  # dp, fsdp, tp, fsdp_tp or custom
  config.sharding.rules = ()  # custom: ((logical axis, mesh axis), ...)

  config.train = ml_collections.ConfigDict()
  config.train.steps = 2000  # optimizer updates
  config.train.batch_size = 64  # global batch, split over devices
  config.train.grad_accum_steps = 1  # micro-batches per update
  config.train.learning_rate = 3e-3  # peak, after linear warmup
  config.train.warmup_steps = 100  # linear warmup, then cosine decay to 0
  config.train.weight_decay = 1e-4  # AdamW decoupled weight decay
  config.train.grad_clip_norm = 1.0  # global-norm clipping; <= 0 disables
  config.train.log_every = 50  # steps between metric records
  config.train.eval_every = 500  # steps between evaluations
  config.train.eval_batches = 4  # held-out batches per evaluation
  config.train.checkpoint_every = 500  # steps between checkpoints
  config.train.keep_checkpoints = 3  # most recent checkpoints kept
  config.train.sample_chars = 200  # characters sampled at eval (char_lm)
  config.train.progress_bar = True  # terminal progress bar on process 0
  return config


def model_config_for(config: ml_collections.ConfigDict,
                     task: tasks.Task) -> model_config.ModelConfig:
  """The backbone config: the user's `config.model` plus what the task owns."""
  fields = config.model.to_dict()
  for name in ("dtype", "param_dtype"):
    fields[name] = None if fields[name] is None else jax.numpy.dtype(
        fields[name])
  return model_config.ModelConfig(
      **fields, vocab_size=task.vocab_size, output_size=task.output_size,
      causal=True)


def mesh_and_rules(config: ml_collections.ConfigDict
                   ) -> tuple[jax.sharding.Mesh, parallel.rules.Rules]:
  """The device mesh of `config.mesh` and the rules of `config.sharding`.

  Raises ValueError/TypeError naming the field: a mesh whose size is not
  the device count, an axis no strategy knows, a strategy typo, a rule
  naming an unknown logical or mesh axis.
  """
  # A run saved before the mesh fields existed is a data-parallel run.
  mesh_fields = config.get("mesh") or {}
  sharding = config.get("sharding") or {}
  strategy = sharding.get("strategy", "dp")
  if strategy not in tuple(parallel.STRATEGIES) + (parallel.rules.CUSTOM,):
    raise ValueError(f"config.sharding.strategy: expected one of "
                     f"{tuple(parallel.STRATEGIES) + (parallel.rules.CUSTOM,)}"
                     f", got {strategy!r}")
  axes = mesh_fields.get("axes")
  if axes is None:
    if strategy == parallel.rules.CUSTOM:
      raise ValueError("config.mesh.axes: strategy 'custom' needs explicit "
                       "mesh axes, e.g. ('data', 'tensor')")
    axes = parallel.rules.DEFAULT_MESH_AXES[strategy]
  shape = mesh_fields.get("shape")
  if shape is None:
    if len(axes) != 1:
      raise ValueError(f"config.mesh.shape: a mesh of axes {tuple(axes)} "
                       f"needs explicit sizes, e.g. {(-1,) + (2,) * (len(axes) - 1)}")
    shape = (-1,)
  try:
    mesh = parallel.make_mesh(shape, axes)
    rules = parallel.strategy_rules(strategy, mesh,
                                    sharding.get("rules") or ())
  except (TypeError, ValueError) as e:
    raise type(e)(f"config.{e}") from e
  return mesh, rules


def _named(section: str, error: Exception) -> ValueError:
  """`error` re-raised with its field's full path, `config.model.dtype: ...`.

  Library errors start with the argument's name (`dtype: expected ...`);
  others get the section as a prefix.
  """
  message = str(error)
  head = message.split(":", 1)[0]
  if head.isidentifier():
    return ValueError(f"{section}.{message}")
  return ValueError(f"{section}: {message}")


def _field(config, path: str):
  """`config`'s field at the dotted `path`; ValueError naming it if absent."""
  node = config
  for depth, part in enumerate(path.split(".")):
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      above = ".".join(path.split(".")[:depth])
      raise TypeError(f"config.{above}: expected a section (ConfigDict), "
                      f"got {type(node).__name__} {node!r}")
    if part not in node:
      raise ValueError(f"config.{path}: missing; `task_config` lists the "
                       f"fields a run needs")
    node = node[part]
  return node


def _positive(config, path: str) -> None:
  value = _field(config, path)
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"config.{path}: expected a positive integer, got "
                     f"{value!r}")


def _check_scalars(config) -> None:
  """The run's scalar fields: types and ranges, each named by its path."""
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    raise TypeError(f"config: expected an ml_collections.ConfigDict, got "
                    f"{type(config).__name__}")
  name = _field(config, "task.name")
  if not isinstance(name, str) or name not in tasks.TASKS:
    raise ValueError(f"config.task.name: expected one of "
                     f"{sorted(tasks.TASKS)}, got {name!r}")
  params = _field(config, "task.params")
  if not isinstance(params, (ml_collections.ConfigDict, dict)):
    raise TypeError(f"config.task.params: expected a ConfigDict of the "
                    f"task's arguments, got {type(params).__name__}")
  for path in ("train.steps", "train.batch_size", "train.grad_accum_steps",
               "train.log_every", "train.eval_every", "train.eval_batches",
               "train.checkpoint_every", "train.keep_checkpoints"):
    _positive(config, path)
  validation.check_int("config.seed", _field(config, "seed"), minimum=0)
  validation.check_int("config.train.warmup_steps",
                       _field(config, "train.warmup_steps"), minimum=0)
  validation.check_int("config.train.sample_chars",
                       _field(config, "train.sample_chars"), minimum=0)
  validation.check_real("config.train.learning_rate",
                        _field(config, "train.learning_rate"), positive=True)
  decay = validation.check_real("config.train.weight_decay",
                                _field(config, "train.weight_decay"))
  if decay < 0:
    raise ValueError(f"config.train.weight_decay: expected >= 0, got "
                     f"{decay}")
  validation.check_real("config.train.grad_clip_norm",
                        _field(config, "train.grad_clip_norm"))
  validation.check_bool("config.train.progress_bar",
                        _field(config, "train.progress_bar"))
  for name in ("dtype", "param_dtype"):
    value = _field(config, f"model.{name}")
    if value not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"config.model.{name}: expected one of ('float32', "
                       f"'bfloat16', 'float16'), got {value!r}")


class ValidatedConfig(NamedTuple):
  """What `validated` builds from a run's config, each built once."""
  task: tasks.Task
  model: model_config.ModelConfig
  mesh: jax.sharding.Mesh
  rules: parallel.rules.Rules


def validate(config: ml_collections.ConfigDict) -> tuple[
    tasks.Task, model_config.ModelConfig]:
  """Checks `config` and builds its task and model config, before compiling.

  Raises ValueError naming the field (`config.model.backbone`, ...) and the
  valid choices or range.
  """
  checked = validated(config)
  return checked.task, checked.model


def validated(config: ml_collections.ConfigDict) -> ValidatedConfig:
  """`validate`, also returning the mesh and sharding rules it checked."""
  _check_scalars(config)
  try:
    task = tasks.make_task(config.task.name, **config.task.params.to_dict())
  except TypeError as e:  # an argument the task does not take
    raise ValueError(f"config.task.params: {e}") from e
  except ValueError as e:
    raise _named("config.task.params", e) from e
  train = config.train
  if not 0 <= train.warmup_steps < train.steps:  # optax decays over the rest
    raise ValueError(f"config.train.warmup_steps: expected a value in [0, "
                     f"steps={train.steps}), got {train.warmup_steps}")
  mesh, rules = mesh_and_rules(config)
  batch_axes = parallel.batch_axes(mesh)
  batch_split = int(np.prod([mesh.shape[a] for a in batch_axes]))
  per_update = train.batch_size // train.grad_accum_steps
  if train.batch_size % train.grad_accum_steps or per_update % batch_split:
    raise ValueError(
        f"config.train.batch_size: expected a multiple of grad_accum_steps "
        f"({train.grad_accum_steps}) x the batch shards ({batch_split}: mesh "
        f"axes {batch_axes}), got {train.batch_size}")
  try:
    model = model_config_for(config, task)
  except (TypeError, ValueError) as e:
    raise _named("config.model", e) from e
  context = int(np.prod([mesh.shape[a] for a in
                         parallel.rules.time_axes(mesh)]))
  if context > 1:
    takes = model_config.LINEAR_BACKBONES + ("transformer",)
    newton = (model.backbone in model_config.NEWTON_BACKBONES and
              model.evaluation == "newton")
    if model.backbone not in takes and not newton:
      raise ValueError(
          f"config.mesh.axes: a 'context' axis splits time over devices, "
          f"which only the backbones whose layers run across devices take: "
          f"{takes}, and {model_config.NEWTON_BACKBONES} with "
          f"evaluation='newton'; got backbone {model.backbone!r} (drop the "
          f"context axis)")
    if model.backbone == "transformer" and model.attention_impl in (
        "xla", "cudnn"):
      raise ValueError(
          f"config.model: ring attention (the 'context' axis) needs an "
          f"attention_impl that returns the log-sum-exp (triton, reference, "
          f"blockwise or None); got attention_impl="
          f"{model.attention_impl!r}")
    if task.seq_len % context:
      raise ValueError(
          f"config.mesh.shape: the context axis splits the task's "
          f"{task.seq_len} steps {context} ways, not evenly; pick a context "
          f"size that divides {task.seq_len}")
  if model.backbone == "transformer" and task.seq_len > model.max_len:
    raise ValueError(f"config.model.max_len: expected at least the task's "
                     f"sequence length {task.seq_len}, got {model.max_len}")
  return ValidatedConfig(task, model, mesh, rules)
