r"""Hochreiter & Schmidhuber's adding problem at the paper's lengths (T = 100,
500, 1000): training sequences until the paper's criterion, per backbone.

"Long Short-Term Memory" (Neural Computation 9(8), 1997), section 5.4,
Table 7: the LSTM met the criterion at T = 100 after about 74,000 training
sequences (then 1 of 2560 test sequences wrong), at T = 500 after 209,000
(0 wrong) and at T = 1000 after 853,000 (1 wrong). The task is
`rnn_transformer.training.tasks.Adding1997`, the paper's format: (value, marker)
pairs, lengths in [T, T + T/10], X1 among the first ten pairs, X2 among the
first T/2 - 1, target 0.5 + (X1 + X2) / 4 at the last step. The criterion is
the paper's stopping rule: the mean squared error of the most recent
`window_sequences` (2000) training sequences is below 0.01 and every one of
them was processed correctly (|error| < 0.04). Each training sequence is
scored with the parameters it is trained from, as in the paper's online
learning.

What differs from the paper, on purpose: the backbones are this library's
(one layer of width `model_dim`, a linear read-out of every step), trained
with AdamW on batches of `train.batch_size` sequences (the paper: online
gradient descent, learning rate 0.5, two memory-cell blocks of size 2), so
"sequences to criterion" compares the data each needs, not the update rule.
A run stops at the criterion or at its budget (`max_sequences`, or
`max_minutes` of wall time per backbone and T); a run that stops at the
budget reports how far it got: the accuracy and MSE of its last window, and
its held-out wrong count of `test_sequences`.

Seeds are `jax.vmap`-ed in one compiled chunk of `chunk_steps` updates; the
host checks the criterion after every chunk, at every step of it.

A run can be stopped and resumed: with `checkpoint_dir` set, each (backbone,
T) saves its vmapped train state and the host's bookkeeping (step, criterion
window, curve, wall time so far) with orbax every `checkpoint_every_minutes`,
and its result when it ends. A relaunch skips finished cells and continues
the others from their last checkpoint; the batches are keyed by update step,
so a resumed run trains on exactly the sequences an uninterrupted one would.

    python scripts/experiment.py --config=configs/experiments/adding_1997.py \
        --output_dir=docs/results
    # the paper's budget for the LSTM at T = 500 and 1000 (hours on a CPU;
    # stop it at any time and relaunch the same command to continue):
    python scripts/experiment.py --config=configs/experiments/adding_1997.py:paper \
        --output_dir=docs/results/paper
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
import numpy as np
import orbax.checkpoint as ocp
from flax.training import train_state

from rnn_transformer.training import tasks
from rnn_transformer.training import train
from rnn_transformer.training import train_config
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.experiments import progress
from rnn_transformer.experiments import reporting
from rnn_transformer.benchmarks import outputs

NAME = "adding_1997"
BACKBONES = ("rnn", "lstm", "gru", "mingru", "lru", "transformer")

# Table 7 of the paper: T -> (training sequences to criterion, test
# sequences wrong of PAPER_TEST_SEQUENCES), LSTM.
PAPER_TABLE_7 = {100: (74_000, 1), 500: (209_000, 0), 1000: (853_000, 1)}
PAPER_TEST_SEQUENCES = 2560
CRITERION_MSE = 0.01  # the paper's "average training error below 0.01"

# The seed's claims, as the report states them.
FEW_HUNDRED = 200
LSTM_FEW_HUNDRED = (f"An LSTM bridges a few hundred (>= {FEW_HUNDRED}) steps "
                    f"(the adding problem at T = 500 and 1000 keeps X1 for "
                    f"at least T - 10 steps)")
RNN_FORGETS = "A vanilla RNN forgets beyond short distances"
TRANSFORMER_SOLVES_ALL = ("A Transformer connects any two positions directly: "
                          "it solves every length")


SCALES = reporting.SCALES + ("paper",)


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  """The experiment at `scale`: "tiny", "default", "large" or "paper".

  "tiny" takes seconds. "default" is what fits a 2-core CPU in under an
  hour: two seeds, each (backbone, T) capped at `max_minutes`. "large" (a
  GPU) gives every run the paper's budget of sequences and more. "paper" is
  the LSTM alone at T = 500 (2 seeds) and T = 1000 (1 seed), each with twice
  the sequences Table 7 reports and no practical wall-time cap, checkpointed
  so that it can run across sessions (hours on a 2-core CPU).

  `seeds` and `max_sequences` are one number for every T, or a tuple with
  one entry per `min_lens`.
  """
  if scale not in SCALES:
    raise ValueError(f"scale (the config argument): expected one of "
                     f"{SCALES}, got {scale!r}")
  config = ml_collections.ConfigDict()
  config.experiment = NAME
  config.scale = scale
  config.backbones = BACKBONES
  config.min_lens = (100, 500, 1000)  # the paper's T
  config.seeds = 2  # runs per (backbone, T), vmapped; init and data per seed
  config.model_dim = 32  # hidden size of every backbone
  config.num_heads = 2  # Transformer heads
  # The paper's LSTM has no forget gate (a constant error carousel); a large
  # initial forget bias starts ours near it. With the library's default 1.0
  # (sigmoid 0.73 per step) the LSTM stayed at the predict-0.5 plateau for
  # 370k sequences at T = 100; with 5.0 it met the criterion (BUILD_NOTES).
  config.lstm_forget_bias = 5.0
  config.window_sequences = 2000  # the paper's criterion window
  config.test_sequences = PAPER_TEST_SEQUENCES  # held out, at the stop
  config.max_sequences = 1_000_000  # training budget per run
  config.max_minutes = 3.0  # wall budget per (backbone, T), all seeds
  config.chunk_steps = 64  # updates per compiled chunk between checks
  # "" disables checkpoints; a relative path is under the output directory.
  config.checkpoint_dir = ""
  config.checkpoint_every_minutes = 2.0
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # sequences per update
  config.train.learning_rate = 1e-2  # AdamW peak; cosine decay over budget
  config.train.warmup_steps = 100
  config.train.weight_decay = 0.0
  config.train.grad_clip_norm = 1.0  # global-norm clipping; <= 0 disables
  if scale == "tiny":
    config.backbones = ("rnn", "lstm", "transformer")
    config.min_lens = (24,)
    config.seeds = 2
    config.model_dim = 8
    config.window_sequences = 64
    config.test_sequences = 64
    config.max_sequences = 512
    config.max_minutes = 1.0
    config.chunk_steps = 8
    config.train.batch_size = 16
    config.train.warmup_steps = 4
  elif scale == "large":
    config.seeds = 5
    config.max_sequences = 4_000_000
    config.max_minutes = 120.0
  elif scale == "paper":
    config.backbones = ("lstm",)
    config.min_lens = (500, 1000)
    # Per-T tuples; a ConfigDict field keeps the type it was created with.
    del config["seeds"], config["max_sequences"]
    config.seeds = (2, 1)
    config.max_sequences = tuple(2 * PAPER_TABLE_7[t][0]
                                 for t in config.min_lens)
    config.max_minutes = 600.0
    config.checkpoint_dir = "checkpoints"
  return config


def per_len(config: ml_collections.ConfigDict, field: str,
            min_len: int) -> int:
  """`config.<field>` (`seeds` or `max_sequences`) at T = `min_len`."""
  value = config[field]
  if isinstance(value, Sequence):
    return int(value[list(config.min_lens).index(min_len)])
  return int(value)


def _validate(config: ml_collections.ConfigDict) -> None:
  unknown = sorted(set(config.backbones) - set(BACKBONES))
  if unknown:
    raise ValueError(f"config.backbones: expected names from {BACKBONES}, got "
                     f"{unknown}")
  outputs.check_positive(config, "model_dim", "window_sequences",
                         "test_sequences", "chunk_steps", "train.batch_size")
  lens = list(config.min_lens)
  if not lens or len(set(lens)) != len(lens):
    raise ValueError(f"config.min_lens: expected distinct lengths, got "
                     f"{config.min_lens}")
  for field in ("seeds", "max_sequences"):
    value = config[field]
    values = list(value) if isinstance(value, Sequence) else [value]
    if isinstance(value, Sequence) and len(values) != len(lens):
      raise ValueError(f"config.{field}: expected one positive integer or "
                       f"one per config.min_lens ({len(lens)}), got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in values):
      raise ValueError(f"config.{field}: expected positive integers, got "
                       f"{value!r}")
  if not config.checkpoint_every_minutes > 0:
    raise ValueError(f"config.checkpoint_every_minutes: expected a positive "
                     f"number, got {config.checkpoint_every_minutes!r}")
  for min_len in lens:  # the task names what it needs
    tasks.Adding1997(min_len=min_len)
  if not config.max_minutes > 0:
    raise ValueError(f"config.max_minutes: expected a positive number, got "
                     f"{config.max_minutes!r}")


def _backbone_config(config: ml_collections.ConfigDict, backbone: str,
                     min_len: int) -> ml_collections.ConfigDict:
  """The library's training config of one (backbone, T) cell."""
  cell = train_config.task_config("adding_1997", backbone, min_len=min_len)
  cell.model.model_dim = config.model_dim
  cell.model.num_layers = 1
  if backbone == "lstm":
    cell.model.forget_bias = config.lstm_forget_bias
  if backbone == "transformer":
    cell.model.num_heads = config.num_heads
    cell.model.max_len = min_len + min_len // 10
  cell.train.update(config.train.to_dict())
  # The schedule decays over the whole budget; a run usually stops earlier.
  cell.train.steps = -(-per_len(config, "max_sequences", min_len) //
                       config.train.batch_size)
  return cell


