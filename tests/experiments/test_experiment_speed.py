"""The speed experiment: tiny run, sequential-step counts, computed verdicts."""

import csv
import math
import os

import numpy as np
import pytest

from experiment_helpers import assert_wrote
from experiment_helpers import run_tiny
from rnn_transformer.experiments import reporting
from rnn_transformer.experiments import speed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_tiny(speed, tmp_path_factory)


def test_tiny_run_writes_figure_tables_and_summary(tiny_run):
  config, report, output_dir = tiny_run
  assert_wrote(report, ("speed.png", "speed.csv", "speed.md", "summary.md",
                        "summary.json"))
  with open(os.path.join(output_dir, "speed.csv")) as f:
    rows = list(csv.DictReader(f))
  names = list(speed.labels(config))
  assert names == list(config.backbones) + [
      f"{b}-newton" for b in config.newton_backbones]
  assert len(rows) == len(names) * len(config.seq_lens)
  assert all(float(r["ms"]) > 0 for r in rows)
  for backbone in names:
    assert math.isfinite(report.figures[f"{backbone}_slope"])
  assert [c.verdict in reporting.VERDICTS for c in report.claims] == [True] * 7
  newton = [r for r in rows if r["backbone"].endswith("-newton")]
  # A converged forward pass reports its iteration count, at most max_iters.
  assert newton and all(1 <= int(r["newton_iterations"]) <= min(
      int(r["seq_len"]), 100) for r in newton), newton


def test_recurrent_steps_grow_with_n_transformer_steps_do_not(tiny_run):
  config, report, output_dir = tiny_run
  with open(os.path.join(output_dir, "speed.csv")) as f:
    for row in csv.DictReader(f):
      n, steps = int(row["seq_len"]), int(row["sequential_steps"])
      # One scan over time forward and one backward; attention and the
      # associative scan of the minGRU have none.
      parallel = row["backbone"] in ("transformer", "mingru")
      if row["backbone"].endswith("-newton"):
        # The lax.scan fallback (a cond branch, not taken when converged),
        # quasi-Newton's sequential adjoint, one pass of each while loop.
        assert steps == 2 * n + 2, row
      else:
        assert steps == (0 if parallel else 2 * n), row
  sequential = [c for c in report.claims if "sequential operations" in c.claim]
  assert [c.verdict for c in sequential] == ["supported"]
  depth = [c for c in report.claims if "O(log n)" in c.claim]
  assert [c.verdict for c in depth] == ["supported"], depth
  assert report.figures["rnn_depth_slope"] > 0.7
  assert report.figures["mingru_depth_slope"] <= speed.LOG_DEPTH_SLOPE


def _rows(ms_by_backbone, lens=(64, 128)):
  def parallel(b):
    return b == "transformer" or b in speed.PARALLEL
  return [dict(backbone=b, seq_len=n, ms=ms * n, us_per_token=1.0,
               sequential_steps=(0 if parallel(b) else 2 * n),
               depth=(20 + int(np.log2(n)) if parallel(b) else 4 * n),
               attention="xla" if b == "transformer" else "")
          for n in lens for b, ms in ms_by_backbone.items()]


@pytest.mark.parametrize("recurrent_ms, verdict", [
    ({"rnn": 3.0, "lstm": 2.0}, "supported"),
    ({"rnn": 0.3, "lstm": 0.5}, "not supported"),
    ({"rnn": 1.0, "lstm": 3.0}, "partly supported"),  # a tie, one slower
])
def test_verdicts_follow_the_measured_numbers(recurrent_ms, verdict):
  rows = _rows({**recurrent_ms, "transformer": 1.0})
  backbones = (*recurrent_ms, "transformer")
  claims = speed.claims(rows, speed.fit_slopes(rows, backbones), backbones)
  assert claims[0].verdict == verdict, claims[0]
  # Every synthetic time is proportional to n: linear, not quadratic.
  assert claims[2].verdict == "supported", claims[2]
  assert claims[3].verdict == "not supported", claims[3]


@pytest.mark.parametrize("parallel_ms, verdict", [
    ({"mingru": 1.0, "lru": 1.5}, "supported"),
    ({"mingru": 5.0, "lru": 6.0}, "not supported"),
    ({"mingru": 1.0, "lru": 3.0}, "partly supported"),
])
def test_parallel_recurrence_verdicts_follow_the_measured_numbers(
    parallel_ms, verdict):
  recurrent_ms = {"rnn": 2.0, "lstm": 4.0}
  rows = _rows({**recurrent_ms, **parallel_ms, "transformer": 1.0})
  backbones = (*recurrent_ms, *parallel_ms, "transformer")
  claims = speed.claims(rows, speed.fit_slopes(rows, backbones), backbones)
  assert claims[4].verdict == "supported", claims[4]  # no scan, log depth
  assert claims[5].verdict == verdict, claims[5]
  looped = [dict(r, sequential_steps=2 * r["seq_len"], depth=4 * r["seq_len"])
            if r["backbone"] == "lru" else r for r in rows]
  claims = speed.claims(looped, speed.fit_slopes(looped, backbones),
                        backbones)
  assert claims[4].verdict == "partly supported", claims[4]


@pytest.mark.parametrize("newton_ms, verdict", [
    ({"rnn-newton": 1.0, "gru-newton": 2.0}, "supported"),
    ({"rnn-newton": 3.0, "gru-newton": 9.0}, "not supported"),
    ({"rnn-newton": 1.0, "gru-newton": 9.0}, "partly supported"),
    # 0.95x: a tie within SLOWER_MARGIN is not faster.
    ({"rnn-newton": 2.1, "gru-newton": 4.2}, "not supported"),
])
def test_newton_verdict_compares_each_cell_with_its_own_scan(newton_ms,
                                                             verdict):
  scan_ms = {"rnn": 2.0, "gru": 4.0}
  rows = _rows({**scan_ms, **newton_ms})
  for r in rows:
    r["newton_iterations"] = "7" if r["backbone"].endswith("-newton") else ""
  backbones = (*scan_ms, *newton_ms)
  claims = speed.claims(rows, speed.fit_slopes(rows, backbones), backbones)
  assert "Newton" in claims[6].claim
  assert claims[6].verdict == verdict, claims[6]
  assert "(7 iterations)" in claims[6].evidence
  # Without the scan of the same cell there is nothing to compare.
  alone = [r for r in rows if r["backbone"] != "gru" and
           r["backbone"] != "rnn"]
  names = tuple(newton_ms)
  claim = speed.claims(alone, speed.fit_slopes(alone, names), names)[6]
  assert claim.verdict == "not measured", claim


def test_bad_config_raises():
  config = speed.get_config("tiny")
  config.newton_backbones = ("lru",)
  with pytest.raises(ValueError, match="config.newton_backbones"):
    speed.measure(config)
  config = speed.get_config("tiny")
  config.backbones = ("rnn", "mamba")
  with pytest.raises(ValueError, match="config.backbones"):
    speed.measure(config)
  config = speed.get_config("tiny")
  config.seq_lens = (32, 8)
  with pytest.raises(ValueError, match="config.seq_lens"):
    speed.measure(config)
