"""The paper's adding problem (task format, baseline) and the experiment
that trains every backbone to Hochreiter & Schmidhuber's criterion."""

import csv
import os

import jax
import numpy as np
import pytest

from experiment_helpers import assert_wrote
from experiment_helpers import run_tiny
from rnn_transformer.experiments import adding_1997
from rnn_transformer.training import tasks


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
          [accuracy] * len(sequences)}


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
