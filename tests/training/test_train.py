"""End-to-end training at tiny sizes: learning, resume, data parallelism, errors."""

import importlib.util
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rnn_transformer.models import generation
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.training import metric_writer
from rnn_transformer.training import tasks
from rnn_transformer.training import train
from rnn_transformer.training import train_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(backbone="lstm", task="first_token", steps=60, **task_params):
  task_params = task_params or dict(distance=4)
  config = train_config.task_config(task, backbone, **task_params)
  config.model.model_dim = 32
  config.model.num_layers = 1
  if backbone == "transformer":
    config.model.num_heads = 2
    config.model.max_len = 64
  config.train.update(steps=steps, batch_size=32, warmup_steps=5,
                      learning_rate=1e-2, log_every=10, eval_every=1000,
                      eval_batches=2, checkpoint_every=10, keep_checkpoints=2,
                      progress_bar=False)
  return config


def load_config_file(path, argument):
  spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument)


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


# Dies by SIGKILL right after logging the train record of `kill_step`, so the
# steps after the last checkpoint are logged twice unless the resume drops
# them.
_KILL_AFTER_LOG = """
import os, signal, sys
from rnn_transformer.training import metric_writer
original = metric_writer.MetricWriter.write
def write_then_die(self, step, split, scalars):
  original(self, step, split, scalars)
  if step == {kill_step} and split == "train":
    os.kill(os.getpid(), signal.SIGKILL)
metric_writer.MetricWriter.write = write_then_die
sys.argv = ["train.py"] + sys.argv[1:]
exec(open({script!r}).read())
"""