def criterion_met(mse: np.ndarray, accuracy: np.ndarray,
                  window_steps: int) -> int | None:
  """The first step at which the paper's stopping rule holds, or None.

  Args:
    mse, accuracy: `(steps,)` per-update batch means, in update order.
    window_steps: updates in the criterion window.

  Returns:
    The index `s` of the first update whose window (updates `s -
    window_steps + 1 .. s`) has mean MSE below `CRITERION_MSE` and every
    sequence correct (batch accuracy 1 at each update).
  """
  mse, accuracy = np.asarray(mse), np.asarray(accuracy)
  for end in range(window_steps - 1, len(mse)):
    window = slice(end - window_steps + 1, end + 1)
    if np.all(accuracy[window] >= 1.0) and mse[window].mean() < CRITERION_MSE:
      return end
  return None


class _Runs:
  """The compiled chunk and test programs of one (backbone, T), all seeds."""

  def __init__(self, config: ml_collections.ConfigDict, backbone: str,
               min_len: int):
    cell = _backbone_config(config, backbone, min_len)
    task, model_config = train_config.validate(cell)
    model = build_backbone(model_config)
    tx, schedule = train.make_optimizer(cell)
    train_step = train.make_train_step(model, task, schedule,
                                       grad_accum_steps=1)
    eval_step = train.make_eval_step(model, task)
    batch_size, chunk_steps = config.train.batch_size, config.chunk_steps
    test_chunks = -(-config.test_sequences // batch_size)

    def chunk(state, key, first_step):
      data_key, dropout_key, _ = jax.random.split(key, 3)

      def body(state, step):
        batch = task.batch(jax.random.fold_in(data_key, step), batch_size)
        state, metrics = train_step(state, batch,
                                    jax.random.fold_in(dropout_key, step))
        return state, (metrics["mse"], metrics["accuracy"])

      return jax.lax.scan(body, state, first_step + jnp.arange(chunk_steps))

    def test(params, key):
      test_key = jax.random.split(key, 3)[2]

      def one(index):
        return eval_step(params, task.eval_batch(
            jax.random.fold_in(test_key, index), batch_size))

      metrics = jax.lax.map(one, jnp.arange(test_chunks))
      return metrics["mse"].mean(), metrics["accuracy"].mean()

    keys = [jax.random.key(seed)
            for seed in range(per_len(config, "seeds", min_len))]
    sample = task.batch(jax.random.key(0), 1)["inputs"]
    params = train.init_params_per_key(
        model, [jax.random.fold_in(k, 1) for k in keys], sample)
    self.state = jax.vmap(lambda p: train_state.TrainState.create(
        apply_fn=model.apply, params=p, tx=tx))(params)
    self.keys = jnp.stack(keys)
    self.chunk = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None)))
    self.test = jax.jit(jax.vmap(test))
    self.test_sequences = test_chunks * batch_size
    self.parameters = sum(int(np.prod(x.shape[1:]))
                          for x in jax.tree.leaves(params))


