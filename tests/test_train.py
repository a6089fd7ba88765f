"""End-to-end training at tiny sizes: learning, resume, data parallelism, errors."""

import json
import os
import re
import pathlib
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rnn_transformer import tasks
from rnn_transformer import train
from rnn_transformer import train_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(backbone="lstm", task="first_token", steps=60, **task_params):
  task_params = task_params or dict(distance=4)
  config = train_config.task_config(task, backbone, **task_params)
  config.model.model_dim = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.max_len = 64
  config.train.update(steps=steps, batch_size=32, warmup_steps=5,
                      learning_rate=1e-2, log_every=10, eval_every=1000,
                      eval_batches=2, checkpoint_every=10, keep_checkpoints=2,
                      progress_bar=False)
  return config


def _records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def _final_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  restored = manager.restore(step)
  manager.close()
  return step, restored["params"]


def _run_script(script, *flags, env_extra=None, cwd=None):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  env.update(env_extra or {})
  return subprocess.run([sys.executable, *script, *flags], capture_output=True,
                        text=True, check=False, timeout=600, env=env,
                        cwd=cwd or REPO)


@pytest.mark.parametrize("backbone", ["rnn", "lstm", "gru", "mingru",
                                      "minlstm", "lru", "transformer"])
def test_short_run_learns_below_the_trivial_baseline(backbone, tmp_path):
  config = tiny_config(backbone)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  task = tasks.FirstToken(distance=4)
  assert metrics["loss"] < 0.5 * task.baseline["loss"], metrics
  assert metrics["accuracy"] > 0.9, metrics
  assert "learned" in train.summary(task, metrics)
  records = _records(tmp_path, "train")
  assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
  for key in ("loss", "accuracy", "grad_norm", "learning_rate",
              "step_time_s", "tokens_per_s"):
    assert np.isfinite(records[-1][key]), key
  assert list((tmp_path / "tensorboard").iterdir()), "no TensorBoard events"
  saved = train.load_config(str(tmp_path))
  assert saved.model.backbone == backbone


