"""The paper's adding problem (task format, baseline) and the experiment
that trains every backbone to Hochreiter & Schmidhuber's criterion."""

import csv
import json
import os

import jax
import numpy as np
import pytest

from experiment_helpers import assert_wrote
from experiment_helpers import run_tiny
from rnn_transformer.experiments import adding_1997
from rnn_transformer.training import tasks
from rnn_transformer.training import train


@pytest.mark.parametrize("min_len", [24, 100])
def test_batches_follow_the_paper(min_len):
  task = tasks.Adding1997(min_len=min_len)
  batch = jax.device_get(task.batch(jax.random.key(3), 4096))
  values, markers = batch["inputs"][..., 0], batch["inputs"][..., 1]
  assert batch["inputs"].shape == (4096, min_len + min_len // 10, 2)
  # The scored step is each sequence's last: lengths in [T, T + T/10].
  last = batch["weights"].argmax(axis=1)
  np.testing.assert_array_equal(batch["weights"].sum(axis=1), 1.0)
  lengths = last + 1
  assert lengths.min() == min_len and lengths.max() == task.seq_len
  steps = np.arange(task.seq_len)[None, :]
  padding = steps >= lengths[:, None]
  assert not values[padding].any() and not markers[padding].any()
  # Exactly two marked pairs: one of the first ten, one of the first T/2-1.
  marked = markers == 1.0
  np.testing.assert_array_equal(marked.sum(axis=1), 2)
  first, second = (np.sort(np.argwhere(marked)[:, 1].reshape(-1, 2), axis=1)
                   .T)
  assert first.min() == 0 and first.max() <= 9
  assert second.max() == min_len // 2 - 2
  # -1 at the first and the last pair, unless the first one is marked.
  ends = markers == -1.0
  np.testing.assert_array_equal(ends[np.arange(4096), last], True)
  np.testing.assert_array_equal(ends[:, 0], ~marked[:, 0])
  assert ends.sum() == 2 * 4096 - marked[:, 0].sum()
  # X1, never X2, is zero when it is the first pair: a marked first pair is
  # zero as often as X1 sits there (1/10), nonzero as often as X2 does.
  zero_first = (marked[:, 0] & (values[:, 0] == 0.0)).mean()
  nonzero_first = (marked[:, 0] & (values[:, 0] != 0.0)).mean()
  x2_first = 0.9 / (min_len // 2 - 2)
  for rate, expected in ((zero_first, 0.1), (nonzero_first, x2_first)):
    assert abs(rate - expected) < 5 * np.sqrt(expected / 4096), (rate,
                                                                 expected)
  total = (values * marked).sum(axis=1)
  np.testing.assert_allclose(batch["targets"][np.arange(4096), last],
                             0.5 + total / 4.0, atol=1e-6)
  assert (np.abs(values) <= 1.0).all()


def test_baseline_is_predicting_one_half():
  task = tasks.Adding1997(min_len=30)
  batch = task.batch(jax.random.key(0), 200_000)
  half = np.full(batch["targets"].shape + (1,), 0.5, np.float32)
  metrics = jax.device_get(task.metrics(half, batch))
  # Monte Carlo standard errors: about 1e-4 (MSE), 8e-4 (accuracy).
  np.testing.assert_allclose(metrics["mse"], task.baseline["mse"], atol=5e-4)
  np.testing.assert_allclose(metrics["accuracy"], task.baseline["accuracy"],
                             atol=4e-3)


def test_accuracy_is_the_papers_absolute_error_below_0_04():
  task = tasks.Adding1997(min_len=30)
  batch = task.batch(jax.random.key(1), 4)
  target = batch["targets"][..., None]
  errors = np.array([0.0, 0.039, -0.039, 0.041], np.float32)[:, None, None]
  metrics = task.metrics(target + errors * batch["weights"][..., None] +
                         (1 - batch["weights"][..., None]) * 7.0, batch)
  assert float(metrics["accuracy"]) == 0.75


def test_too_short_a_sequence_is_refused():
  with pytest.raises(ValueError, match="min_len: expected at least 24"):
    tasks.Adding1997(min_len=23)


def test_criterion_is_the_papers_stopping_rule():
  window = 4
  acc = np.array([0.9, 1, 1, 1, 1, 1, 1], np.float32)
  mse = np.array([0.5, 0.02, 0.02, 0.001, 0.001, 0.001, 0.001], np.float32)
  # Steps 1..4 are all correct, but their mean MSE is 0.0105 >= 0.01.
  assert adding_1997.criterion_met(mse, acc, window) == 5
  assert adding_1997.criterion_met(mse[:5], acc[:5], window) is None
  # One wrong sequence in the window defers it.
  acc[4] = 31 / 32
  assert adding_1997.criterion_met(mse, acc, window) is None


def test_sequences_to_criterion_count_from_the_first_update(monkeypatch):
  # Every sequence "correct" and any MSE accepted: the criterion holds at the
  # first full window, after window_sequences sequences.
  monkeypatch.setattr(tasks.Adding1997, "CORRECT_BELOW", 1e9)
  monkeypatch.setattr(adding_1997, "CRITERION_MSE", 1e9)
  config = adding_1997.get_config("tiny")
  config.window_sequences, config.chunk_steps = 48, 2  # 3 updates of 16
  result = adding_1997.train_cell(config, "rnn", 24)
  assert result["sequences"] == [48, 48]
  assert result["stopped_by"] == "criterion"
  assert result["sequences_trained"] == 64  # two chunks of 2 x 16
  assert result["test_wrong"] == [0, 0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_tiny(adding_1997, tmp_path_factory)


def test_tiny_run_writes_tables_figure_and_verdicts(tiny_run):
  config, report, output_dir = tiny_run
  assert_wrote(report, ("adding_1997.csv", "adding_1997_summary.csv",
                        "adding_1997_curves.csv", "adding_1997.png",
                        "summary.md"))
  with open(os.path.join(output_dir, "adding_1997_summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["backbone"], int(r["T"])) for r in rows] == [
      (b, t) for t in config.min_lens for b in config.backbones]
  for row in rows:
    assert int(row["sequences_trained"]) <= config.max_sequences
    assert row["stopped_by"] in ("criterion", "sequences", "minutes")
  assert [c.verdict for c in report.claims][1] == "not measured"  # T < 200


def _result(sequences, trained=1000, accuracy=0.5):
  return {"sequences": sequences, "sequences_trained": trained,
          "stopped_by": "sequences", "final_window_accuracy":
          [accuracy] * len(sequences), "final_window_mse":
          [0.04] * len(sequences)}


def test_verdicts_follow_the_runs():
  seed_story = {("rnn", 100): _result([None, None]),
                ("lstm", 100): _result([5000, 7000]),
                ("lstm", 500): _result([9000, 20000]),
                ("transformer", 100): _result([3000, 4000]),
                ("transformer", 500): _result([None, 6000])}
  verdicts = [c.verdict for c in adding_1997.claims(seed_story, "budget")]
  assert verdicts == ["supported", "supported", "partly supported"]
  # Past the paper's budget without meeting it: not supported.
  nothing_learns = {("rnn", 100): _result([None]),
                    ("lstm", 500): _result([None], trained=300_000)}
  verdicts = [c.verdict for c in adding_1997.claims(nothing_learns, "b")]
  assert verdicts == ["partly supported", "not supported", "not measured"]
  # Short of the paper's budget (209,000 at T = 500): it decides nothing.
  short = {("rnn", 100): _result([None]),
           ("lstm", 500): _result([None], trained=135_000),
           ("transformer", 100): _result([3000]),
           ("transformer", 1000): _result([None], trained=4096)}
  claims = adding_1997.claims(short, "b")
  assert [c.verdict for c in claims] == ["partly supported", "not measured",
                                         "partly supported"]
  assert "fewer than the paper's 209000" in claims[1].evidence
  assert "decide nothing" in claims[2].evidence


def test_bad_config_raises():
  config = adding_1997.get_config("tiny")
  config.backbones = ("lstm", "mamba")
  with pytest.raises(ValueError, match="config.backbones"):
    adding_1997.run(config, "/tmp/unused")
  config = adding_1997.get_config("tiny")
  config.min_lens = (10,)
  with pytest.raises(ValueError, match="min_len"):
    adding_1997.run(config, "/tmp/unused")


def _tiny_cell_config(max_sequences=640):
  config = adding_1997.get_config("tiny")
  config.max_sequences = max_sequences  # 5 chunks of 8 x 16
  config.max_minutes = 30.0
  config.checkpoint_every_minutes = 1e-9  # a checkpoint after every chunk
  return config


def _checkpoints(config, directory, backbone="lstm", min_len=24):
  return adding_1997.CellCheckpoints(
      str(directory), adding_1997._trajectory(config, backbone, min_len))


class _Interrupted(Exception):
  pass


def test_a_stopped_cell_resumes_where_it_left_off(tmp_path, monkeypatch):
  config = _tiny_cell_config()
  whole = adding_1997.train_cell(config, "lstm", 24)
  # Interrupt a checkpointed run during its fourth chunk, as a kill would.
  real_runs = adding_1997._Runs

  class StoppingRuns(real_runs):
    def __init__(self, *args):
      super().__init__(*args)
      real_chunk, self.calls = self.chunk, 0

      def chunk(*chunk_args):
        self.calls += 1
        if self.calls == 4:
          raise _Interrupted
        return real_chunk(*chunk_args)
      self.chunk = chunk

  monkeypatch.setattr(adding_1997, "_Runs", StoppingRuns)
  checkpoints = _checkpoints(config, tmp_path)
  with pytest.raises(_Interrupted):
    adding_1997.train_cell(config, "lstm", 24, checkpoints)
  checkpoints.close()
  assert checkpoints.result() is None
  monkeypatch.setattr(adding_1997, "_Runs", real_runs)
  checkpoints = _checkpoints(config, tmp_path)
  resumed = adding_1997.train_cell(config, "lstm", 24, checkpoints)
  checkpoints.close()
  assert resumed["resumed_at"] == 3 * 8 * 16  # three chunks were saved
  # The same sequences in the same order: the same trajectory, exactly.
  for key in ("sequences", "test_wrong", "test_mse", "final_window_accuracy",
              "final_window_mse", "curve", "sequences_trained",
              "stopped_by"):
    assert resumed[key] == whole[key], key
  assert resumed["sequences_trained"] == config.max_sequences


def test_an_ended_cell_is_not_trained_again(tmp_path, monkeypatch):
  config = _tiny_cell_config(max_sequences=128)
  checkpoints = _checkpoints(config, tmp_path)
  first = adding_1997.train_cell(config, "rnn", 24, checkpoints)
  checkpoints.close()

  def refuse(*args):
    raise AssertionError("an ended cell was trained again")

  monkeypatch.setattr(adding_1997, "_Runs", refuse)
  checkpoints = _checkpoints(config, tmp_path)
  again = adding_1997.train_cell(config, "rnn", 24, checkpoints)
  checkpoints.close()
  assert again == json.loads(json.dumps(first))


def test_a_cell_stopped_by_minutes_continues_when_the_budget_grows(tmp_path):
  config = _tiny_cell_config()
  config.max_minutes = 1e-9  # stops after its first check
  checkpoints = _checkpoints(config, tmp_path)
  first = adding_1997.train_cell(config, "lstm", 24, checkpoints)
  checkpoints.close()
  assert first["stopped_by"] == "minutes"
  config.max_minutes = 30.0  # not part of the trajectory: may change
  checkpoints = _checkpoints(config, tmp_path)
  second = adding_1997.train_cell(config, "lstm", 24, checkpoints)
  checkpoints.close()
  assert second["resumed_at"] == first["sequences_trained"]
  assert second["sequences_trained"] == config.max_sequences
  assert second["seconds"] > first["seconds"]


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
  config = _tiny_cell_config()
  _checkpoints(config, tmp_path).close()
  config.train.learning_rate = 1e-3
  with pytest.raises(train.WorkdirMismatchError,
                     match="train.*learning_rate.*0.01") as error:
    _checkpoints(config, tmp_path)
  assert error.value.fields == ("train",)


def test_the_paper_scale_gives_twice_table_7_per_length():
  config = adding_1997.get_config("paper")
  assert config.backbones == ("lstm",) and config.lstm_forget_bias == 5.0
  assert [adding_1997.per_len(config, "seeds", t) for t in (500, 1000)] == [
      2, 1]
  assert [adding_1997.per_len(config, "max_sequences", t)
          for t in (500, 1000)] == [418_000, 1_706_000]
  assert config.checkpoint_dir
  assert "418000 at T=500, 1706000 at T=1000" in adding_1997.budget_text(
      config)


def test_run_checkpoints_per_cell_and_reads_them_back(tmp_path, monkeypatch):
  config = adding_1997.get_config("tiny")
  config.backbones, config.max_sequences = ("rnn",), 128
  config.checkpoint_dir = "ckpt"
  adding_1997.run(config, str(tmp_path))
  assert (tmp_path / "ckpt" / "rnn_T24" / "result.json").exists()
  monkeypatch.setattr(adding_1997, "_Runs", None)  # would fail if called
  report = adding_1997.run(config, str(tmp_path))
  assert report.figures["rnn_T24_seeds_met"] in (0, 1, 2)


@pytest.mark.parametrize("field,value,match", [
    ("seeds", (2, 1), "one per config.min_lens"),
    ("seeds", 0, "positive integers"),
    ("max_sequences", (0,), "positive integers"),
    ("checkpoint_every_minutes", 0.0, "positive number"),
])
def test_bad_per_length_settings_raise(field, value, match):
  config = adding_1997.get_config("tiny")  # one length: T = 24
  del config[field]
  config[field] = value
  with pytest.raises(ValueError, match=f"config.{field}.*{match}"):
    adding_1997.run(config, "/tmp/unused")