def _trajectory(config: ml_collections.ConfigDict, backbone: str,
                min_len: int) -> dict[str, Any]:
  """What a resumed (backbone, T) must share with the run it continues:
  every setting that shapes its trajectory. The wall-time budget and the
  checkpointing may change between launches."""
  settings = {
      "backbone": backbone, "T": min_len,
      "seeds": per_len(config, "seeds", min_len),
      "max_sequences": per_len(config, "max_sequences", min_len),
      "model_dim": config.model_dim, "num_heads": config.num_heads,
      "lstm_forget_bias": config.lstm_forget_bias,
      "window_sequences": config.window_sequences,
      "test_sequences": config.test_sequences,
      "chunk_steps": config.chunk_steps, "train": config.train.to_dict()}
  return json.loads(json.dumps(settings))  # as `cell.json` stores it


def _write_json(path: str, value: Any) -> None:
  """Writes `value` atomically: a kill leaves the old file or the new one."""
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


class CellCheckpoints:
  """Checkpoints of one (backbone, T) under `directory`.

  `cell.json` holds the cell's `_trajectory` settings, `state/<step>/` the
  orbax checkpoints (the vmapped train state and the host's bookkeeping,
  saved together), `result.json` the result once the cell has ended.
  Raises `train.WorkdirMismatchError` when `directory` belongs to a cell with
  other settings; nothing is written then.
  """

  def __init__(self, directory: str, trajectory: dict[str, Any]):
    self.directory = directory
    path = os.path.join(directory, "cell.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
      differ = sorted(k for k in set(saved) | set(trajectory)
                      if saved.get(k) != trajectory.get(k))
      if differ:
        changes = "; ".join(f"{k}: saved {saved.get(k)!r}, now "
                            f"{trajectory.get(k)!r}" for k in differ)
        raise train.WorkdirMismatchError(
            f"config.checkpoint_dir: {directory} holds a run with other "
            f"settings ({changes}); only max_minutes and the checkpoint "
            f"settings may change on a resume. Use another checkpoint_dir; "
            f"nothing was modified.", tuple(differ))
    else:
      os.makedirs(directory, exist_ok=True)
      _write_json(path, trajectory)
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(directory, "state")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, enable_async_checkpointing=False))

  def result(self) -> dict[str, Any] | None:
    """The ended cell's result, or None while it has not ended."""
    path = os.path.join(self.directory, "result.json")
    if not os.path.exists(path):
      return None
    with open(path, encoding="utf-8") as f:
      return json.load(f)

  def restore(self, state: train_state.TrainState
              ) -> tuple[train_state.TrainState, dict[str, Any]] | None:
    """The latest saved state (shaped like `state`) and bookkeeping."""
    step = self.manager.latest_step()
    if step is None:
      return None
    target = {"params": state.params, "opt_state": state.opt_state,
              "step": state.step}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, target)),
        progress=ocp.args.JsonRestore()))
    saved = restored["state"]
    return (state.replace(params=saved["params"],
                          opt_state=saved["opt_state"], step=saved["step"]),
            restored["progress"])

  def save(self, step: int, state: train_state.TrainState,
           progress: dict[str, Any]) -> None:
    if self.manager.latest_step() == step:
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": state.params,
                                     "opt_state": state.opt_state,
                                     "step": state.step}),
        progress=ocp.args.JsonSave(progress)), force=True)
    self.manager.wait_until_finished()

  def finish(self, result: dict[str, Any]) -> None:
    _write_json(os.path.join(self.directory, "result.json"), result)

  def close(self) -> None:
    self.manager.close()