def _tensorboard_scalars(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator
  accumulator = event_accumulator.EventAccumulator(
      str(workdir / "tensorboard"), size_guidance={"scalars": 0})
  accumulator.Reload()
  return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_kill_refused_relaunch_and_resume_equal_an_uninterrupted_run(
    tmp_path):
  overrides = ["--config.train.steps=40", "--config.train.batch_size=16",
               "--config.model.model_dim=16", "--config.train.log_every=5",
               "--config.train.checkpoint_every=10",
               "--config.train.progress_bar=False"]
  config_flag = f"--config={REPO / 'configs' / 'first_token.py'}:gru"
  script = str(REPO / "scripts" / "train.py")
  whole, killed = tmp_path / "whole", tmp_path / "killed"

  result = _run_script([script], config_flag, f"--workdir={whole}", *overrides)
  assert result.returncode == 0, result.stderr[-3000:]

  driver = _KILL_AFTER_LOG.format(kill_step=25, script=script)
  result = _run_script(["-c", driver], config_flag, f"--workdir={killed}",
                       *overrides)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert _final_params(killed)[0] == 20
  # A checkpoint half-written at the kill: orbax's temporary directory.
  partial = killed / "checkpoints" / "30.orbax-checkpoint-tmp-1234"
  partial.mkdir()
  (partial / "garbage").write_text("not a checkpoint")

  before = _snapshot(killed)
  result = _run_script([script], config_flag, f"--workdir={killed}",
                       *overrides, "--config.model.model_dim=32")
  assert result.returncode == 1, result.stderr[-3000:]
  assert "refused: workdir:" in result.stderr
  assert "model.model_dim: saved 16, now 32" in result.stderr
  assert "Traceback" not in result.stderr
  assert _snapshot(killed) == before

  result = _run_script([script], config_flag, f"--workdir={killed}",
                       *overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint at step 20" in result.stdout

  step_whole, params_whole = _final_params(whole)
  step_killed, params_killed = _final_params(killed)
  assert step_whole == step_killed == 40
  chex.assert_trees_all_close(params_killed, params_whole, atol=1e-6)
  eval_whole, eval_killed = _records(whole, "eval")[-1], _records(
      killed, "eval")[-1]
  np.testing.assert_allclose(eval_killed["loss"], eval_whole["loss"],
                             rtol=1e-5)
  # Steps 21..25 ran twice; each is recorded once, with the resumed value.
  train_whole, train_killed = _records(whole, "train"), _records(
      killed, "train")
  assert [r["step"] for r in train_killed] == list(range(5, 41, 5))
  np.testing.assert_allclose([r["loss"] for r in train_killed],
                             [r["loss"] for r in train_whole], rtol=1e-5)
  scalars = _tensorboard_scalars(killed, "train/loss")
  assert [step for step, _ in scalars] == list(range(5, 41, 5))
  np.testing.assert_allclose([v for _, v in scalars],
                             [r["loss"] for r in train_whole], rtol=1e-5)


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
    device_line = next(line for line in result.stdout.splitlines()
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
    ("model.backbone", "cnn", r"config.model.backbone: expected one of "
     r"\('rnn', 'lstm', 'gru', 'mingru', 'minlstm', 'lru', 'transformer'\), "
     r"got 'cnn'"),
    ("task.name", "sorting", r"config.task.name: expected one of \['adding', "
     r"'adding_1997', 'char_lm', 'copy', 'first_token', 'recall'\], got "
     r"'sorting'"),
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


@pytest.mark.slow  # CI time; run with -m slow
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


@pytest.mark.slow  # CI time; run with -m slow
def test_train_script_takes_attention_window_and_softcap_flags(tmp_path):
  result = _run_script([str(REPO / "scripts" / "train.py")],
                       f"--config={REPO / 'configs' / 'first_token.py'}"
                       ":transformer", f"--workdir={tmp_path}",
                       "--config.train.steps=2",
                       "--config.train.warmup_steps=1",
                       "--config.train.batch_size=4",
                       "--config.model.model_dim=16",
                       "--config.model.attention_window=8",
                       "--config.model.attention_softcap=30.0",
                       "--config.train.progress_bar=False")
  assert result.returncode == 0, result.stderr[-3000:]
  saved = train.load_config(str(tmp_path))
  assert (saved.model.attention_window, saved.model.attention_softcap) == (
      8, 30.0)


@pytest.mark.slow  # CI time; run with -m slow
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

  result = _run_script([str(REPO / "scripts" / "sample.py")],
                       f"--workdir={tmp_path / 'run'}", "--prompt=the c",
                       "--num_chars=30", "--temperature=0")
  assert result.returncode == 0, result.stderr[-3000:]
  greedy = train.sample_workdir(str(tmp_path / "run"), "the c", 30,
                                temperature=0.0)
  assert result.stdout.rstrip("\n") == "the c" + greedy
  result = _run_script([str(REPO / "scripts" / "sample.py")],
                       f"--workdir={tmp_path / 'run'}", "--prompt=the Z",
                       "--top_k=3")
  assert result.returncode == 1
  assert "error: prompt: characters ['Z'] are not in the vocabulary" in (
      result.stderr)


def test_sampling_a_workdir_equals_greedy_recompute(tmp_path):
  text = tmp_path / "text.txt"
  text.write_text("to be or not to be, that is the question. " * 20)
  config = tiny_config("transformer", task="char_lm", steps=10,
                       path=str(text), seq_len=16)
  train.train_and_evaluate(config, str(tmp_path))
  task, model_config = train_config.validate(config)
  model = build_backbone(model_config)
  _, params = _final_params(tmp_path)
  prompt = task.encode("to be")[None, :]
  oracle = jax.jit(generation.greedy_by_recompute, static_argnums=(0, 3))(
      model, params, prompt, 12)
  assert train.sample_workdir(str(tmp_path), "to be", 12,
                              temperature=0.0) == task.decode(oracle[0, 5:])
  sampled = train.sample_workdir(str(tmp_path), "to be", 12, temperature=1.0,
                                 top_k=3, seed=1)
  assert len(sampled) == 12 and set(sampled) <= set(task.chars)
  with pytest.raises(ValueError, match=r"num_chars: the prompt \(5 "
                     r"characters\) plus 60 exceeds the model's max_len 64"):
    train.sample_workdir(str(tmp_path), "to be", 60)
  with pytest.raises(ValueError, match=r"prompt: expected at least one"):
    train.sample_workdir(str(tmp_path), "", 5)


def test_the_char_lm_config_trains_on_the_shipped_docs():
  config = load_config_file(REPO / "configs" / "char_lm.py", "lstm")
  task, _ = train_config.validate(config)
  shipped = (REPO / "README.md").read_text() + (
      REPO / "BUILD_NOTES.md").read_text()
  assert set(task.chars) == set(shipped)
  assert task.baseline["bits_per_char"] > 4.0


def test_batches_are_a_pure_function_of_seed_and_step(tmp_path):
  config = tiny_config("lstm")
  trainer = train.Trainer(config, str(tmp_path))
  first = jax.device_get(trainer.next_batch(7))
  again = jax.device_get(trainer.next_batch(7))
  other = jax.device_get(trainer.next_batch(8))
  chex.assert_trees_all_equal(first, again)
  assert not np.array_equal(first["inputs"], other["inputs"])


def _snapshot(directory):
  """Every file under `directory` with its bytes: equal iff nothing changed."""
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_lstm(tmp_path_factory):
  """A finished 10-step run that refused relaunches must leave untouched."""
  workdir = tmp_path_factory.mktemp("trained_lstm")
  config = tiny_config("lstm", steps=10)
  train.train_and_evaluate(config, str(workdir))
  return config, workdir


@pytest.mark.parametrize("field,value", [
    ("model.model_dim", 16), ("model.backbone", "gru"), ("seed", 1),
    ("train.learning_rate", 0.5), ("task.params.distance", 5),
])
def test_relaunch_with_another_config_is_refused_and_changes_nothing(
    field, value, trained_lstm):
  config, tmp_path = trained_lstm
  before = _snapshot(tmp_path)
  changed = config.copy_and_resolve_references()
  *sections, name = field.split(".")
  node = changed
  for section in sections:
    node = node[section]
  node[name] = value
  with pytest.raises(train.WorkdirMismatchError,
                     match=rf"{re.escape(field)}: saved .*, now "
                     rf"{re.escape(repr(value))}.*may change only "
                     r"train.steps") as error:
    train.train_and_evaluate(changed, str(tmp_path))
  assert error.value.fields == (field,)
  assert _snapshot(tmp_path) == before
  _, metrics, _ = train.evaluate_workdir(str(tmp_path))  # still consistent
  np.testing.assert_allclose(metrics["loss"],
                             _records(tmp_path, "eval")[-1]["loss"], rtol=1e-5)


@pytest.mark.slow  # CI time; run with -m slow
def test_relaunch_may_change_steps_and_cadence(tmp_path):
  config = tiny_config("lstm", steps=10)
  train.train_and_evaluate(config, str(tmp_path))
  longer = config.copy_and_resolve_references()
  longer.train.update(steps=20, log_every=5, eval_every=20,
                      checkpoint_every=20, progress_bar=True)
  train.train_and_evaluate(longer, str(tmp_path))
  assert _final_params(tmp_path)[0] == 20
  assert train.load_config(str(tmp_path)).train.steps == 20


def test_checkpoints_without_a_saved_config_are_refused(tmp_path):
  config = tiny_config("lstm", steps=10)
  train.train_and_evaluate(config, str(tmp_path))
  (tmp_path / "config.json").unlink()
  before = _snapshot(tmp_path)
  with pytest.raises(train.WorkdirMismatchError, match="config.json is "
                     "missing"):
    train.train_and_evaluate(config, str(tmp_path))
  assert _snapshot(tmp_path) == before


def test_a_resumed_writer_drops_later_records_and_a_cut_line(tmp_path):
  lines = [json.dumps({"step": s, "split": "train", "loss": s})
           for s in (10, 20, 30)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4')
  writer = metric_writer.MetricWriter(str(tmp_path), 40, progress_bar=False,
                                      start_step=20)
  writer.write(30, "train", {"loss": 3.0})
  writer.close()
  assert [(r["step"], r["loss"]) for r in _records(tmp_path, "train")] == [
      (10, 10.0), (20, 20.0), (30, 3.0)]


_INFO_LINE = re.compile(r"^I\d{4} ", re.MULTILINE)


@pytest.mark.parametrize("verbosity", [None, "0"])
def test_the_console_shows_the_runs_lines_and_library_logs_go_to_a_file(
    verbosity, tmp_path):
  flags = [f"--config={REPO / 'configs' / 'adding.py'}:rnn",
           f"--workdir={tmp_path}", "--config.train.steps=4",
           "--config.train.warmup_steps=1", "--config.train.log_every=2",
           "--config.model.model_dim=8", "--config.train.batch_size=8"]
  if verbosity is not None:
    flags.append(f"--verbosity={verbosity}")
  result = _run_script([str(REPO / "scripts" / "train.py")], *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith("devices: [")
  assert [line.split(":")[0] for line in lines[1:]] == [
      "train step 2/4", "train step 4/4", "eval step 4/4", "adding"]
  log = (tmp_path / "train.log").read_text()
  assert "orbax" in log.lower() and _INFO_LINE.search(log)
  shown = _INFO_LINE.findall(result.stderr)
  if verbosity is None:
    assert not shown, result.stderr[-2000:]
  else:
    assert len(shown) > 10


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta(tmp_path,
                                                          monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stdout", terminal)
  writer = metric_writer.MetricWriter(str(tmp_path), 8, progress_bar=True)
  for step in range(1, 9):
    writer.progress(step)
    if step % 4 == 0:
      writer.write(step, "train", {"loss": 1.0 / step, "grad_norm": 2.0})
  writer.write(8, "eval", {"loss": 0.25})
  writer.close()
  screen = terminal.getvalue()
  assert "8/8" in screen and "step/s" in screen and "<" in screen  # rate, ETA
  assert "loss=0.125" in screen
  assert "train step" not in screen  # the bar replaces the train lines
  assert "eval step 8/8: loss=0.25" in screen
  assert len(_records(tmp_path, "train")) == 2
