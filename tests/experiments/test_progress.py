"""Experiment progress: which cell runs, elapsed time, the estimate, and the
default set of scripts/run_experiments.py."""

import io
import types

import pytest

from rnn_transformer import experiments
from rnn_transformer.experiments import progress


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (42.4, "42 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"),
    (3720, "1 h 02 min"), (-3, "0 s")])
def test_format_seconds(seconds, text):
  assert progress.format_seconds(seconds) == text


def test_estimate_is_the_mean_cell_time_times_the_cells_left():
  assert progress.estimate_left(30.0, 0, 4) is None
  assert progress.estimate_left(30.0, 1, 4) == pytest.approx(90.0)
  assert progress.estimate_left(30.0, 3, 4) == pytest.approx(10.0)
  assert progress.estimate_left(30.0, 4, 4) == pytest.approx(0.0)


def test_plain_lines_name_the_experiment_the_cell_and_the_estimate(
    monkeypatch):
  clock = iter([0.0, 0.0, 10.0, 30.0, 40.0])  # start, then one read per line
  monkeypatch.setattr(progress, "time", types.SimpleNamespace(
      perf_counter=lambda: next(clock)))
  stream = io.StringIO()
  seen = list(progress.cells("demo", [("lstm", 10), ("gru", 25), ("rnn", 5)],
                             lambda c: f"{c[0]} d={c[1]}", stream=stream,
                             bar=False))
  assert seen == [("lstm", 10), ("gru", 25), ("rnn", 5)]
  assert stream.getvalue().splitlines() == [
      "demo [1/3] lstm d=10: elapsed 0 s, no estimate before the first cell "
      "ends",
      "demo [2/3] gru d=25: elapsed 10 s, about 20 s left",
      "demo [3/3] rnn d=5: elapsed 30 s, about 15 s left",
      "demo: 3 cells in 40 s",
  ]


def test_a_bar_off_a_terminal_only_when_asked():
  stream = io.StringIO()  # not a terminal: plain lines by default
  list(progress.cells("demo", ["a"], stream=stream))
  assert stream.getvalue().startswith("demo [1/1] a:")
  stream = io.StringIO()
  assert list(progress.cells("demo", ["a", "b"], stream=stream,
                             bar=True)) == ["a", "b"]
  assert "demo" in stream.getvalue() and "2/2" in stream.getvalue()
  assert "[1/2]" not in stream.getvalue()


def test_default_set_leaves_out_only_the_separate_experiments():
  assert set(experiments.RUN_SEPARATELY) <= set(experiments.EXPERIMENTS)
  assert experiments.DEFAULT_SET == tuple(
      n for n in experiments.EXPERIMENTS if n not in experiments.RUN_SEPARATELY)
  assert "adding_1997" in experiments.RUN_SEPARATELY
  for reason in experiments.RUN_SEPARATELY.values():
    assert "scripts/experiment.py" in reason