def train_cell(config: ml_collections.ConfigDict, backbone: str,
               min_len: int,
               checkpoints: CellCheckpoints | None = None) -> dict[str, Any]:
  """Trains every seed of (backbone, T) to the criterion or the budget.

  With `checkpoints`, an ended cell's saved result is returned as it is
  (unless it stopped by `max_minutes` and the budget has grown since), and
  an unfinished one continues from its latest checkpoint; the state and
  bookkeeping are saved every `config.checkpoint_every_minutes` and at the
  end.

  Returns:
    A dict with per-seed lists `sequences` (training sequences to criterion,
    or None), `test_wrong`, `test_mse`, `final_window_accuracy`,
    `final_window_mse`, the learning `curve` (per chunk: sequences seen and
    the per-seed mean accuracy of that chunk), `sequences_trained`,
    `seconds` (over every launch), `stopped_by` ("criterion", "sequences"
    or "minutes"), `parameters` and `resumed_at` (sequences trained when
    this launch started; 0 for a fresh cell).
  """
  if checkpoints is not None:
    ended = checkpoints.result()
    if ended is not None and not (
        ended["stopped_by"] == "minutes" and
        ended["seconds"] < 60.0 * config.max_minutes):
      return ended
  start = time.perf_counter()
  runs = _Runs(config, backbone, min_len)
  batch_size = config.train.batch_size
  seeds = per_len(config, "seeds", min_len)
  max_sequences = per_len(config, "max_sequences", min_len)
  window_steps = -(-config.window_sequences // batch_size)
  history = [collections.deque(maxlen=window_steps + config.chunk_steps)
             for _ in range(seeds)]
  met: list[int | None] = [None] * seeds
  test: list[list[float] | None] = [None] * seeds
  curve, step, seconds_before = [], 0, 0.0
  state = runs.state
  restored = None if checkpoints is None else checkpoints.restore(state)
  if restored is not None:
    state, saved = restored
    step, met, test, curve = (saved["step"], saved["met"], saved["test"],
                              saved["curve"])
    seconds_before = saved["seconds"]
    for seed in range(seeds):
      history[seed].extend(map(tuple, saved["history"][seed]))
  resumed_at = step * batch_size

  def bookkeeping():
    return {"step": step, "met": met, "test": test, "curve": curve,
            "history": [[list(map(float, h)) for h in seed_history]
                        for seed_history in history],
            "seconds": seconds_before + time.perf_counter() - start}

  last_save = time.perf_counter()
  while True:
    if all(m is not None for m in met):
      stopped_by = "criterion"
      break
    if step * batch_size >= max_sequences:
      stopped_by = "sequences"
      break
    state, (mse, accuracy) = runs.chunk(state, runs.keys, step)
    mse, accuracy = np.asarray(mse), np.asarray(accuracy)
    newly = []
    step += config.chunk_steps
    for seed in range(seeds):
      history[seed].extend(zip(mse[seed], accuracy[seed]))
      if met[seed] is None:
        recent = np.asarray(history[seed])  # updates step - len .. step - 1
        end = criterion_met(recent[:, 0], recent[:, 1], window_steps)
        if end is not None:
          met[seed] = int(step - len(recent) + end)
          newly.append(seed)
    curve.append([step * batch_size, accuracy.mean(axis=1).tolist(),
                  mse.mean(axis=1).tolist()])
    if newly:  # held-out test of the parameters at the end of this chunk
      test_mse, test_accuracy = map(np.asarray, runs.test(state.params,
                                                          runs.keys))
      for seed in newly:
        test[seed] = [float(test_mse[seed]), float(test_accuracy[seed])]
    if checkpoints is not None and time.perf_counter() - last_save >= 60.0 * (
        config.checkpoint_every_minutes):
      checkpoints.save(step, state, bookkeeping())
      last_save = time.perf_counter()
      logging.info("adding_1997 %s T=%d: checkpoint at %d sequences, last "
                   "chunk accuracy %s, MSE %s, criterion met by seeds %s",
                   backbone, min_len, step * batch_size,
                   np.round(accuracy.mean(axis=1), 3).tolist(),
                   np.round(mse.mean(axis=1), 4).tolist(),
                   [i for i, m in enumerate(met) if m is not None])
    # Every launch trains at least one chunk, so its window is never empty.
    if seconds_before + time.perf_counter() - start >= 60.0 * (
        config.max_minutes) and not all(m is not None for m in met):
      stopped_by = "minutes"
      break
  test_mse, test_accuracy = map(np.asarray, runs.test(state.params, runs.keys))
  for seed in range(seeds):
    if test[seed] is None:
      test[seed] = [float(test_mse[seed]), float(test_accuracy[seed])]
  window = [np.asarray(h)[-window_steps:] for h in history]
  result = {
      "sequences": [None if m is None else (m + 1) * batch_size for m in met],
      "test_wrong": [int(round((1.0 - acc) * runs.test_sequences))
                     for _, acc in test],
      "test_mse": [m for m, _ in test],
      "test_sequences": runs.test_sequences,
      "final_window_accuracy": [float(w[:, 1].mean()) for w in window],
      "final_window_mse": [float(w[:, 0].mean()) for w in window],
      "curve": curve,
      "sequences_trained": step * batch_size,
      "seconds": seconds_before + time.perf_counter() - start,
      "stopped_by": stopped_by,
      "parameters": runs.parameters,
      "resumed_at": resumed_at,
  }
  if checkpoints is not None:
    checkpoints.save(step, state, bookkeeping())
    checkpoints.finish(result)
  return result


def _solved(result: dict[str, Any]) -> int:
  return sum(s is not None for s in result["sequences"])


def _majority_met(result: dict[str, Any]) -> bool:
  return 2 * _solved(result) > len(result["sequences"])


def _median_sequences(result: dict[str, Any]) -> float | None:
  """Median sequences to criterion over seeds; None unless most seeds met."""
  if not _majority_met(result):
    return None
  # Seeds that missed count as infinitely slow.
  values = [np.inf if s is None else s for s in result["sequences"]]
  return float(np.median(values))


def _short_of_the_paper(result: dict[str, Any], t: int) -> bool:
  """No seed met the criterion and the run saw fewer sequences than the
  paper's LSTM needed at this T: the budget cannot tell."""
  return (not _solved(result) and t in PAPER_TABLE_7 and
          result["sequences_trained"] < PAPER_TABLE_7[t][0])


def _verdict(solved: list[int], lens: list[int], partial: bool,
             decided: list[int]) -> str:
  """Supported when most seeds met the criterion at every T of `lens`;
  partly when `partial`; not measured when no T had the paper's budget."""
  if len(solved) == len(lens):
    return "supported"
  if partial:
    return "partly supported"
  return "not supported" if decided else "not measured"


def _lstm_few_hundred(results, budget: str) -> reporting.Claim:
  far = sorted(t for (b, t) in results if b == "lstm" and t >= FEW_HUNDRED)
  if not far:
    return reporting.Claim(LSTM_FEW_HUNDRED, "not measured",
                           f"no lstm run at T >= {FEW_HUNDRED}")
  parts = []
  for t in far:
    result = results["lstm", t]
    part = (f"T={t}: {_solved(result)}/{len(result['sequences'])} seeds met "
            f"the criterion in {result['sequences_trained']} sequences")
    if _short_of_the_paper(result, t):
      part += f" (fewer than the paper's {PAPER_TABLE_7[t][0]})"
    if _solved(result) < len(result["sequences"]):
      plateau = tasks.Adding1997(min_len=t).baseline
      part += (f"; last window accuracy "
               f"{np.mean(result['final_window_accuracy']):.3f}, MSE "
               f"{np.mean(result['final_window_mse']):.4f} (predicting 0.5: "
               f"{plateau['accuracy']:.3f}, {plateau['mse']:.4f})")
    parts.append(part)
  solved = [t for t in far if _majority_met(results["lstm", t])]
  decided = [t for t in far if not _short_of_the_paper(results["lstm", t], t)]
  verdict = _verdict(solved, far, any(_solved(results["lstm", t])
                                      for t in far), decided)
  return reporting.Claim(LSTM_FEW_HUNDRED, verdict,
                         "; ".join(parts) + f" ({budget})")


def _rnn_forgets(results, budget: str) -> reporting.Claim:
  lens = sorted(t for (b, t) in results if b == "rnn")
  if not lens:
    return reporting.Claim(RNN_FORGETS, "not measured", "no rnn runs")
  parts = [f"T={t}: {_solved(results['rnn', t])}/"
           f"{len(results['rnn', t]['sequences'])} seeds met the criterion, "
           f"final window accuracy "
           f"{np.mean(results['rnn', t]['final_window_accuracy']):.2f}"
           for t in lens]
  gated = [b for b in ("lstm", "gru") if any(
      _solved(results[b, t]) for t in lens if (b, t) in results)]
  if not any(_solved(results["rnn", t]) for t in lens):
    verdict = "supported" if gated else "partly supported"
    if not gated:
      parts.append("no gated cell met it either, so forgetting is not "
                   "separated from the budget")
  elif all(_solved(results["rnn", t]) for t in lens):
    verdict = "not supported"
  else:
    verdict = "partly supported"
  return reporting.Claim(RNN_FORGETS, verdict,
                         "; ".join(parts) + f" ({budget})")


def _transformer_solves_all(results, budget: str) -> reporting.Claim:
  lens = sorted(t for (b, t) in results if b == "transformer")
  if not lens:
    return reporting.Claim(TRANSFORMER_SOLVES_ALL, "not measured",
                           "no transformer runs")
  solved = [t for t in lens if _majority_met(results["transformer", t])]
  decided = [t for t in lens
             if not _short_of_the_paper(results["transformer", t], t)]
  parts = []
  for t in lens:
    result = results["transformer", t]
    parts.append(f"T={t}: {_solved(result)}/{len(result['sequences'])} "
                 f"seeds, {result['sequences_trained']} sequences trained, "
                 f"stopped by {result['stopped_by']}")
  verdict = _verdict(solved, lens, bool(solved), decided)
  short = [t for t in lens if t not in decided]
  if short:
    parts.append(f"at T={short} it saw fewer sequences than the paper's "
                 f"LSTM needed, so those lengths decide nothing")
  return reporting.Claim(TRANSFORMER_SOLVES_ALL, verdict,
                         "; ".join(parts) + f" ({budget})")


def claims(results: dict[tuple[str, int], dict[str, Any]],
           budget: str) -> list[reporting.Claim]:
  """The seed's claims judged from `results[backbone, T]` (`train_cell`)."""
  return [_rnn_forgets(results, budget), _lstm_few_hundred(results, budget),
          _transformer_solves_all(results, budget)]


def _plot(config, results, output_dir: str) -> str:
  plt = outputs.pyplot()
  lens = list(config.min_lens)
  fig, axes = plt.subplots(1, 1 + len(lens), figsize=(5 + 4 * len(lens), 4.2))
  ax = axes[0]
  for i, backbone in enumerate(config.backbones):
    shift = 1.0 + 0.04 * (i - (len(config.backbones) - 1) / 2)
    label = backbone
    for t in lens:
      result = results[backbone, t]
      for s in result["sequences"]:
        met = s is not None
        ax.scatter(t * shift, s if met else result["sequences_trained"],
                   marker="o" if met else "x", color=f"C{i}", label=label)
        label = None
  paper = [(t, PAPER_TABLE_7[t][0]) for t in lens if t in PAPER_TABLE_7]
  if paper:
    ax.plot(*zip(*paper), "k--", marker="s", label="LSTM, paper (Table 7)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xticks(lens, [str(t) for t in lens])
  ax.minorticks_off()
  ax.set_xlabel("T (minimum sequence length)")
  ax.set_ylabel("training sequences to criterion\n(x: not met, at budget)")
  ax.set_title("to criterion, per seed", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  for ax, t in zip(axes[1:], lens):
    for i, backbone in enumerate(config.backbones):
      curve = results[backbone, t]["curve"]
      x = [c[0] for c in curve]
      y = np.asarray([c[1] for c in curve])  # (chunks, seeds)
      ax.plot(x, y.mean(axis=1), color=f"C{i}", label=backbone)
      ax.fill_between(x, y.min(axis=1), y.max(axis=1), color=f"C{i}",
                      alpha=0.15)
    ax.axhline(tasks.Adding1997(min_len=t).baseline["accuracy"],
               color="gray", linestyle="--", label="predict 0.5")
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("training sequences")
    ax.set_ylabel("training accuracy (|error| < 0.04)")
    ax.set_title(f"T = {t}: mean, min-max over "
                 f"{per_len(config, 'seeds', t)} seeds", fontsize=9)
    ax.grid(alpha=0.3)
  fig.suptitle(
      f"Adding problem (Hochreiter & Schmidhuber 1997), AdamW lr "
      f"{config.train.learning_rate:g}; {budget_text(config)};\n"
      f"{outputs.device_description()}", fontsize=9)
  return outputs.save_figure(fig, output_dir, NAME)


def budget_text(config: ml_collections.ConfigDict) -> str:
  """The budget as the report and the figure state it."""
  lens = list(config.min_lens)
  if isinstance(config.max_sequences, Sequence):
    sequences = ", ".join(f"{per_len(config, 'max_sequences', t)} at T={t}"
                          for t in lens)
  else:
    sequences = f"{config.max_sequences}"
  return (f"budget {sequences} sequences or {config.max_minutes:g} min per "
          f"(backbone, T), batch {config.train.batch_size}, width "
          f"{config.model_dim}")


def run(config: ml_collections.ConfigDict, output_dir: str) -> reporting.Report:
  """Trains every (backbone, T); writes tables, the figure and the summary."""
  start = time.perf_counter()
  _validate(config)
  results = {}
  grid = [(backbone, t) for t in config.min_lens
          for backbone in config.backbones]
  checkpoint_root = (os.path.join(output_dir, config.checkpoint_dir)
                     if config.checkpoint_dir else None)
  for backbone, t in progress.cells(NAME, grid, lambda c: f"{c[0]} T={c[1]}"):
    checkpoints = None
    if checkpoint_root:
      checkpoints = CellCheckpoints(
          os.path.join(checkpoint_root, f"{backbone}_T{t}"),
          _trajectory(config, backbone, t))
    try:
      result = results[backbone, t] = train_cell(config, backbone, t,
                                                 checkpoints)
    finally:
      if checkpoints is not None:
        checkpoints.close()
    logging.info("adding_1997 %s T=%d: to criterion %s, %d sequences "
                 "(%d of them before this launch), stopped by %s after "
                 "%.0f s", backbone, t, result["sequences"],
                 result["sequences_trained"], result.get("resumed_at", 0),
                 result["stopped_by"], result["seconds"])

  raw_rows, summary_rows, curve_rows = [], [], []
  for (backbone, t), result in results.items():
    seeds = len(result["sequences"])
    for seed in range(seeds):
      raw_rows.append((backbone, t, seed, result["sequences"][seed] or "",
                       result["test_wrong"][seed], result["test_sequences"],
                       result["test_mse"][seed],
                       result["final_window_accuracy"][seed],
                       result["final_window_mse"][seed]))
    for sequences, accuracy, mse in result["curve"]:
      for seed in range(seeds):
        curve_rows.append((backbone, t, seed, sequences, accuracy[seed],
                           mse[seed]))
    paper = PAPER_TABLE_7.get(t, ("", ""))
    median = _median_sequences(result)
    plateau = tasks.Adding1997(min_len=t).baseline
    summary_rows.append((
        backbone, t, f"{_solved(result)}/{seeds}",
        "" if median is None else int(median),
        int(np.median(result["test_wrong"])), result["test_sequences"],
        result["sequences_trained"], result["stopped_by"],
        round(result["seconds"], 1), result["parameters"],
        round(float(np.mean(result["final_window_accuracy"])), 4),
        round(float(np.mean(result["final_window_mse"])), 5),
        round(float(plateau["accuracy"]), 4), round(float(plateau["mse"]), 5),
        paper[0], paper[1]))
  files = outputs.write_table(
      output_dir, NAME,
      ["backbone", "T", "seed", "sequences_to_criterion", "test_wrong",
       "test_sequences", "test_mse", "final_window_accuracy",
       "final_window_mse"], raw_rows)
  files += outputs.write_table(
      output_dir, f"{NAME}_summary",
      ["backbone", "T", "seeds_met", "median_sequences_to_criterion",
       "median_test_wrong", "test_sequences", "sequences_trained",
       "stopped_by", "seconds", "parameters", "final_window_accuracy",
       "final_window_mse", "plateau_accuracy", "plateau_mse",
       "paper_lstm_sequences",
       f"paper_lstm_wrong_of_{PAPER_TEST_SEQUENCES}"], summary_rows)
  files += outputs.write_table(
      output_dir, f"{NAME}_curves",
      ["backbone", "T", "seed", "sequences", "chunk_accuracy", "chunk_mse"],
      curve_rows)
  files.append(_plot(config, results, output_dir))

  budget = budget_text(config)
  figures: dict[str, Any] = {"seeds": config.seeds,
                             "max_sequences": config.max_sequences,
                             "max_minutes": config.max_minutes}
  for (backbone, t), result in results.items():
    median = _median_sequences(result)
    figures[f"{backbone}_T{t}_seeds_met"] = _solved(result)
    figures[f"{backbone}_T{t}_median_sequences"] = (
        "not met" if median is None else int(median))
  figures["wall_seconds"] = round(time.perf_counter() - start, 1)
  report = reporting.Report(
      name=(f"{NAME}: training sequences to Hochreiter & Schmidhuber's "
            f"criterion on the adding problem ({budget})"),
      device=outputs.device_description(), figures=figures,
      claims=claims(results, budget), files=files)
  files.append(report.write(output_dir))
  files.append(os.path.join(output_dir, "summary.json"))
  return report