_KILL_AFTER_SAVE = """
import os, signal, sys
from rnn_transformer import train
original = train.Trainer.save
def save_then_die(self, state):
  original(self, state)
  if int(state.step) == {kill_step}:
    os.kill(os.getpid(), signal.SIGKILL)
train.Trainer.save = save_then_die
sys.argv = ["train.py"] + sys.argv[1:]
exec(open({script!r}).read())
"""


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
  overrides = ["--config.train.steps=40", "--config.train.batch_size=16",
               "--config.model.model_dim=16", "--config.train.log_every=5",
               "--config.train.checkpoint_every=10",
               "--config.train.progress_bar=False"]
  config_flag = f"--config={REPO / 'configs' / 'first_token.py'}:gru"
  script = str(REPO / "scripts" / "train.py")
  whole, killed = tmp_path / "whole", tmp_path / "killed"

  result = _run_script([script], config_flag, f"--workdir={whole}", *overrides)
  assert result.returncode == 0, result.stderr[-3000:]

  driver = _KILL_AFTER_SAVE.format(kill_step=20, script=script)
  result = _run_script(["-c", driver], config_flag, f"--workdir={killed}",
                       *overrides)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert _final_params(killed)[0] == 20
  # A checkpoint half-written at the kill: orbax's temporary directory.
  partial = killed / "checkpoints" / "30.orbax-checkpoint-tmp-1234"
  partial.mkdir()
  (partial / "garbage").write_text("not a checkpoint")

  result = _run_script([script], config_flag, f"--workdir={killed}",
                       *overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint at step 20" in result.stderr

  step_whole, params_whole = _final_params(whole)
  step_killed, params_killed = _final_params(killed)
  assert step_whole == step_killed == 40
  chex.assert_trees_all_close(params_killed, params_whole, atol=1e-6)
  eval_whole, eval_killed = _records(whole, "eval")[-1], _records(
      killed, "eval")[-1]
  np.testing.assert_allclose(eval_killed["loss"], eval_whole["loss"],
                             rtol=1e-5)


def test_four_devices_give_the_losses_of_one(tmp_path):
  overrides = ["--config.train.steps=10", "--config.train.batch_size=16",
               "--config.train.warmup_steps=2",
               "--config.model.model_dim=16", "--config.train.log_every=1",
               "--config.train.progress_bar=False"]
  config_flag = f"--config={REPO / 'configs' / 'adding.py'}:lstm"
  script = str(REPO / "scripts" / "train.py")
  losses = {}
  for devices in (1, 4):
    workdir = tmp_path / f"devices{devices}"
    result = _run_script(
        [script], config_flag, f"--workdir={workdir}", *overrides,
        env_extra={"XLA_FLAGS":
                   f"--xla_force_host_platform_device_count={devices}"})
    assert result.returncode == 0, result.stderr[-3000:]
    device_line = next(line for line in result.stderr.splitlines()
                       if "devices: [" in line)
    assert device_line.count("CpuDevice") == devices, device_line
    losses[devices] = [r["loss"] for r in _records(workdir, "train")]
  assert len(losses[1]) == 10
  np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config("rnn", task="adding", steps=40, seq_len=8)
  config.train.update(learning_rate=1e30, grad_clip_norm=0.0, warmup_steps=0,
                      log_every=1, checkpoint_every=1)
  with pytest.raises(train.NonFiniteLossError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  found = re.search(r"non-finite at step (\d+); the last good checkpoint is "
                    r"step (\d+)", str(error.value))
  assert found, str(error.value)
  bad_step, good_step = map(int, found.groups())
  assert good_step == bad_step - 1
  step, params = _final_params(tmp_path)
  assert step == good_step
  chex.assert_tree_all_finite(params)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
  one = tiny_config("gru", steps=3)
  one.train.warmup_steps = 1
  accumulated = one.copy_and_resolve_references()
  accumulated.train.grad_accum_steps = 4
  train.train_and_evaluate(one, str(tmp_path / "one"))
  train.train_and_evaluate(accumulated, str(tmp_path / "four"))
  chex.assert_trees_all_close(_final_params(tmp_path / "four")[1],
                              _final_params(tmp_path / "one")[1], atol=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("model.backbone", "cnn", r"config.model: backbone: expected one of "
     r"\('rnn', 'lstm', 'gru', 'mingru', 'minlstm', 'lru', 'transformer'\), "
     r"got 'cnn'"),
    ("task.name", "sorting", r"config.task.name: expected one of \['adding', "
     r"'char_lm', 'copy', 'first_token', 'recall'\], got 'sorting'"),
    ("train.batch_size", 30, r"config.train.batch_size: expected a multiple "
     r"of grad_accum_steps \(4\)"),
    ("model.positional", "alibi", r"positional: expected one of"),
    ("model.dtype", "float64", r"config.model.dtype: expected one of"),
    ("train.steps", 0, r"config.train.steps: expected a positive integer"),
])
def test_config_errors_name_the_field_and_choices(field, value, message):
  config = tiny_config("transformer")
  config.train.grad_accum_steps = 4
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    train_config.validate(config)


def test_unknown_override_fails_before_compiling(tmp_path):
  result = _run_script([str(REPO / "scripts" / "train.py")],
                       f"--config={REPO / 'configs' / 'copy.py'}:lstm",
                       f"--workdir={tmp_path}", "--config.model.num_layerz=3")
  assert result.returncode != 0
  assert "num_layerz" in result.stderr
  assert not (tmp_path / "checkpoints").exists()
  result = _run_script([str(REPO / "scripts" / "train.py")],
                       f"--config={REPO / 'configs' / 'copy.py'}:cnn",
                       f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "backbone (the config argument): expected one of" in result.stderr


def test_train_script_trains_a_parallel_recurrence(tmp_path):
  result = _run_script([str(REPO / "scripts" / "train.py")],
                       f"--config={REPO / 'configs' / 'first_token.py'}:lru",
                       f"--workdir={tmp_path}", "--config.train.steps=2",
                       "--config.train.warmup_steps=1",
                       "--config.train.batch_size=4",
                       "--config.model.model_dim=16",
                       "--config.model.scan_method=chunked",
                       "--config.train.progress_bar=False")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "first_token: accuracy" in result.stdout
  saved = train.load_config(str(tmp_path))
  assert (saved.model.backbone, saved.model.scan_method) == ("lru", "chunked")


def test_evaluate_script_reports_and_samples_a_char_lm(tmp_path):
  text = tmp_path / "text.txt"
  text.write_text("the cat sat on the mat. " * 40)
  config = tiny_config("lstm", task="char_lm", steps=20, path=str(text),
                       seq_len=16)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  samples = _records(tmp_path / "run", "sample")
  assert samples and len(samples[-1]["sample"]) > 16
  result = _run_script([str(REPO / "scripts" / "evaluate.py")],
                       f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "char_lm: bits_per_char" in result.stdout
  assert "sample: '" in result.stdout


def test_batches_are_a_pure_function_of_seed_and_step(tmp_path):
  config = tiny_config("lstm")
  trainer = train.Trainer(config, str(tmp_path))
  first = jax.device_get(trainer.next_batch(7))
  again = jax.device_get(trainer.next_batch(7))
  other = jax.device_get(trainer.next_batch(8))
  chex.assert_trees_all_equal(first, again)
  assert not np.array_equal(first["inputs"], other["inputs"])
